"""Reading the released joblib scikit-learn k-means without scikit-learn."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest

from speechgpt.convert.sklearn_kmeans import read_sklearn_kmeans_centers
from tests.fairseq_reference import numpy_assign, write_sklearn_kmeans


@pytest.fixture
def no_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make scikit-learn unimportable, including submodules an earlier test may have imported."""
    for name in [n for n in sys.modules if n == "sklearn" or n.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError):
        import sklearn.cluster  # noqa: F401


@pytest.mark.parametrize("minibatch", [False, True], ids=["KMeans", "MiniBatchKMeans"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compress", [0, 3])
def test_centers_equal_sklearn_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minibatch: bool, dtype: type, compress: int
) -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 24)).astype(dtype)
    path = tmp_path / "km.bin"
    km = write_sklearn_kmeans(path, centers, minibatch=minibatch, compress=compress)
    expected = km.cluster_centers_
    features = rng.standard_normal((200, 24)).astype(np.float32)
    predicted = km.predict(features.astype(dtype))
    for name in [n for n in sys.modules if n == "sklearn" or n.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)  # written with scikit-learn, read without it
    loaded = read_sklearn_kmeans_centers(path)
    assert loaded.dtype == expected.dtype == dtype
    np.testing.assert_array_equal(loaded, expected)
    # the release's distance rule picks the same ids as scikit-learn's predict
    np.testing.assert_array_equal(numpy_assign(features, loaded), predicted)


@pytest.fixture(scope="module")
def released_like(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    centers = np.random.default_rng(1).standard_normal((1000, 768)).astype(np.float32)
    path = tmp_path_factory.mktemp("km") / "mhubert_base_vp_en_es_fr_it3_L11_km1000.bin"
    write_sklearn_kmeans(path, centers, minibatch=True)
    return path, centers


def test_released_shape_without_sklearn(released_like: tuple[Path, np.ndarray], no_sklearn: None) -> None:
    """The released file's shape and dtype: 1000 x 768 float32 (fairseq's learn_kmeans writes float32)."""
    path, centers = released_like
    loaded = read_sklearn_kmeans_centers(path)
    assert loaded.shape == (1000, 768) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, centers)


def test_garbage_and_wrong_content_are_rejected(tmp_path: Path, no_sklearn: None) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        read_sklearn_kmeans_centers(tmp_path / "missing.bin")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(os.urandom(300))
    with pytest.raises(ValueError, match=r"garbage\.bin: not a joblib pickle"):
        read_sklearn_kmeans_centers(garbage)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.bin: not a joblib pickle"):
        read_sklearn_kmeans_centers(empty)
    no_centers = tmp_path / "nocenters.bin"
    joblib.dump({"n_clusters": 3}, no_centers)
    with pytest.raises(ValueError, match=r"nocenters\.bin: .*without 'cluster_centers_'"):
        read_sklearn_kmeans_centers(no_centers)
    flat = tmp_path / "flat.bin"
    joblib.dump({"cluster_centers_": np.zeros(5, np.float32)}, flat)
    with pytest.raises(ValueError, match=r"flat\.bin: 'cluster_centers_' must be a 2-D array"):
        read_sklearn_kmeans_centers(flat)
    ints = tmp_path / "ints.bin"
    joblib.dump({"cluster_centers_": np.zeros((2, 3), np.int64)}, ints)
    with pytest.raises(ValueError, match="dtype int64"):
        read_sklearn_kmeans_centers(ints)


class _Exploit:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.target}",))


def test_malicious_joblib_file_is_refused(tmp_path: Path, no_sklearn: None) -> None:
    target = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    joblib.dump({"cluster_centers_": np.zeros((2, 2)), "payload": _Exploit(target)}, evil)
    with pytest.raises(ValueError, match=r"evil\.bin: unsafe .*refusing to load global '(posix|os)\.system'"):
        read_sklearn_kmeans_centers(evil)
    assert not target.exists()
