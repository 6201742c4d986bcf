"""Reading SMPL-family model files (``.pkl`` and ``.npz``) without ``chumpy`` and without running their code.

The official SMPL-family pickles (Python 2, protocol 2) store several arrays (``v_template``, ``shapedirs``,
``posedirs``, ``weights``, ``J``) as ``chumpy`` objects and ``J_regressor`` as a ``scipy.sparse`` matrix.
``chumpy`` no longer imports with current numpy, and a plain ``pickle.load`` would run whatever a file asks
for. Model files are untrusted input, so every global a pickle names goes through an allow-list, and every
numpy object it builds is checked before numpy sees the file's bytes:

- numpy's reconstruction globals (``numpy.core.multiarray._reconstruct`` / ``scalar``, ``numpy.ndarray``,
  ``numpy.dtype``, ``numpy.core.numeric._frombuffer``, also under ``numpy._core``) resolve to **checked
  stand-ins**, never to numpy's own functions: a dtype is built from a fixed list of type codes (booleans,
  integers, floats, complex, fixed-width bytes/str, and ``O`` for object) and a state without sub-arrays,
  fields or metadata; an array's pickled state is validated (shape of non-negative ints, at most
  :data:`MAX_ELEMENTS` elements, raw data of exactly ``size * itemsize`` bytes) before numpy's
  ``__setstate__`` runs; an **object** dtype is only accepted with the list form of the state (one Python
  object per element, never raw bytes), and no array, scalar or buffer is ever built from raw bytes with a
  dtype that holds objects (``hasobject``). Calling ``numpy.ndarray(...)`` directly is refused (numpy never
  writes that; with an object dtype and a buffer it turns the file's bytes into object pointers);
- ``chumpy.*`` classes map to a fresh stand-in class per load that keeps their pickled state;
  :func:`to_plain` then evaluates it to a numpy array (a ``Ch`` is its ``x``; reorderings are replayed
  with numpy, with output sizes bounded);
- ``scipy.sparse`` csc/csr/coo matrices map to a stand-in rebuilt as a real scipy matrix from its arrays,
  after a full format check (indices within the shape, monotonic ``indptr``, numeric arrays);
- ``copyreg._reconstructor`` only for ``(stand-in class, object, None)``; ``_codecs.encode`` only with the
  latin-1 codec (how Python 3 writes bytes at protocol 2); the builtins ``set``, ``frozenset``, ``dict``,
  ``list``, ``tuple``, ``object``, ``slice``, ``complex``, ``int``, ``float``, ``bool``, ``str`` and
  ``bytes``/``bytearray`` (not from an int: no size-only allocations);
- anything else (``os.system``, ``posix.system``, ``builtins.exec``, ``builtins.eval``, ...) is refused.

Every failure (refused global, malformed state, chumpy object without its terms, cycles, too deep nesting,
sizes over the bounds) ends as :class:`BadInputError` naming the file and the member (the npz member, or the
pickle's top-level key once known, else ``pickle``).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from dataset.errors import BadInputError

log = logging.getLogger(__name__)

#: Largest array (elements) any loader here builds; SMPL-X's posedirs, the largest, holds ~15.3 M.
MAX_ELEMENTS = 1 << 28
#: Deepest nesting of containers / chumpy terms :func:`to_plain` follows.
MAX_DEPTH = 64
#: Largest pickled (object) ``.npy`` member of an npz that is unpickled at all.
MAX_PICKLE_MEMBER_BYTES = 64 << 20
#: ``.npy`` members never name more than 32 dimensions (numpy's own limit is 64).
_MAX_NDIM = 32

# dtype type codes a pickle may ask for (what numpy's dtype.__reduce__ writes for plain dtypes)
_DTYPE_CODE = re.compile(r"(b1|\?|[iu][1248]|f[248]|c(8|16)|O[48]?|[SU][1-9][0-9]{0,6})\Z")


class _Refused(ValueError):
    """Raised inside the unpickler; turned into BadInputError(path, member, message) at the load boundary."""


# -- checked numpy reconstruction -----------------------------------------------------------------------
class _DtypeSpec:
    """What a pickle's ``numpy.dtype(code, align, copy)`` + BUILD(state) becomes: a validated plain dtype.

    The real ``np.dtype`` is only built from an allow-listed type code, a byte order and (for ``S``/``U``)
    a size; sub-arrays, structured fields and metadata are refused.
    """

    __slots__ = ("_dtype",)

    def __init__(self, code: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(code, bytes):
            code = code.decode("latin1")
        if not isinstance(code, str) or not _DTYPE_CODE.match(code):
            raise _Refused(f"refusing dtype {code!r} (only booleans, integers, floats, complex, bytes, str "
                           "and object arrays)")
        self._dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or not 5 <= len(state) <= 9:
            raise _Refused("malformed dtype state")
        endian = state[1]
        if len(state) >= 7:
            sub, names, fields, elsize = state[2], state[3], state[4], state[5]
        elif len(state) == 6:
            sub, names, fields, elsize = state[2], None, state[3], state[4]
        else:
            sub, names, fields, elsize = state[2], None, None, state[3]
        meta = state[8] if len(state) == 9 else None
        if sub is not None or names is not None or fields is not None or meta not in (None, {}):
            raise _Refused("refusing a dtype with sub-arrays, fields or metadata")
        if not isinstance(elsize, int) or elsize not in (-1, self._dtype.itemsize):
            raise _Refused(f"dtype state size {elsize!r} does not match {self._dtype}")
        if endian not in ("<", ">", "=", "|"):
            raise _Refused(f"malformed dtype byte order {endian!r}")
        if endian in "<>" and self._dtype.byteorder != "|":
            self._dtype = self._dtype.newbyteorder(endian)

    def __reduce__(self):
        raise TypeError("not picklable")

    @property
    def dtype(self) -> np.dtype:
        return self._dtype


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _DtypeSpec):
        raise _Refused(f"expected a dtype, got {type(value).__name__}")
    return value.dtype


def _check_shape(shape: Any) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM:
        raise _Refused(f"malformed array shape {shape!r:.80}")
    size = 1
    for s in shape:
        if type(s) is not int or s < 0:
            raise _Refused(f"malformed array shape {shape!r:.80}")
        size *= s
        if size > MAX_ELEMENTS:
            raise _Refused(f"array of shape {shape!r:.80} is larger than {MAX_ELEMENTS} elements")
    return shape, size


def _raw_bytes(data: Any) -> bytes:
    if isinstance(data, str):             # Python 2 str, decoded as latin-1 by the unpickler
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise _Refused(f"array data must be bytes, got {type(data).__name__}")


class _CheckedArray(np.ndarray):
    """The array ``_reconstruct`` hands to BUILD: validates the pickled state before numpy uses it.

    :func:`to_plain` turns it into a plain ``np.ndarray`` (a view of the same memory).
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("malformed array state")
        if len(state) == 5:
            state = state[1:]
        shape, size = _check_shape(state[0])
        dtype = _as_dtype(state[1])
        fortran = state[2]
        if type(fortran) not in (bool, int):
            raise _Refused("malformed array state (order flag)")
        data = state[3]
        if dtype.hasobject:
            # one Python object per element, never raw bytes (those would be read as object pointers)
            if dtype != np.dtype(object) or type(data) is not list or len(data) != size:
                raise _Refused("refusing an object array that is not a list of its elements")
        else:
            data = _raw_bytes(data)
            if len(data) != size * dtype.itemsize:
                raise _Refused(f"array data holds {len(data)} bytes, shape {shape} of {dtype} needs "
                               f"{size * dtype.itemsize}")
        np.ndarray.__setstate__(self, (shape, dtype, bool(fortran), data))

    def __reduce__(self):
        raise TypeError("not picklable")


class _NdarrayMarker:
    """What the global ``numpy.ndarray`` resolves to: only usable as ``_reconstruct``'s first argument."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("refusing a direct numpy.ndarray(...) call (numpy never pickles arrays that way)")

    def __setstate__(self, state: Any) -> None:
        raise _Refused("refusing to set state on numpy.ndarray")

    def __reduce__(self):
        raise TypeError("not picklable")


_NDARRAY = _NdarrayMarker()


def _checked_reconstruct(subtype: Any, shape: Any, code: Any) -> _CheckedArray:
    """``numpy.core.multiarray._reconstruct``: an empty placeholder whose BUILD state is checked."""
    if subtype is not _NDARRAY:
        raise _Refused(f"refusing to reconstruct an array of type {type(subtype).__name__}")
    _, size = _check_shape(shape)
    if size > 16 or code not in (b"b", "b"):
        raise _Refused("malformed array reconstruction arguments")
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _checked_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: a numpy scalar of a plain dtype from exactly its bytes."""
    dt = _as_dtype(dtype)
    if dt.hasobject:
        raise _Refused("refusing an object-dtype numpy scalar")
    raw = _raw_bytes(data)
    if len(raw) != dt.itemsize:
        raise _Refused(f"scalar of {dt} needs {dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt, count=1)[0]


def _checked_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (protocol-5 pickles): plain dtypes, exact sizes, a copy."""
    dt = _as_dtype(dtype)
    if dt.hasobject:
        raise _Refused("refusing an object-dtype array from a buffer")
    shape, size = _check_shape(shape)
    raw = _raw_bytes(buf)
    if len(raw) != size * dt.itemsize or order not in ("C", "F"):
        raise _Refused("malformed array buffer")
    return np.frombuffer(raw, dtype=dt, count=size).reshape(shape, order=order).copy()


def _checked_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 uses it for bytes at protocol 2: latin-1 of a str only."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1",
                                                                                      "iso-8859-1"):
        raise _Refused("refusing _codecs.encode other than str -> latin-1 bytes")
    return obj.encode("latin1")


# (module, name) as Python 3's unpickler sees them after fix_imports -> the checked stand-in
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {}
for _core in ("numpy.core", "numpy._core"):
    _NUMPY_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _checked_reconstruct
    _NUMPY_GLOBALS[(f"{_core}.multiarray", "scalar")] = _checked_scalar
    _NUMPY_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _checked_frombuffer
_NUMPY_GLOBALS[("numpy", "ndarray")] = _NDARRAY
_NUMPY_GLOBALS[("numpy", "dtype")] = _DtypeSpec


class NumpyUnpickler(pickle.Unpickler):
    """Admits only numpy's array reconstruction (checked stand-ins, see the module docstring) and
    ``_codecs.encode`` to latin-1: enough for the pickle numpy writes for an object ``.npy`` array.

    ``path`` and ``member`` name the source in errors.
    """

    def __init__(self, file: BinaryIO, path: str | os.PathLike | None = None, member: str = "pickle") -> None:
        super().__init__(file, encoding="latin1", fix_imports=True)
        self._path = path
        self._member = member

    def _refuse(self, module: str, name: str) -> Any:
        raise _Refused(f"refusing to load {module}.{name}: not an array, sparse matrix or chumpy object "
                       "(model and motion files contain nothing else)")

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if module == "_codecs" and name == "encode":
            return _checked_encode
        return self._refuse(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("refusing a persistent id")


# -- SMPL-family stand-ins ------------------------------------------------------------------------------
class _PickledState:
    """Keeps the state a pickle hands to ``__setstate__`` (in ``_state``) and the constructor args."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}

    def __reduce__(self):  # never re-pickle a stand-in by accident
        raise TypeError("stand-ins are not picklable; call to_plain() first")


class ChumpyStandIn(_PickledState):
    """Holds the pickled state of one chumpy object (class name in ``_chumpy_class``)."""

    _chumpy_class = "chumpy.ch.Ch"


class SparseStandIn(_PickledState):
    """Holds the pickled state of one scipy.sparse matrix (format in ``_sparse_format``)."""

    _sparse_format = "csc"


_BUILTINS_ALLOWED = {"set", "frozenset", "dict", "list", "tuple", "object", "slice", "complex",
                     "int", "float", "bool", "str"}
_SPARSE_FORMATS = ("csc", "csr", "coo")


def _no_size_alloc(kind: type) -> Callable[..., Any]:
    def make(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise _Refused(f"refusing {kind.__name__}(int) (a size-only allocation)")
        return kind(*args)

    return make


class RestrictedUnpickler(NumpyUnpickler):
    """An unpickler that only builds checked arrays, sparse matrices, chumpy stand-ins and plain builtins."""

    def __init__(self, file: BinaryIO, path: str | os.PathLike | None = None, member: str = "pickle") -> None:
        super().__init__(file, path, member)
        self._classes: dict[tuple[str, str], type] = {}     # fresh stand-in classes per load

    def _stand_in(self, base: type, module: str, name: str, attrs: dict[str, str]) -> type:
        key = (module, name)
        if key not in self._classes:
            self._classes[key] = type(f"{base.__name__}_{name}", (base,), attrs)
        return self._classes[key]

    def _reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        """``copyreg._reconstructor`` as protocol-2 pickles use it: ``object.__new__(stand-in class)``."""
        if base is not object or state is not None or cls not in self._classes.values():
            raise _Refused("refusing copyreg._reconstructor other than for a chumpy/sparse object")
        return object.__new__(cls)

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if module == "chumpy" or module.startswith("chumpy."):
            return self._stand_in(ChumpyStandIn, module, name, {"_chumpy_class": f"{module}.{name}"})
        if module.startswith("scipy.sparse"):
            for fmt in _SPARSE_FORMATS:
                if name in (f"{fmt}_matrix", f"{fmt}_array"):
                    return self._stand_in(SparseStandIn, "scipy.sparse", fmt, {"_sparse_format": fmt})
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":
            return self._reconstructor
        if module in ("builtins", "__builtin__"):
            import builtins

            if name in _BUILTINS_ALLOWED:
                return getattr(builtins, name)
            if name in ("bytes", "bytearray"):
                return _no_size_alloc(getattr(builtins, name))
        return super().find_class(module, name)


# -- turning stand-ins into arrays ----------------------------------------------------------------------
_PLAIN_SCALARS = (str, bytes, int, float, complex, bool, type(None))


def check_plain(obj: Any, depth: int = 0) -> None:
    """Raise ``ValueError`` unless ``obj`` is built only of builtin str/bytes/numbers/None and
    lists/tuples/dicts of them (at most :data:`MAX_DEPTH` deep). numpy str/bytes/number scalars (made by the
    checked ``scalar``) count as their builtin kind."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if isinstance(obj, _PLAIN_SCALARS) or (isinstance(obj, np.generic) and obj.dtype.kind in "biufcSU"):
        return
    if type(obj) in (list, tuple):
        for v in obj:
            check_plain(v, depth + 1)
        return
    if type(obj) is dict:
        for k, v in obj.items():
            check_plain(k, depth + 1)
            check_plain(v, depth + 1)
        return
    raise ValueError(f"holds a {type(obj).__module__}.{type(obj).__name__}, not a plain value")


def _numeric(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected numbers, got dtype {arr.dtype}")
    return arr


def _bounded(n: int, what: str) -> None:
    if n > MAX_ELEMENTS:
        raise ValueError(f"{what} would hold {n} elements (more than {MAX_ELEMENTS})")


class _Converter:
    """:func:`to_plain` with a memo (shared references are converted once: no exponential blow-up from a
    pickle's memo) and a depth bound (cycles and deep nesting end as an error)."""

    def __init__(self) -> None:
        self._memo: dict[int, Any] = {}
        self._active: set[int] = set()

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        if isinstance(obj, (_DtypeSpec, _NdarrayMarker)) or callable(obj) and not isinstance(obj, np.ndarray):
            raise ValueError(f"holds a bare {type(obj).__name__}")
        if not isinstance(obj, (ChumpyStandIn, SparseStandIn, dict, list, tuple, set, frozenset, np.ndarray)):
            return obj
        key = id(obj)
        if key in self._memo:
            return self._memo[key]
        if key in self._active or depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} or refers to itself")
        self._active.add(key)
        try:
            out = self._convert(obj, depth + 1)
        finally:
            self._active.discard(key)
        self._memo[key] = out
        return out

    def _convert(self, obj: Any, depth: int) -> Any:
        if isinstance(obj, ChumpyStandIn):
            return self._chumpy(obj, depth)
        if isinstance(obj, SparseStandIn):
            return self._sparse(obj, depth)
        if isinstance(obj, np.ndarray):
            arr = obj.view(np.ndarray) if type(obj) is not np.ndarray else obj
            if arr.dtype.hasobject:
                out = np.empty(arr.shape, dtype=object)
                flat = out.reshape(-1)
                for i, v in enumerate(arr.reshape(-1)):
                    flat[i] = self(v, depth)
                return out
            return arr
        if isinstance(obj, dict):
            return {self(k, depth): self(v, depth) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self(v, depth) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self(v, depth) for v in obj)
        return type(obj)(self(v, depth) for v in obj)          # set / frozenset

    def _chumpy(self, obj: ChumpyStandIn, depth: int) -> np.ndarray:
        st = obj.__dict__.get("_state", {})
        if not isinstance(st, dict):
            raise ValueError("malformed chumpy state")
        cls = str(obj._chumpy_class).rsplit(".", 1)[-1]

        def sub(key: str) -> np.ndarray:
            if key not in st:
                raise ValueError(f"chumpy {cls} object without its '{key}' term")
            return _numeric(self(st[key], depth), f"chumpy {cls} term '{key}'")

        def arg(key: str) -> Any:
            if key not in st:
                raise ValueError(f"chumpy {cls} object without its '{key}' value")
            return self(st[key], depth)

        if cls == "Ch":
            if "x" not in st:
                raise ValueError("chumpy Ch object without its 'x' value")
            return np.asarray(self(st["x"], depth), dtype=np.float64)
        if cls == "Select":
            idxs = np.asarray(arg("idxs"))
            if idxs.dtype.kind not in "iu":
                raise ValueError(f"chumpy Select indices of dtype {idxs.dtype}")
            r = sub("a").ravel()[idxs].copy()
            return r.reshape(arg("preferred_shape")) if "preferred_shape" in st else r
        if cls == "transpose":
            return np.ascontiguousarray(np.transpose(sub("a"), axes=self(st.get("axes"), depth)))
        if cls == "Reshape":
            return sub("a").reshape(arg("newshape"))
        if cls == "swapaxes":
            return np.swapaxes(sub("a"), int(arg("axis1")), int(arg("axis2")))
        if cls == "rollaxis":
            return np.rollaxis(sub("a"), int(arg("axis")), int(st.get("start", 0)))
        if cls == "Tile":
            a, reps = sub("a"), np.asarray(arg("reps"))
            if reps.dtype.kind not in "iu" or reps.ndim > 1 or (reps < 0).any():
                raise ValueError("malformed chumpy Tile reps")
            _bounded(a.size * int(np.prod([int(r) for r in reps.ravel()], dtype=object)), "chumpy Tile")
            return np.tile(a, reps)
        if cls == "Repeat":
            a, repeats = sub("a"), np.asarray(arg("repeats"))
            if repeats.dtype.kind not in "iu" or (repeats < 0).any():
                raise ValueError("malformed chumpy Repeat repeats")
            _bounded(int(repeats.max(initial=0)) * a.size, "chumpy Repeat")   # an upper bound of the result
            return np.repeat(a, repeats, self(st.get("axis"), depth))
        if cls == "Concatenate":
            terms = st.get("dterms") or sorted((k for k in st if isinstance(k, str) and k.startswith("m")
                                                and k[1:].isdigit()), key=lambda k: int(k[1:]))
            if not isinstance(terms, (list, tuple)) or not all(isinstance(t, str) for t in terms):
                raise ValueError("malformed chumpy Concatenate terms")
            parts = [sub(t) for t in terms]
            _bounded(sum(p.size for p in parts), "chumpy Concatenate")
            return np.concatenate(parts, axis=int(st.get("axis", 0)))
        raise _Refused(f"unsupported chumpy class {obj._chumpy_class} (only Ch and reorderings can be "
                       "converted without chumpy)")

    def _sparse(self, obj: SparseStandIn, depth: int) -> Any:
        import scipy.sparse as sp

        st = obj.__dict__.get("_state", {})
        fmt = obj._sparse_format
        if not isinstance(st, dict):
            raise ValueError(f"malformed {fmt} sparse matrix state")
        shape = self(st.get("_shape", st.get("shape")), depth)
        if (not isinstance(shape, tuple) or len(shape) != 2
                or not all(type(s) is int and 0 <= s < 2 ** 31 for s in shape)):
            raise ValueError(f"malformed {fmt} sparse matrix shape {shape!r:.80}")
        _bounded(shape[0] * shape[1], f"{fmt} sparse matrix (dense)")

        def field(key: str, kinds: str) -> np.ndarray:
            if key not in st:
                raise ValueError(f"{fmt} sparse matrix without its '{key}' array")
            a = np.asarray(self(st[key], depth))
            if a.dtype.kind not in kinds or a.ndim != 1:
                raise ValueError(f"{fmt} sparse matrix '{key}' must be a 1-d array of numbers, got "
                                 f"{a.dtype} {a.shape}")
            return a

        data = field("data", "biuf")
        if fmt == "coo":
            row, col = field("row", "iu"), field("col", "iu")
            if not len(data) == len(row) == len(col):
                raise ValueError("coo sparse matrix arrays differ in length")
            if len(row) and (row.max() >= shape[0] or col.max() >= shape[1]):
                raise ValueError("coo sparse matrix index outside its shape")
            m = sp.coo_matrix((data, (row, col)), shape=shape)
        else:
            make = sp.csc_matrix if fmt == "csc" else sp.csr_matrix
            m = make((data, field("indices", "iu"), field("indptr", "iu")), shape=shape)
            m.check_format(full_check=True)      # indices inside the shape, indptr monotonic and complete
        return m


def to_plain(obj: Any, path: Any = None) -> Any:
    """Replace chumpy stand-ins by numpy arrays, sparse stand-ins by scipy matrices and checked arrays by
    plain ``np.ndarray``, recursively (shared objects once; cycles / nesting deeper than :data:`MAX_DEPTH`
    raise). Raises :class:`BadInputError` (``path``, field ``pickle``) on malformed stand-ins."""
    try:
        return _Converter()(obj)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure on untrusted state is bad input
        raise BadInputError(path, "pickle", _reason(exc)) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large to load"
    if isinstance(exc, _Refused):
        return str(exc)
    text = str(exc) or type(exc).__name__
    return f"malformed ({type(exc).__name__}: {text[:200]})"


def restricted_load(fh: BinaryIO, path: str | os.PathLike, member: str,
                    cls: type[NumpyUnpickler] = NumpyUnpickler) -> Any:
    """Run ``cls`` (an allow-list unpickler) over ``fh``; every failure -> BadInputError(path, member)."""
    try:
        return cls(fh, path, member).load()
    except BadInputError:
        raise
    except _Refused as exc:
        raise BadInputError(path, member, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, TypeError, RecursionError, ...
        raise BadInputError(path, member, f"not a readable pickle: {_reason(exc)}") from exc


def load_smpl_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SMPL-family ``.pkl`` without chumpy -> dict of numpy arrays (sparse stays scipy.sparse).

    Only what :class:`RestrictedUnpickler` admits is built (see the module docstring); nothing in the file
    runs. Raises FileNotFoundError for a missing file and :class:`BadInputError` naming the file and the
    member (``pickle`` while unpickling, then the top-level key being converted) for everything else:
    unreadable or truncated file, refused global, object array from raw bytes, malformed chumpy or sparse
    state, nesting or sizes over the bounds.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadInputError(path, "pickle", f"unreadable ({exc.strerror or exc})") from exc
    with fh:
        data = restricted_load(fh, path, "pickle", RestrictedUnpickler)
    if not isinstance(data, dict):
        raise BadInputError(path, "pickle", f"expected a dict of model arrays, got {type(data).__name__}")
    out: dict[str, Any] = {}
    conv = _Converter()
    for key, value in data.items():
        name = key if isinstance(key, str) else repr(key)[:40]
        try:
            out[name] = conv(value)
        except Exception as exc:  # noqa: BLE001 - any failure on untrusted state is bad input
            raise BadInputError(path, name, _reason(exc)) from exc
    return out


def read_npy_header(fh: BinaryIO, path: str | os.PathLike, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an ``.npy`` stream's header (numpy's own header parser: a bounded
    ``ast.literal_eval``, no pickle). Raises BadInputError(path, member) for a malformed header."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - ValueError, EOFError, zipfile/zlib errors on bad input
        raise BadInputError(path, member, f"unreadable or truncated array ({_reason(exc)})") from exc
    if len(shape) > _MAX_NDIM:
        raise BadInputError(path, member, f"{len(shape)} dimensions")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def read_npy(fh: BinaryIO, path: str | os.PathLike, member: str,
             object_loader: Callable[[bytes], Any] | None = None) -> Any:
    """One ``.npy`` member as a plain array, without numpy's pickle path.

    Arrays of a dtype without objects: exactly ``size * itemsize`` bytes after the header, as a writable
    ``np.ndarray`` (shape and order from the header; at most :data:`MAX_ELEMENTS` elements). Object arrays
    (numpy stores them as a pickle): refused unless ``object_loader`` is given, which gets the pickle's
    bytes (at most :data:`MAX_PICKLE_MEMBER_BYTES`). Raises BadInputError(path, member).
    """
    shape, fortran, dtype = read_npy_header(fh, path, member)
    if dtype.hasobject:
        if object_loader is None:
            raise BadInputError(path, member, "object array (a pickle): refused, expected plain numbers")
        raw = fh.read(MAX_PICKLE_MEMBER_BYTES + 1)
        if len(raw) > MAX_PICKLE_MEMBER_BYTES:
            raise BadInputError(path, member, f"pickled member larger than {MAX_PICKLE_MEMBER_BYTES} bytes")
        return object_loader(raw)
    try:
        _, size = _check_shape(shape)
    except _Refused as exc:
        raise BadInputError(path, member, str(exc)) from exc
    nbytes = size * dtype.itemsize
    buf = bytearray(nbytes)               # filled in place: the array owns writable memory, no extra copy
    view, got = memoryview(buf), 0
    try:
        while got < nbytes:
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    except Exception as exc:  # noqa: BLE001 - zlib / zipfile / OS errors on a damaged archive
        raise BadInputError(path, member, f"unreadable or truncated array ({_reason(exc)})") from exc
    finally:
        view.release()
    if got != nbytes:
        raise BadInputError(path, member, f"truncated array: {got} of {nbytes} bytes")
    return np.frombuffer(buf, dtype=dtype, count=size).reshape(shape, order="F" if fortran else "C")


def load_npz_restricted(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SMPL-family model ``.npz`` -> dict of member name (without ``.npy``) -> value.

    Every member must be an ``.npy`` array (any other member is refused, naming it). Plain arrays are read by
    :func:`read_npy` (no pickle). Object members (SMPL-X keeps e.g. name tables that way) go through
    :class:`RestrictedUnpickler`, the same allow-list as ``.pkl`` files, then :func:`to_plain`; nothing here
    calls ``np.load``, so numpy's pickle path is never reached. Raises FileNotFoundError for a missing file,
    BadInputError naming the file and member for everything else.
    """
    path = Path(path)
    out: dict[str, Any] = {}
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, EOFError, ValueError on a damaged file
        raise BadInputError(path, "npz", f"unreadable or truncated npz ({_reason(exc)})") from exc
    with zf:
        for info in zf.infolist():
            member = info.filename
            if not member.endswith(".npy") or info.is_dir():
                raise BadInputError(path, member, "not an .npy array member (an SMPL-family npz holds "
                                                  "nothing else): refused")
            key = member[:-4]

            def unpickle(raw: bytes, key: str = key) -> Any:
                obj = restricted_load(io.BytesIO(raw), path, key, RestrictedUnpickler)
                try:
                    return _Converter()(obj)
                except Exception as exc:  # noqa: BLE001 - any failure on untrusted state is bad input
                    raise BadInputError(path, key, _reason(exc)) from exc

            try:
                fh = zf.open(info)
            except Exception as exc:  # noqa: BLE001 - damaged / encrypted member
                raise BadInputError(path, key, f"unreadable member ({_reason(exc)})") from exc
            with fh:
                out[key] = read_npy(fh, path, key, object_loader=unpickle)
    return out
