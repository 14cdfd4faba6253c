"""K-means over frame features: the step that turns HuBERT (or light) features into unit ids.

Assignment follows the released SpeechGPT rule exactly (``ApplyKmeans`` in its ``speech2unit.py``,
see ``FAIRSEQ_COMPAT.md`` section C): ``|C|²`` is computed in numpy in the centers' own dtype, then
the centers and ``|C|²`` are cast to float32 and ``argmin(|x|² − 2x·C + |C|²)`` picks the unit,
the lowest id winning a tie. Training uses faiss (one Lloyd iteration per call, so that a caller can
draw progress) after a seeded k-means++ initialisation; :class:`FrameReservoir` keeps a bounded
uniform sample of a long stream of frames to train on.

A trained model is one ``.safetensors`` file holding ``centers`` and string metadata
(:data:`KMEANS_FORMAT`, :data:`KMEANS_VERSION`, ``n_clusters``, ``dim`` and a free-form ``info``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from speechgpt.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

__all__ = ["KMEANS_FORMAT", "KMEANS_VERSION", "FrameReservoir", "KMeans"]

KMEANS_FORMAT = "speechgpt-kmeans"
"""Value of the ``format`` metadata key that marks our k-means files."""
KMEANS_VERSION = "1"
"""Version of the k-means file layout written by :meth:`KMeans.save`."""
CENTERS_KEY = "centers"
"""Name of the ``[K, D]`` tensor in a k-means safetensors file."""
INIT_POINTS_PER_CLUSTER = 32
"""k-means++ runs on a seeded subsample of at most this many frames per cluster (as scikit-learn's
``MiniBatchKMeans`` initialises on ``init_size`` frames), so initialisation stays cheap for 1000
clusters over a million frames."""
_FINITE_CHECK_ROWS = 65_536
"""Rows checked for NaN/inf at once, so the check never allocates a mask as large as the data."""
_CENTER_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

ProgressFn = Callable[[int, int, float], None]
"""``progress(iteration, niter, objective)``: iteration counts from 1; objective is the mean squared
distance of a training frame to its nearest center before that iteration's update."""


def _to_numpy(array: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a numpy array without copying when it already is one."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()  # numpy has no bfloat16
    if isinstance(array, np.ndarray):
        return array
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(array).__name__}")


def _first_non_finite_row(x: np.ndarray) -> int | None:
    """Index of the first row of a 2-D array holding NaN or inf, or None; checked in chunks."""
    for start in range(0, x.shape[0], _FINITE_CHECK_ROWS):
        bad = ~np.isfinite(x[start : start + _FINITE_CHECK_ROWS]).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def _check_info(info: Mapping[str, str] | None) -> dict[str, str]:
    """Validate free-form metadata: safetensors metadata holds strings only."""
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise TypeError(f"info must be a dict[str, str], got {type(info).__name__}")
    for key, value in info.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"info must map str to str, got {key!r}: {value!r}")
    return dict(info)


def _kmeans_plus_plus(x: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``n_clusters`` rows of ``x`` by k-means++ (D² sampling); returns float32 ``[K, D]``.

    Random initialisation often puts two seeds in one true cluster and Lloyd iterations do not
    recover from that; D² sampling spreads the seeds out (Arthur & Vassilvitskii, 2007).
    """
    n = x.shape[0]
    x_norm = np.einsum("nd,nd->n", x, x)
    chosen = np.empty(n_clusters, dtype=np.int64)
    chosen[0] = rng.integers(n)
    # Squared distance of every frame to its nearest chosen seed; |x|² − 2x·c + |c|² is a matrix-vector
    # product, far cheaper than materialising x − c. Rounding may leave tiny negatives: clip them.
    nearest = np.full(n, np.inf, dtype=np.float64)
    for i in range(n_clusters):
        if i > 0:
            cumulative = np.cumsum(nearest)
            total = cumulative[-1]
            if total > 0.0:
                chosen[i] = min(int(np.searchsorted(cumulative, rng.random() * total, side="right")), n - 1)
            else:  # every frame sits on a chosen seed: any other frame will do
                chosen[i] = rng.integers(n)
        center = x[chosen[i]]
        dist = x_norm - 2.0 * (x @ center) + float(center @ center)
        np.minimum(nearest, np.maximum(dist, 0.0), out=nearest)
        nearest[chosen[i]] = 0.0
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


class KMeans:
    """Cluster centers and the released nearest-center rule that maps frames to unit ids.

    Args:
        centers: ``[K, D]`` float32 or float64 centers (numpy or torch); kept as a numpy copy in
            their own dtype, because the released rule computes ``|C|²`` in that dtype.
        info: free-form string metadata (e.g. which extractor and layer made the features);
            saved with the centers.
        device: where assignment runs; None means CPU.

    Raises:
        ValueError: if ``centers`` is not a non-empty 2-D float32/float64 array of finite values.
    """

    def __init__(
        self,
        centers: np.ndarray | torch.Tensor,
        info: Mapping[str, str] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        array = _to_numpy(centers, "centers")
        if array.ndim != 2:
            raise ValueError(f"centers must be 2-D [n_clusters, dim], got shape {tuple(array.shape)}")
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"centers must hold at least one cluster of dimension >= 1, got shape {array.shape}")
        if array.dtype not in _CENTER_DTYPES:
            raise ValueError(f"centers must be float32 or float64, got {array.dtype}")
        bad = _first_non_finite_row(array)
        if bad is not None:
            raise ValueError(f"centers contain NaN or inf (center {bad})")
        self._centers = np.array(array, copy=True, order="C")
        self._centers.flags.writeable = False
        self.info: dict[str, str] = _check_info(info)
        self._device = torch.device("cpu")
        self._c: torch.Tensor | None = None
        self._c_norm: torch.Tensor | None = None
        self.to(device if device is not None else "cpu")

    @property
    def n_clusters(self) -> int:
        """Number of clusters K (unit ids are ``0 … K-1``)."""
        return int(self._centers.shape[0])

    @property
    def dim(self) -> int:
        """Feature dimension D the centers live in."""
        return int(self._centers.shape[1])

    @property
    def centers(self) -> np.ndarray:
        """The ``[K, D]`` centers in their original dtype (read-only)."""
        return self._centers

    @property
    def device(self) -> torch.device:
        """Device on which :meth:`assign` computes distances."""
        return self._device

    def __repr__(self) -> str:
        return (
            f"KMeans(n_clusters={self.n_clusters}, dim={self.dim}, dtype={self._centers.dtype}, device={self._device})"
        )

    def to(self, device: torch.device | str) -> KMeans:
        """Move the cached float32 centers to ``device``; returns ``self``."""
        self._device = torch.device(device)
        # Released rule: C = centers.T and Cnorm = (C**2).sum(0) in the centers' dtype (numpy),
        # and only then both cast to the features' float32. C stays a transposed view of the
        # [K, D] matrix, as in the release: the matmul's memory layout changes float rounding.
        c_norm = (self._centers.T**2).sum(0, keepdims=True)
        self._c = torch.from_numpy(self._centers.copy()).to(device=self._device, dtype=torch.float32).T
        self._c_norm = torch.from_numpy(c_norm).to(device=self._device, dtype=torch.float32)
        return self

    @torch.inference_mode()
    def assign(self, features: torch.Tensor | np.ndarray, batch_size: int = 8192) -> torch.Tensor:
        """Map each frame to the id of its nearest center.

        Frames are processed ``batch_size`` at a time so memory stays bounded for long inputs
        (the distance matrix is ``[batch_size, K]``).

        Args:
            features: ``[T, D]`` frames (any float dtype; cast to float32 as the release does).
            batch_size: frames per distance computation.

        Returns:
            ``[T]`` int64 unit ids on CPU.

        Raises:
            ValueError: if ``features`` is not 2-D, its D differs from the centers', it holds
                NaN/inf, or ``batch_size`` < 1.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not isinstance(features, torch.Tensor | np.ndarray):
            raise TypeError(f"features must be a numpy array or a torch tensor, got {type(features).__name__}")
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D [frames, dim], got shape {tuple(features.shape)}")
        num_frames, dim = int(features.shape[0]), int(features.shape[1])
        if dim != self.dim:
            raise ValueError(f"features have dimension {dim} but the k-means centers have dimension {self.dim}")
        assert self._c is not None and self._c_norm is not None
        ids = []
        for start in range(0, num_frames, batch_size):
            chunk = features[start : start + batch_size]
            if isinstance(chunk, np.ndarray):
                chunk = torch.from_numpy(np.ascontiguousarray(chunk))
            x = chunk.to(device=self._device, dtype=torch.float32)
            if not bool(torch.isfinite(x).all()):
                bad = start + int((~torch.isfinite(x).all(dim=1)).nonzero()[0, 0])
                raise ValueError(f"features contain NaN or inf (frame {bad})")
            dist = x.pow(2).sum(1, keepdim=True) - 2 * torch.matmul(x, self._c) + self._c_norm
            ids.append(dist.argmin(dim=1).cpu())  # argmin returns the first minimum: ties go to the lowest id
        if not ids:
            return torch.empty(0, dtype=torch.long)
        return torch.cat(ids)

    @classmethod
    def train(
        cls,
        features: np.ndarray | torch.Tensor,
        n_clusters: int,
        *,
        seed: int = 0,
        niter: int = 50,
        max_points: int | None = 1_000_000,
        progress: ProgressFn | None = None,
    ) -> KMeans:
        """Fit ``n_clusters`` centers to frames with faiss, reproducibly.

        Steps: subsample to ``max_points`` rows with a numpy generator seeded by ``seed``; pick
        initial centers by k-means++ on a further seeded subsample of at most
        :data:`INIT_POINTS_PER_CLUSTER` frames per cluster; then run ``niter`` Lloyd iterations,
        one ``faiss.Kmeans`` call each (``niter=1``, starting from the previous centers, no faiss
        subsampling), calling ``progress`` after each. Same seed and data give identical centers.
        faiss writes nothing to stdout (``verbose=False``), which carries data in our CLIs.

        Args:
            features: ``[N, D]`` training frames.
            n_clusters: number of clusters K.
            seed: seed of every random choice.
            niter: Lloyd iterations.
            max_points: train on at most this many frames (None: all).
            progress: called as ``progress(iteration, niter, objective)``, see :data:`ProgressFn`.

        Returns:
            A :class:`KMeans` with float32 centers and ``info`` recording how it was trained.

        Raises:
            ValueError: if ``features`` is not 2-D, holds NaN/inf, or has fewer frames than
                clusters, or an argument is out of range.
        """
        import faiss  # imported here: only training needs it

        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if niter < 1:
            raise ValueError(f"niter must be >= 1, got {niter}")
        if max_points is not None and max_points < n_clusters:
            raise ValueError(f"max_points ({max_points}) must be at least n_clusters ({n_clusters})")
        data = _to_numpy(features, "features")
        if data.ndim != 2:
            raise ValueError(f"features must be 2-D [frames, dim], got shape {tuple(data.shape)}")
        num_points, dim = data.shape
        if dim < 1:
            raise ValueError("features have dimension 0")
        if num_points < n_clusters:
            raise ValueError(f"k-means with {n_clusters} clusters needs at least {n_clusters} frames, got {num_points}")

        rng = np.random.default_rng(seed)
        if max_points is not None and num_points > max_points:
            keep = np.sort(rng.choice(num_points, size=max_points, replace=False))
            x = np.ascontiguousarray(data[keep], dtype=np.float32)
            logger.info("k-means: training on %d of %d frames", max_points, num_points)
        else:
            x = np.ascontiguousarray(data, dtype=np.float32)
        bad = _first_non_finite_row(x)
        if bad is not None:
            raise ValueError(f"features contain NaN or inf (training frame {bad} after subsampling)")

        init_count = min(x.shape[0], INIT_POINTS_PER_CLUSTER * n_clusters)
        init_rows = x if init_count == x.shape[0] else x[np.sort(rng.choice(x.shape[0], init_count, replace=False))]
        centers = _kmeans_plus_plus(init_rows, n_clusters, rng)

        for iteration in range(1, niter + 1):
            km = faiss.Kmeans(
                dim,
                n_clusters,
                niter=1,
                nredo=1,
                seed=seed + iteration,  # all centroids are given: faiss only uses it to re-seed empty clusters
                verbose=False,
                max_points_per_centroid=max(1, (2**31 - 1) // n_clusters),  # we subsampled already
                min_points_per_centroid=1,  # silences faiss's "too few points" warning
            )
            km.train(x, init_centroids=centers)
            centers = np.ascontiguousarray(km.centroids, dtype=np.float32)
            objective = float(km.obj[-1]) / x.shape[0]
            logger.debug("k-means iteration %d/%d: objective %.6g", iteration, niter, objective)
            if progress is not None:
                progress(iteration, niter, objective)

        info = {
            "trainer": "faiss",
            "seed": str(seed),
            "niter": str(niter),
            "train_frames": str(x.shape[0]),
        }
        return cls(centers, info=info)

    def save(self, path: str | os.PathLike[str], info: Mapping[str, str] | None = None) -> None:
        """Write the centers and metadata to one ``.safetensors`` file, atomically.

        Args:
            path: destination file (its folder must exist).
            info: extra string metadata merged over :attr:`info` (and kept on the object).
        """
        from safetensors.numpy import save

        self.info.update(_check_info(info))
        metadata = {
            "format": KMEANS_FORMAT,
            "version": KMEANS_VERSION,
            "n_clusters": str(self.n_clusters),
            "dim": str(self.dim),
            "info": json.dumps(self.info, sort_keys=True),
        }
        blob = save({CENTERS_KEY: np.ascontiguousarray(self._centers)}, metadata=metadata)
        atomic_write_bytes(path, blob)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str | None = None) -> KMeans:
        """Read a file written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if ``path`` is not a speechgpt k-means safetensors file.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"k-means file not found: {path}")
        try:
            with safe_open(str(path), framework="np") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("format") != KMEANS_FORMAT:
                    raise ValueError(f"{path} is not a speechgpt k-means file (metadata format is missing or wrong)")
                if metadata.get("version") != KMEANS_VERSION:
                    raise ValueError(
                        f"{path}: unsupported k-means file version {metadata.get('version')!r} "
                        f"(this code reads version {KMEANS_VERSION})"
                    )
                if CENTERS_KEY not in handle.keys():  # noqa: SIM118 (safe_open handles are not mappings)
                    raise ValueError(f"{path} has no {CENTERS_KEY!r} tensor")
                centers = handle.get_tensor(CENTERS_KEY)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
        expected = (metadata.get("n_clusters"), metadata.get("dim"))
        if centers.ndim != 2 or expected != (str(centers.shape[0]), str(centers.shape[1])):
            raise ValueError(f"{path}: centers shape {centers.shape} disagrees with metadata n_clusters/dim {expected}")
        try:
            info = json.loads(metadata.get("info", "{}"))
            return cls(centers, info=info, device=device)
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: invalid k-means content: {e}") from e

    @classmethod
    def from_joblib(cls, path: str | os.PathLike[str], device: torch.device | str | None = None) -> KMeans:
        """Load the released joblib-pickled scikit-learn KMeans (without scikit-learn)."""
        from speechgpt.convert.sklearn_kmeans import read_sklearn_kmeans_centers

        centers = read_sklearn_kmeans_centers(path)
        return cls(centers, info={"source": f"sklearn-joblib:{Path(path).name}"}, device=device)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], device: torch.device | str | None = None) -> KMeans:
        """Load k-means from either of its file formats, chosen by content, not by name.

        A safetensors file goes to :meth:`load`; anything else is tried as the released joblib file.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if ``path`` is neither format.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"k-means file not found: {path}")
        if _looks_like_safetensors(path):
            return cls.load(path, device=device)
        try:
            return cls.from_joblib(path, device=device)
        except Exception as e:
            raise ValueError(
                f"{path} is neither a speechgpt k-means safetensors file nor a joblib scikit-learn k-means file: {e}"
            ) from e


def _looks_like_safetensors(path: Path) -> bool:
    """True when the file starts like safetensors: an 8-byte little-endian header size, then ``{``."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 8 + header_size <= path.stat().st_size


class FrameReservoir:
    """A bounded, seeded, uniform sample of the frames of a stream of feature matrices.

    Every offered frame gets a random key from a generator seeded with ``seed``; the reservoir keeps
    the ``max_frames`` frames with the smallest keys, i.e. a uniform sample without replacement,
    deterministic given the seed and the order of the stream. At most about ``2 * max_frames``
    rows are held at once, so k-means can train on a sample of millions of frames streamed
    utterance by utterance.

    Args:
        max_frames: size of the sample.
        seed: seed of the random keys.
    """

    def __init__(self, max_frames: int, seed: int = 0) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.max_frames = int(max_frames)
        self._rng = np.random.default_rng(seed)
        self._dim: int | None = None
        self._seen = 0
        # Kept rows, their keys and stream positions, plus rows added since the last compaction.
        self._rows: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []
        self._held = 0
        self._threshold = np.inf  # largest kept key once the reservoir is full

    @property
    def seen(self) -> int:
        """Total number of frames offered so far."""
        return self._seen

    @property
    def dim(self) -> int | None:
        """Feature dimension, fixed by the first :meth:`add` (None before)."""
        return self._dim

    def add(self, features: np.ndarray | torch.Tensor) -> None:
        """Offer ``[T, D]`` frames to the sample.

        Raises:
            ValueError: if ``features`` is not 2-D, its D differs from earlier frames, or it
                holds NaN/inf.
        """
        data = _to_numpy(features, "features")
        if data.ndim != 2:
            raise ValueError(f"features must be 2-D [frames, dim], got shape {tuple(data.shape)}")
        if self._dim is None:
            self._dim = int(data.shape[1])
        elif data.shape[1] != self._dim:
            raise ValueError(f"features have dimension {data.shape[1]} but earlier frames had dimension {self._dim}")
        bad = _first_non_finite_row(data)
        if bad is not None:
            raise ValueError(f"features contain NaN or inf (frame {bad} of this matrix)")
        count = int(data.shape[0])
        keys = self._rng.random(count)
        positions = np.arange(self._seen, self._seen + count, dtype=np.int64)
        self._seen += count
        keep = np.flatnonzero(keys < self._threshold)
        if keep.size == 0:
            return
        if keep.size > 2 * self.max_frames:  # one huge matrix: keep only its best candidates
            keep = keep[np.argpartition(keys[keep], self.max_frames - 1)[: self.max_frames]]
            keep.sort()
        self._rows.append(np.ascontiguousarray(data[keep], dtype=np.float32))
        self._keys.append(keys[keep])
        self._positions.append(positions[keep])
        self._held += keep.size
        if self._held > 2 * self.max_frames:
            self._compact()

    def _compact(self) -> None:
        """Drop all but the ``max_frames`` smallest keys, keeping stream order."""
        rows = np.concatenate(self._rows) if self._rows else np.empty((0, self._dim or 0), np.float32)
        keys = np.concatenate(self._keys) if self._keys else np.empty(0)
        positions = np.concatenate(self._positions) if self._positions else np.empty(0, np.int64)
        if keys.size > self.max_frames:
            best = np.sort(np.argpartition(keys, self.max_frames - 1)[: self.max_frames])
            rows, keys, positions = rows[best], keys[best], positions[best]
            self._threshold = float(keys.max())
        # Chunks are appended in stream order and `best` is sorted, so rows stay in stream order.
        self._rows, self._keys, self._positions = [rows], [keys], [positions]
        self._held = keys.size

    def features(self) -> np.ndarray:
        """The sample: float32 ``[min(seen, max_frames), D]`` in stream order."""
        self._compact()
        return self._rows[0].copy()
