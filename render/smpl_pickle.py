"""Loading official SMPL / SMPL-H ``.pkl`` model files without ``chumpy``.

The official SMPL-family pickles (Python 2, protocol 2) store several arrays (``v_template``, ``shapedirs``,
``posedirs``, ``weights``, ``J``) as ``chumpy`` objects and ``J_regressor`` as a ``scipy.sparse`` matrix.
``chumpy`` no longer imports with current numpy, and a plain ``pickle.load`` would run whatever a file asks
for. :class:`RestrictedUnpickler` resolves classes through an allow-list only:

- ``chumpy.*`` classes (``chumpy.ch.Ch``, ``chumpy.reordering.Select``/``transpose``/``Reshape``/...) map to
  a small stand-in that keeps their pickled state; :func:`to_plain` then evaluates it to a numpy array
  (the value of a ``Ch`` is its ``x``; reorderings are replayed with numpy);
- ``scipy.sparse`` csc/csr/coo matrices map to a stand-in rebuilt as a real scipy matrix from its arrays;
- numpy's array/dtype/scalar reconstruction functions, ``copyreg._reconstructor``, ``_codecs.encode``
  (how Python 3 writes bytes at protocol 2) and plain builtins (``set``, ``dict``, ...) are allowed;
- anything else (``os.system``, ``builtins.eval``, ...) is refused with :class:`BadInputError`.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dataset.errors import BadInputError

log = logging.getLogger(__name__)


class _PickledState:
    """Keeps the state a pickle hands to ``__setstate__`` (in ``_state``) and the constructor args."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}


class ChumpyStandIn(_PickledState):
    """Holds the pickled state of one chumpy object (class name in ``_chumpy_class``)."""

    _chumpy_class = "chumpy.ch.Ch"

    def __reduce__(self):  # never re-pickle a stand-in by accident
        raise TypeError("chumpy stand-ins are not picklable; call to_plain() first")


class SparseStandIn(_PickledState):
    """Holds the pickled state of one scipy.sparse matrix (format in ``_sparse_format``)."""

    _sparse_format = "csc"


_stand_in_cache: dict[tuple[str, str], type] = {}


def _chumpy_class(module: str, name: str) -> type:
    key = (module, name)
    if key not in _stand_in_cache:
        _stand_in_cache[key] = type(f"ChumpyStandIn_{name}", (ChumpyStandIn,),
                                    {"_chumpy_class": f"{module}.{name}"})
    return _stand_in_cache[key]


def _sparse_class(fmt: str) -> type:
    key = ("scipy.sparse", fmt)
    if key not in _stand_in_cache:
        _stand_in_cache[key] = type(f"SparseStandIn_{fmt}", (SparseStandIn,), {"_sparse_format": fmt})
    return _stand_in_cache[key]


def _numpy_attr(qualname: str) -> Any:
    mod, _, attr = qualname.rpartition(".")
    import importlib

    return getattr(importlib.import_module(mod), attr)


# (module, name) -> callable; module names as Python 3's unpickler sees them after fix_imports.
_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): "numpy._core.multiarray._reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "numpy._core.multiarray._reconstruct",
    ("numpy.core.multiarray", "scalar"): "numpy._core.multiarray.scalar",
    ("numpy._core.multiarray", "scalar"): "numpy._core.multiarray.scalar",
    ("numpy.core.numeric", "_frombuffer"): "numpy._core.numeric._frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "numpy._core.numeric._frombuffer",
    ("numpy", "ndarray"): "numpy.ndarray",
    ("numpy", "dtype"): "numpy.dtype",
}
_BUILTINS_ALLOWED = {"set", "frozenset", "dict", "list", "tuple", "object", "slice", "complex", "bytearray",
                     "int", "float", "bool", "str", "bytes"}
_SPARSE_FORMATS = ("csc", "csr", "coo")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds arrays, sparse matrices, chumpy stand-ins and plain builtins."""

    def __init__(self, file: Any, path: str | os.PathLike | None = None) -> None:
        super().__init__(file, encoding="latin1", fix_imports=True)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module == "chumpy" or module.startswith("chumpy."):
            return _chumpy_class(module, name)
        if module.startswith("scipy.sparse"):
            for fmt in _SPARSE_FORMATS:
                if name == f"{fmt}_matrix" or name == f"{fmt}_array":
                    return _sparse_class(fmt)
        if (module, name) in _NUMPY_ALLOWED:
            return _numpy_attr(_NUMPY_ALLOWED[(module, name)])
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            import copyreg

            return copyreg._reconstructor
        if module == "_codecs" and name == "encode":       # bytes in protocol-2 pickles written by Python 3
            import codecs

            return codecs.encode
        if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:
            import builtins

            return getattr(builtins, name)
        raise BadInputError(self._path, "pickle",
                            f"refusing to load {module}.{name}: not an array, sparse matrix or chumpy object "
                            "(SMPL-family model files contain nothing else)")


def _eval_chumpy(obj: ChumpyStandIn, path: Any) -> np.ndarray:
    st = obj.__dict__.get("_state", {})
    cls = obj._chumpy_class.rsplit(".", 1)[-1]

    def sub(key: str) -> np.ndarray:
        if key not in st:
            raise BadInputError(path, "pickle", f"chumpy {cls} object without its '{key}' term")
        return np.asarray(to_plain(st[key], path))

    if cls == "Ch":
        return np.asarray(to_plain(st.get("x"), path), dtype=np.float64)
    if cls == "Select":
        r = sub("a").ravel()[np.asarray(st["idxs"])].copy()
        return r.reshape(st["preferred_shape"]) if "preferred_shape" in st else r
    if cls == "transpose":
        return np.ascontiguousarray(np.transpose(sub("a"), axes=st.get("axes")))
    if cls == "Reshape":
        return sub("a").reshape(st["newshape"])
    if cls == "swapaxes":
        return np.swapaxes(sub("a"), st["axis1"], st["axis2"])
    if cls == "rollaxis":
        return np.rollaxis(sub("a"), st["axis"], st.get("start", 0))
    if cls == "Tile":
        return np.tile(sub("a"), st["reps"])
    if cls == "Repeat":
        return np.repeat(sub("a"), st["repeats"], st.get("axis"))
    if cls == "Concatenate":
        terms = st.get("dterms") or sorted((k for k in st if k.startswith("m") and k[1:].isdigit()),
                                           key=lambda k: int(k[1:]))
        return np.concatenate([sub(t) for t in terms], axis=st.get("axis", 0))
    raise BadInputError(path, "pickle", f"unsupported chumpy class {obj._chumpy_class} (only Ch and "
                                        "reorderings can be converted without chumpy)")


def _eval_sparse(obj: SparseStandIn, path: Any) -> Any:
    import scipy.sparse as sp

    st = obj.__dict__.get("_state", {})
    shape = st.get("_shape", st.get("shape"))
    try:
        if obj._sparse_format == "coo":
            return sp.coo_matrix((np.asarray(st["data"]), (np.asarray(st["row"]), np.asarray(st["col"]))),
                                 shape=shape)
        make = sp.csc_matrix if obj._sparse_format == "csc" else sp.csr_matrix
        return make((np.asarray(st["data"]), np.asarray(st["indices"]), np.asarray(st["indptr"])), shape=shape)
    except (KeyError, ValueError, TypeError) as exc:
        raise BadInputError(path, "pickle", f"malformed {obj._sparse_format} sparse matrix: {exc}") from exc


def to_plain(obj: Any, path: Any = None) -> Any:
    """Replace chumpy stand-ins by numpy arrays and sparse stand-ins by scipy matrices, recursively."""
    if isinstance(obj, ChumpyStandIn):
        return _eval_chumpy(obj, path)
    if isinstance(obj, SparseStandIn):
        return _eval_sparse(obj, path)
    if isinstance(obj, dict):
        return {k: to_plain(v, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v, path) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v, path) for v in obj)
    return obj


def load_smpl_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SMPL-family ``.pkl`` without chumpy -> dict of numpy arrays (sparse stays scipy.sparse).

    Raises :class:`BadInputError` for unreadable files and for any class outside the allow-list.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = RestrictedUnpickler(fh, path).load()
    except BadInputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError, UnicodeDecodeError) as exc:
        raise BadInputError(path, "pickle", f"not a readable SMPL model pickle: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInputError(path, "pickle", f"expected a dict of model arrays, got {type(data).__name__}")
    return to_plain(data, path)


def load_npz_restricted(path: str | os.PathLike) -> dict[str, Any]:
    """Read a model ``.npz``; object members (rare) go through :class:`RestrictedUnpickler`, not pickle."""
    path = Path(path)
    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                with zf.open(member) as fh:
                    buf = io.BytesIO(fh.read())
                version = np.lib.format.read_magic(buf)
                shape, fortran, dtype = (np.lib.format.read_array_header_1_0(buf) if version == (1, 0)
                                         else np.lib.format.read_array_header_2_0(buf))
                if dtype.hasobject:
                    out[member[:-4]] = to_plain(RestrictedUnpickler(buf, path).load(), path)
                else:
                    buf.seek(0)
                    out[member[:-4]] = np.lib.format.read_array(buf, allow_pickle=False)
    except BadInputError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise BadInputError(path, "npz", f"not a readable model npz: {exc}") from exc
    return out
