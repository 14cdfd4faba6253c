"""Restricted unpickling for the released foreign files (fairseq checkpoints, joblib scikit-learn k-means).

Both released files are pickles that name classes from packages we do not install (``fairseq.*``,
``sklearn.*``). A plain unpickler would import them, fail, or, with a hostile file, run arbitrary code.
Here every global is resolved by :func:`resolve_global`: foreign classes become inert stubs that only
keep their pickled state, a short allow-list of harmless globals (tensor and array rebuilders, dtypes,
plain containers) is let through, and anything else is refused with :class:`pickle.UnpicklingError`.

:data:`RESTRICTED_PICKLE` is shaped like the :mod:`pickle` module, so it can be passed as
``torch.load(..., weights_only=False, pickle_module=RESTRICTED_PICKLE)``.
"""

from __future__ import annotations

import importlib
import io
import pickle
import types
from collections.abc import Iterable
from typing import IO, Any

__all__ = [
    "FOREIGN_PREFIXES",
    "RESTRICTED_PICKLE",
    "RestrictedUnpickler",
    "Stub",
    "is_stub",
    "resolve_global",
    "stub_class",
    "stub_state",
]

FOREIGN_PREFIXES: tuple[str, ...] = ("fairseq", "sklearn")
"""Top-level packages whose classes are replaced by inert stubs instead of being imported."""

# (module, name) pairs that may be resolved for real. Each one only builds data (tensors, arrays,
# containers); none of them runs code given by the file. Missing ones (older/newer library versions)
# are skipped when resolving.
_SAFE_GLOBALS: tuple[tuple[str, str], ...] = (
    # torch tensors and parameters (the storages themselves come through torch's persistent_load)
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Tensor"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.serialization", "_get_layout"),
    # numpy arrays, scalars and dtypes (numpy 1.x and 2.x module names)
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    # plain containers and builtins
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("argparse", "Namespace"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "range"),
)

# numpy 2 moved numpy.core to numpy._core; a file written under either version may name either. The new name
# is tried first (importing the old one under numpy 2 warns).
_NUMPY_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")


class Stub:
    """An inert stand-in for a class from a package we do not import (fairseq, scikit-learn).

    It accepts every way pickle may build an object (``__new__`` with arguments, a call, ``__setstate__``)
    and only records what it was given: the pickled state ends up in ``__dict__``, anything else in
    ``_stub_args`` / ``_stub_state``. It never runs foreign code.
    """

    _stub_module: str = ""
    _stub_name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Stub:
        obj = super().__new__(cls)
        obj.__dict__["_stub_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args:
            self.__dict__["_stub_args"] = args
        if kwargs:
            self.__dict__["_stub_kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        # Default pickling gives a dict, or (dict, slots-dict) for classes with __slots__.
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                if part:
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_stub_state"] = state

    def __reduce__(self) -> Any:
        raise pickle.PicklingError(f"{self._stub_module}.{self._stub_name} is an unpickling stub and cannot be saved")

    def __repr__(self) -> str:
        return f"<stub {self._stub_module}.{self._stub_name}>"


_STUB_CLASSES: dict[tuple[str, str], type[Stub]] = {}


def stub_class(module: str, name: str) -> type[Stub]:
    """The (cached) stub class standing for ``module.name``; ``cls._stub_module/_stub_name`` say which."""
    key = (module, name)
    if key not in _STUB_CLASSES:
        safe_name = "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "Stub"
        _STUB_CLASSES[key] = type(safe_name, (Stub,), {"_stub_module": module, "_stub_name": name})
    return _STUB_CLASSES[key]


def is_stub(obj: Any, module: str | None = None, name: str | None = None) -> bool:
    """True when ``obj`` is a stub instance (of ``module.name`` if given)."""
    if not isinstance(obj, Stub):
        return False
    return (module is None or obj._stub_module == module) and (name is None or obj._stub_name == name)


def _is_foreign(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _import_safe(module: str, name: str) -> Any | None:
    """Resolve an allow-listed global, trying numpy's old/new module name; ``None`` when absent."""
    for candidate in _NUMPY_MULTIARRAY if module in _NUMPY_MULTIARRAY else (module,):
        try:
            obj = getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
        return obj
    return None


def resolve_global(
    module: str,
    name: str,
    *,
    foreign_prefixes: Iterable[str] = FOREIGN_PREFIXES,
    extra_allowed: dict[tuple[str, str], Any] | None = None,
) -> Any:
    """Return what ``module.name`` may be while unpickling an untrusted released file.

    Args:
        module: The module named in the pickle.
        name: The attribute named in the pickle.
        foreign_prefixes: Packages whose globals become :class:`Stub` subclasses.
        extra_allowed: More ``(module, name) -> object`` pairs a caller trusts (e.g. joblib's array wrapper).

    Raises:
        pickle.UnpicklingError: for any global that is neither foreign nor allow-listed.
    """
    if extra_allowed and (module, name) in extra_allowed:
        return extra_allowed[(module, name)]
    if _is_foreign(module, foreign_prefixes):
        return stub_class(module, name)
    if (module, name) in _SAFE_GLOBALS:
        obj = _import_safe(module, name)
        if obj is not None:
            return obj
    if module == "torch" and not name.startswith("_"):
        # dtypes (torch.float32, ...) are pickled as attributes of the torch module.
        import torch

        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            return obj
    raise pickle.UnpicklingError(
        f"refusing to load global '{module}.{name}': not in the allow-list of safe globals "
        f"and not from a stubbed package ({', '.join(foreign_prefixes)})"
    )


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that stubs foreign classes and refuses any global outside a short allow-list."""

    foreign_prefixes: tuple[str, ...] = FOREIGN_PREFIXES

    def find_class(self, module: str, name: str) -> Any:
        return resolve_global(module, name, foreign_prefixes=self.foreign_prefixes)


def _load(file: IO[bytes], **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs: Any) -> Any:
    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


RESTRICTED_PICKLE = types.SimpleNamespace(
    __name__=__name__,
    Unpickler=RestrictedUnpickler,
    load=_load,
    loads=_loads,
    # torch.load's legacy (pre-zip) reader reads the pickle protocol through these:
    UnpicklingError=pickle.UnpicklingError,
    HIGHEST_PROTOCOL=pickle.HIGHEST_PROTOCOL,
    DEFAULT_PROTOCOL=pickle.DEFAULT_PROTOCOL,
)
"""A ``pickle_module`` for :func:`torch.load` that unpickles with :class:`RestrictedUnpickler`."""


def stub_state(obj: Any) -> dict[str, Any]:
    """The recorded state of a stub (its ``__dict__`` without the stub bookkeeping)."""
    if not isinstance(obj, Stub):
        raise TypeError(f"expected an unpickling stub, got {type(obj).__name__}")
    return {k: v for k, v in vars(obj).items() if not k.startswith("_stub_")}
