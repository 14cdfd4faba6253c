"""Read the centres of the released k-means (``*_L11_km1000.bin``) without scikit-learn.

The file is ``joblib.dump`` of a scikit-learn ``KMeans``/``MiniBatchKMeans``: a pickle naming
``sklearn.cluster._kmeans.*`` whose arrays joblib stores after the pickle opcodes. We unpickle it with a
subclass of joblib's own ``NumpyUnpickler`` (so joblib reads its array blocks and compressed files exactly
as it wrote them) whose ``find_class`` stubs ``sklearn.*`` and allows nothing outside the restricted
allow-list, then take ``cluster_centers_`` from the stub's state.
"""

from __future__ import annotations

import inspect
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from joblib import numpy_pickle, numpy_pickle_utils

from speechgpt.convert.restricted_pickle import resolve_global, stub_state

__all__ = ["read_sklearn_kmeans_centers"]

# joblib's own placeholder classes: they only describe where the array bytes are; joblib replaces them.
_JOBLIB_GLOBALS: dict[tuple[str, str], Any] = {
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): numpy_pickle.NumpyArrayWrapper,
}
_ndarray_wrapper = getattr(numpy_pickle, "NDArrayWrapper", None)  # joblib <= 0.9 files
if _ndarray_wrapper is not None:
    _JOBLIB_GLOBALS[("joblib.numpy_pickle_compat", "NDArrayWrapper")] = _ndarray_wrapper
    _JOBLIB_GLOBALS[("joblib.numpy_pickle", "NDArrayWrapper")] = _ndarray_wrapper


class _RestrictedNumpyUnpickler(numpy_pickle.NumpyUnpickler):
    """joblib's unpickler with ``sklearn.*`` stubbed and every other global restricted."""

    def __init__(self, filename: str, file_handle: Any) -> None:
        # joblib >= 1.5 added ensure_native_byte_order before mmap_mode; older versions take 3 arguments.
        params = inspect.signature(numpy_pickle.NumpyUnpickler.__init__).parameters
        if "ensure_native_byte_order" in params:
            super().__init__(filename, file_handle, True, mmap_mode=None)
        else:
            super().__init__(filename, file_handle, mmap_mode=None)

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name, extra_allowed=_JOBLIB_GLOBALS)


def _open_joblib_stream(handle: Any, filename: str) -> Any:
    """joblib's helper that detects compression and yields a readable stream (renamed in joblib 1.5)."""
    helper = getattr(numpy_pickle_utils, "_validate_fileobject_and_memmap", None)
    if helper is None:
        helper = numpy_pickle_utils._read_fileobject
    return helper(handle, filename, None)


def _unpickle(path: Path) -> Any:
    with path.open("rb") as handle, _open_joblib_stream(handle, str(path)) as opened:
        stream = opened[0] if isinstance(opened, tuple) else opened
        if isinstance(stream, str):
            raise ValueError(f"{path}: written by joblib < 0.10, which is not supported")
        return _RestrictedNumpyUnpickler(str(path), stream).load()


def read_sklearn_kmeans_centers(path: str | os.PathLike[str]) -> np.ndarray:
    """Return ``cluster_centers_`` ``[K, D]`` (dtype as stored) of a joblib-dumped scikit-learn k-means.

    scikit-learn is never imported: its classes are unpickled as inert stubs.

    Args:
        path: The ``.bin`` file written by ``joblib.dump(kmeans, path)`` (plain or compressed).

    Raises:
        FileNotFoundError: if ``path`` is not a file.
        ValueError: if it is not a joblib pickle, names a global outside the allow-list (a hostile or
            unexpected file; nothing is executed), holds no ``cluster_centers_``, or the centres are not 2-D.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"k-means file not found: {path}")
    try:
        obj = _unpickle(path)
    except pickle.UnpicklingError as e:
        if "refusing to load global" in str(e):
            raise ValueError(f"{path}: unsafe or unexpected content in the k-means pickle: {e}") from e
        raise ValueError(f"{path}: not a joblib pickle ({e})") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OSError) as e:
        raise ValueError(f"{path}: not a joblib pickle ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict):
        state = obj
    else:
        try:
            state = stub_state(obj)
        except TypeError:
            state = getattr(obj, "__dict__", {})
    if "cluster_centers_" not in state:
        raise ValueError(
            f"{path}: holds a {type(obj).__name__} without 'cluster_centers_'; expected a fitted scikit-learn KMeans"
        )
    centers = state["cluster_centers_"]
    if not isinstance(centers, np.ndarray) or centers.ndim != 2:
        shape = getattr(centers, "shape", None)
        raise ValueError(f"{path}: 'cluster_centers_' must be a 2-D array [K, D], got {type(centers).__name__} {shape}")
    if not np.issubdtype(centers.dtype, np.floating):
        raise ValueError(f"{path}: 'cluster_centers_' has dtype {centers.dtype}, expected float32 or float64")
    return np.ascontiguousarray(centers)
