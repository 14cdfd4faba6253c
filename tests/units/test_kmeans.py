"""Tests for speechgpt.units.kmeans: the released assignment rule, training, files, the frame reservoir."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from speechgpt.units.kmeans import KMEANS_FORMAT, FrameReservoir, KMeans


def _blobs(n_blobs: int, dim: int, per_blob: int, seed: int, spread: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian blobs: (points [n_blobs * per_blob, dim] float32, blob label per point)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_blobs, dim)) * 5.0
    labels = np.repeat(np.arange(n_blobs), per_blob)
    points = means[labels] + rng.standard_normal((labels.size, dim)) * spread
    return points.astype(np.float32), labels


def _release_ids(centers: np.ndarray, features: np.ndarray) -> torch.Tensor:
    """SpeechGPT's ApplyKmeans torch path, written from FAIRSEQ_COMPAT.md section C."""
    c = centers.T
    c_norm = (c**2).sum(0, keepdims=True)
    x = torch.from_numpy(features).float()
    c_t = torch.from_numpy(c).to(x)
    c_norm_t = torch.from_numpy(c_norm).to(x)
    dist = x.pow(2).sum(1, keepdim=True) - 2 * torch.matmul(x, c_t) + c_norm_t
    return dist.argmin(dim=1)


# --- assignment -------------------------------------------------------------------------------


def test_assign_equals_float64_brute_force_on_separated_data() -> None:
    rng = np.random.default_rng(0)
    centers = (rng.standard_normal((32, 24)) * 3.0).astype(np.float32)
    truth = rng.integers(0, 32, size=500)
    features = centers[truth] + rng.standard_normal((500, 24)).astype(np.float32) * 0.2

    ids = KMeans(centers).assign(features)

    diff = features.astype(np.float64)[:, None, :] - centers.astype(np.float64)[None, :, :]
    brute = (diff**2).sum(-1).argmin(1)
    assert ids.dtype == torch.long
    assert ids.shape == (500,)
    np.testing.assert_array_equal(ids.numpy(), brute)
    np.testing.assert_array_equal(ids.numpy(), truth)


def test_float64_centers_follow_the_release_torch_path() -> None:
    # Frames on the bisector of two centers with large norms: near-ties where the float32 rounding of
    # |C|² decides the id, so computing |C|² in float64 first (as the release does) matters.
    total_changed = 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        centers = rng.standard_normal((2, 16)) + 5.0
        features = (centers.mean(0) + rng.standard_normal((4000, 16)) * 1e-4).astype(np.float32)
        km = KMeans(centers)

        expected = _release_ids(centers, features)
        np.testing.assert_array_equal(km.assign(features).numpy(), expected.numpy())
        np.testing.assert_array_equal(km.assign(features, batch_size=7).numpy(), expected.numpy())
        assert km.centers.dtype == np.float64
        total_changed += int((_release_ids(centers.astype(np.float32), features) != expected).sum())
    # The data is sensitive: float32 centers would give other ids for some frames.
    assert total_changed > 0


def test_float32_centers_follow_the_release_torch_path() -> None:
    rng = np.random.default_rng(5)
    centers = (rng.standard_normal((64, 32)) * 0.3).astype(np.float32)
    features = rng.standard_normal((3000, 32)).astype(np.float32) * 0.3
    np.testing.assert_array_equal(KMeans(centers).assign(features).numpy(), _release_ids(centers, features).numpy())


def test_ties_go_to_the_lowest_id() -> None:
    a = np.array([1.0, 2.0, 0.0], dtype=np.float32)
    b = np.array([-3.0, 0.5, 4.0], dtype=np.float32)
    km = KMeans(np.stack([b, a, a, b]))
    features = np.stack([a, b, a + 0.01, b - 0.01]).astype(np.float32)
    np.testing.assert_array_equal(km.assign(features).numpy(), [1, 0, 1, 0])

    # Exactly equidistant frame: (0, y) is at the same distance from (1, 0) and (-1, 0).
    sym = KMeans(np.array([[-1.0, 0.0], [1.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(sym.assign(np.array([[0.0, 3.0], [0.0, -2.0]])).numpy(), [0, 0])


def test_batching_and_input_types_give_the_same_ids() -> None:
    rng = np.random.default_rng(1)
    centers = rng.standard_normal((50, 12)).astype(np.float32)
    features = rng.standard_normal((1001, 12)).astype(np.float32)
    km = KMeans(centers)
    whole = km.assign(features, batch_size=8192)
    for batch_size in (1, 7, 1000, 1001):
        assert torch.equal(km.assign(features, batch_size=batch_size), whole)
    assert torch.equal(km.assign(torch.from_numpy(features)), whole)
    assert torch.equal(km.assign(features.astype(np.float64)), whole)  # cast to float32 first
    assert torch.equal(km.to("cpu").assign(np.asfortranarray(features), batch_size=100), whole)
    assert km.device == torch.device("cpu")
    assert int(whole.min()) >= 0 and int(whole.max()) < 50
    assert len(torch.unique(whole)) > 30  # not a degenerate constant answer


def test_assign_rejects_bad_input() -> None:
    km = KMeans(np.zeros((4, 6), dtype=np.float32))
    with pytest.raises(ValueError, match=r"dimension 5 .* dimension 6"):
        km.assign(np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        km.assign(np.zeros(6, dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        km.assign(torch.zeros(2, 3, 6))
    bad = np.zeros((10, 6), dtype=np.float32)
    bad[7, 2] = np.nan
    with pytest.raises(ValueError, match="frame 7"):
        km.assign(bad, batch_size=4)
    with pytest.raises(ValueError, match="batch_size"):
        km.assign(np.zeros((3, 6), dtype=np.float32), batch_size=0)


def test_assign_of_no_frames_is_empty() -> None:
    ids = KMeans(np.eye(3, dtype=np.float32)).assign(np.zeros((0, 3), dtype=np.float32))
    assert ids.dtype == torch.long
    assert ids.shape == (0,)


def test_centers_are_validated_and_kept_in_their_dtype() -> None:
    km = KMeans(torch.ones(5, 3, dtype=torch.float64))
    assert (km.n_clusters, km.dim, km.centers.dtype) == (5, 3, np.float64)
    assert KMeans(np.ones((2, 4), dtype=np.float32)).centers.dtype == np.float32
    with pytest.raises(ValueError, match="2-D"):
        KMeans(np.ones(4, dtype=np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        KMeans(np.ones((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="center 1"):
        KMeans(np.array([[0.0, 1.0], [np.inf, 0.0]]))
    with pytest.raises(TypeError, match="info"):
        KMeans(np.ones((2, 4), dtype=np.float32), info={"layer": 11})  # type: ignore[dict-item]


def test_centers_are_copied_not_aliased() -> None:
    centers = np.ones((2, 3), dtype=np.float32)
    km = KMeans(centers)
    centers[0] = 100.0
    assert float(km.centers.max()) == 1.0
    assert not km.centers.flags.writeable


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path: Path, dtype: type) -> None:
    centers = np.random.default_rng(2).standard_normal((7, 5)).astype(dtype)
    km = KMeans(centers, info={"extractor": "hubert"})
    path = tmp_path / "km.safetensors"
    km.save(path, info={"layer": "11"})

    loaded = KMeans.load(path)
    assert loaded.centers.dtype == dtype
    assert loaded.centers.tobytes() == centers.tobytes()  # bitwise
    assert loaded.info == {"extractor": "hubert", "layer": "11"}
    assert km.info == loaded.info
    assert (loaded.n_clusters, loaded.dim) == (7, 5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["km.safetensors"]  # no temp file left behind

    from_file = KMeans.from_file(path)
    assert from_file.centers.tobytes() == centers.tobytes()
    features = np.random.default_rng(3).standard_normal((40, 5)).astype(np.float32)
    assert torch.equal(loaded.assign(features), km.assign(features))


def test_saved_metadata_is_readable_strings(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = tmp_path / "km.safetensors"
    KMeans(np.zeros((3, 2), dtype=np.float32), info={"source": "test"}).save(path)
    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == KMEANS_FORMAT
    assert metadata["version"] == "1"
    assert (metadata["n_clusters"], metadata["dim"]) == ("3", "2")
    assert json.loads(metadata["info"]) == {"source": "test"}


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "km.safetensors"
    KMeans(np.zeros((3, 2), dtype=np.float32)).save(path)
    KMeans(np.ones((4, 2), dtype=np.float32)).save(path)
    assert KMeans.load(path).n_clusters == 4


def test_load_rejects_other_files_naming_them(tmp_path: Path) -> None:
    other = tmp_path / "weights.safetensors"
    save_file({"centers": np.zeros((3, 2), dtype=np.float32)}, str(other), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"weights\.safetensors"):
        KMeans.load(other)
    with pytest.raises(ValueError, match=r"weights\.safetensors"):
        KMeans.from_file(other)

    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not a k-means file at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.bin"):
        KMeans.load(garbage)
    with pytest.raises(ValueError, match=r"garbage\.bin"):
        KMeans.from_file(garbage)

    with pytest.raises(FileNotFoundError, match=r"missing\.safetensors"):
        KMeans.load(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        KMeans.from_file(tmp_path / "missing.bin")


# --- training ---------------------------------------------------------------------------------


def test_train_recovers_planted_clusters() -> None:
    points, labels = _blobs(n_blobs=8, dim=16, per_blob=100, seed=4)
    km = KMeans.train(points, 8, seed=0, niter=10)
    assert (km.n_clusters, km.dim, km.centers.dtype) == (8, 16, np.float32)
    ids = km.assign(points).numpy()
    blob_ids = [set(ids[labels == b].tolist()) for b in range(8)]
    assert all(len(s) == 1 for s in blob_ids)  # every blob maps to one cluster
    assert len({s.pop() for s in blob_ids}) == 8  # and all clusters differ
    assert km.info["seed"] == "0"
    assert km.info["train_frames"] == "800"


def test_train_is_deterministic_for_a_seed() -> None:
    points = np.random.default_rng(6).standard_normal((600, 8)).astype(np.float32)
    first = KMeans.train(points, 12, seed=3, niter=5)
    again = KMeans.train(points, 12, seed=3, niter=5)
    other = KMeans.train(points, 12, seed=4, niter=5)
    assert first.centers.tobytes() == again.centers.tobytes()
    assert first.centers.tobytes() != other.centers.tobytes()


def test_train_subsamples_to_max_points_reproducibly() -> None:
    points = np.random.default_rng(7).standard_normal((2000, 4))  # float64 input is accepted
    first = KMeans.train(points, 5, seed=1, niter=3, max_points=300)
    again = KMeans.train(points, 5, seed=1, niter=3, max_points=300)
    everything = KMeans.train(points, 5, seed=1, niter=3, max_points=None)
    assert first.info["train_frames"] == "300"
    assert everything.info["train_frames"] == "2000"
    assert first.centers.tobytes() == again.centers.tobytes()
    assert first.centers.tobytes() != everything.centers.tobytes()


def test_train_reports_progress_every_iteration() -> None:
    points, _ = _blobs(n_blobs=6, dim=8, per_blob=80, seed=8, spread=1.5)
    calls: list[tuple[int, int, float]] = []
    KMeans.train(points, 10, seed=0, niter=7, progress=lambda i, n, obj: calls.append((i, n, obj)))
    assert [(i, n) for i, n, _ in calls] == [(i, 7) for i in range(1, 8)]
    objectives = [obj for _, _, obj in calls]
    assert all(obj > 0 for obj in objectives)
    assert all(b <= a * (1 + 1e-5) for a, b in itertools.pairwise(objectives))
    assert objectives[-1] < objectives[0]


def test_train_writes_nothing_to_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    points = np.random.default_rng(9).standard_normal((50, 4)).astype(np.float32)
    KMeans.train(points, 10, niter=2)  # few points per cluster: faiss would warn by default
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_train_rejects_bad_input() -> None:
    points = np.random.default_rng(10).standard_normal((5, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"at least 8 frames, got 5"):
        KMeans.train(points, 8)
    with pytest.raises(ValueError, match="2-D"):
        KMeans.train(points.ravel(), 2)
    bad = points.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KMeans.train(bad, 2, niter=1)
    with pytest.raises(ValueError, match="niter"):
        KMeans.train(points, 2, niter=0)
    with pytest.raises(ValueError, match="max_points"):
        KMeans.train(points, 4, max_points=3)


# --- frame reservoir --------------------------------------------------------------------------


def _stream(lengths: list[int], dim: int = 3) -> list[np.ndarray]:
    """Matrices whose rows carry their global stream index in column 0, so kept rows can be traced."""
    out, start = [], 0
    for length in lengths:
        index = np.arange(start, start + length, dtype=np.float32)
        out.append(np.stack([index, index * 2.0, -index][:dim], axis=1))
        start += length
    return out


def _fill(reservoir: FrameReservoir, stream: list[np.ndarray]) -> np.ndarray:
    for matrix in stream:
        reservoir.add(matrix)
    return reservoir.features()


def test_reservoir_keeps_exactly_max_frames_from_the_stream() -> None:
    lengths = [int(n) for n in np.random.default_rng(11).integers(0, 120, size=80)]
    reservoir = FrameReservoir(max_frames=500, seed=0)
    kept = _fill(reservoir, _stream(lengths))
    total = sum(lengths)
    assert reservoir.seen == total
    assert kept.shape == (500, 3)
    assert kept.dtype == np.float32
    index = kept[:, 0]
    np.testing.assert_array_equal(kept[:, 1], index * 2.0)  # whole rows, unchanged
    np.testing.assert_array_equal(kept[:, 2], -index)
    assert np.all(np.diff(index) > 0)  # distinct rows, in stream order
    assert index.min() >= 0 and index.max() < total


def test_reservoir_is_deterministic_and_independent_of_chunking() -> None:
    lengths = [37, 0, 250, 3, 400, 90, 1000, 12]
    first = _fill(FrameReservoir(300, seed=5), _stream(lengths))
    again = _fill(FrameReservoir(300, seed=5), _stream(lengths))
    one_matrix = _fill(FrameReservoir(300, seed=5), [np.concatenate(_stream(lengths))])
    other_seed = _fill(FrameReservoir(300, seed=6), _stream(lengths))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, one_matrix)
    assert not np.array_equal(first, other_seed)


def test_reservoir_sample_is_uniform() -> None:
    reservoir = FrameReservoir(max_frames=2000, seed=1)
    kept = _fill(reservoir, _stream([100] * 200))  # 20,000 frames
    index = kept[:, 0]
    # A uniform sample of 2000 out of 0..19999: mean 10000 (sd ~129), each tenth holds ~200 (sd ~13).
    assert abs(float(index.mean()) - 9999.5) < 600
    counts = np.bincount((index // 2000).astype(int), minlength=10)
    assert counts.min() > 140 and counts.max() < 260


def test_reservoir_memory_stays_bounded() -> None:
    reservoir = FrameReservoir(max_frames=100, seed=2)
    for matrix in _stream([30] * 100 + [5000] + [30] * 20):
        reservoir.add(matrix)
        held = sum(len(rows) for rows in reservoir._rows)
        assert held <= 2 * reservoir.max_frames


def test_reservoir_with_fewer_frames_keeps_them_all() -> None:
    reservoir = FrameReservoir(max_frames=1000, seed=0)
    stream = _stream([10, 20, 5])
    np.testing.assert_array_equal(_fill(reservoir, stream), np.concatenate(stream))
    assert reservoir.seen == 35
    assert FrameReservoir(10).features().shape[0] == 0


def test_reservoir_rejects_bad_input() -> None:
    reservoir = FrameReservoir(max_frames=10)
    reservoir.add(np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"dimension 5 .* dimension 3"):
        reservoir.add(np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        reservoir.add(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        reservoir.add(np.full((2, 3), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="max_frames"):
        FrameReservoir(max_frames=0)


def test_reservoir_feeds_training() -> None:
    points, labels = _blobs(n_blobs=4, dim=6, per_blob=500, seed=12)
    order = np.random.default_rng(13).permutation(len(points))
    reservoir = FrameReservoir(max_frames=400, seed=0)
    for chunk in np.array_split(order, 25):
        reservoir.add(points[chunk])
    km = KMeans.train(reservoir.features(), 4, niter=5)
    ids = km.assign(points).numpy()
    assert all(len(set(ids[labels == b].tolist())) == 1 for b in range(4))
    assert len(set(ids.tolist())) == 4
