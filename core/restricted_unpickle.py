"""An allow-list unpickler for the pickles inside untrusted ``.npy`` / ``.npz`` / ``.pkl`` files, and plain ``.npy``
reads that never reach numpy's pickle path (shared by AMASS reading and the SMPL-family model loaders).

A plain ``pickle.load`` would run whatever a file asks for. Every global a pickle names goes through an
allow-list, and every numpy object it builds is checked before numpy sees the file's bytes:

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
- ``_codecs.encode`` only with the latin-1 codec (how Python 3 writes bytes at protocol 2);
- anything else (``os.system``, ``posix.system``, ``builtins.exec``, ``builtins.eval``, ...) is refused.

:class:`NumpyUnpickler` admits exactly that; :class:`body.smpl_files.RestrictedUnpickler` extends it with the
SMPL-family stand-ins (chumpy, scipy.sparse, a few builtins). Every failure ends as :class:`BadInputError`
naming the file and the member (:func:`restricted_load`).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from typing import Any, BinaryIO, Callable

import numpy as np

from core.errors import BadInputError

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


class Refused(ValueError):
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
            raise Refused(f"refusing dtype {code!r} (only booleans, integers, floats, complex, bytes, str "
                           "and object arrays)")
        self._dtype = np.dtype(code)

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or not 5 <= len(state) <= 9:
            raise Refused("malformed dtype state")
        endian = state[1]
        if len(state) >= 7:
            sub, names, fields, elsize = state[2], state[3], state[4], state[5]
        elif len(state) == 6:
            sub, names, fields, elsize = state[2], None, state[3], state[4]
        else:
            sub, names, fields, elsize = state[2], None, None, state[3]
        meta = state[8] if len(state) == 9 else None
        if sub is not None or names is not None or fields is not None or meta not in (None, {}):
            raise Refused("refusing a dtype with sub-arrays, fields or metadata")
        if not isinstance(elsize, int) or elsize not in (-1, self._dtype.itemsize):
            raise Refused(f"dtype state size {elsize!r} does not match {self._dtype}")
        if endian not in ("<", ">", "=", "|"):
            raise Refused(f"malformed dtype byte order {endian!r}")
        if endian in "<>" and self._dtype.byteorder != "|":
            self._dtype = self._dtype.newbyteorder(endian)

    def __reduce__(self):
        raise TypeError("not picklable")

    @property
    def dtype(self) -> np.dtype:
        return self._dtype


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, _DtypeSpec):
        raise Refused(f"expected a dtype, got {type(value).__name__}")
    return value.dtype


def _check_shape(shape: Any) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM:
        raise Refused(f"malformed array shape {shape!r:.80}")
    size = 1
    for s in shape:
        if type(s) is not int or s < 0:
            raise Refused(f"malformed array shape {shape!r:.80}")
        size *= s
        if size > MAX_ELEMENTS:
            raise Refused(f"array of shape {shape!r:.80} is larger than {MAX_ELEMENTS} elements")
    return shape, size


def _raw_bytes(data: Any) -> bytes:
    if isinstance(data, str):             # Python 2 str, decoded as latin-1 by the unpickler
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise Refused(f"array data must be bytes, got {type(data).__name__}")


class _CheckedArray(np.ndarray):
    """The array ``_reconstruct`` hands to BUILD: validates the pickled state before numpy uses it.

    :func:`to_plain` turns it into a plain ``np.ndarray`` (a view of the same memory).
    """

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise Refused("malformed array state")
        if len(state) == 5:
            state = state[1:]
        shape, size = _check_shape(state[0])
        dtype = _as_dtype(state[1])
        fortran = state[2]
        if type(fortran) not in (bool, int):
            raise Refused("malformed array state (order flag)")
        data = state[3]
        if dtype.hasobject:
            # one Python object per element, never raw bytes (those would be read as object pointers)
            if dtype != np.dtype(object) or type(data) is not list or len(data) != size:
                raise Refused("refusing an object array that is not a list of its elements")
        else:
            data = _raw_bytes(data)
            if len(data) != size * dtype.itemsize:
                raise Refused(f"array data holds {len(data)} bytes, shape {shape} of {dtype} needs "
                               f"{size * dtype.itemsize}")
        np.ndarray.__setstate__(self, (shape, dtype, bool(fortran), data))

    def __reduce__(self):
        raise TypeError("not picklable")


class _NdarrayMarker:
    """What the global ``numpy.ndarray`` resolves to: only usable as ``_reconstruct``'s first argument."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise Refused("refusing a direct numpy.ndarray(...) call (numpy never pickles arrays that way)")

    def __setstate__(self, state: Any) -> None:
        raise Refused("refusing to set state on numpy.ndarray")

    def __reduce__(self):
        raise TypeError("not picklable")


_NDARRAY = _NdarrayMarker()


def _checked_reconstruct(subtype: Any, shape: Any, code: Any) -> _CheckedArray:
    """``numpy.core.multiarray._reconstruct``: an empty placeholder whose BUILD state is checked."""
    if subtype is not _NDARRAY:
        raise Refused(f"refusing to reconstruct an array of type {type(subtype).__name__}")
    _, size = _check_shape(shape)
    if size > 16 or code not in (b"b", "b"):
        raise Refused("malformed array reconstruction arguments")
    return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _checked_scalar(dtype: Any, data: Any = None) -> Any:
    """``numpy.core.multiarray.scalar``: a numpy scalar of a plain dtype from exactly its bytes."""
    dt = _as_dtype(dtype)
    if dt.hasobject:
        raise Refused("refusing an object-dtype numpy scalar")
    raw = _raw_bytes(data)
    if len(raw) != dt.itemsize:
        raise Refused(f"scalar of {dt} needs {dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt, count=1)[0]


def _checked_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    """``numpy.core.numeric._frombuffer`` (protocol-5 pickles): plain dtypes, exact sizes, a copy."""
    dt = _as_dtype(dtype)
    if dt.hasobject:
        raise Refused("refusing an object-dtype array from a buffer")
    shape, size = _check_shape(shape)
    raw = _raw_bytes(buf)
    if len(raw) != size * dt.itemsize or order not in ("C", "F"):
        raise Refused("malformed array buffer")
    return np.frombuffer(raw, dtype=dt, count=size).reshape(shape, order=order).copy()


def _checked_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 uses it for bytes at protocol 2: latin-1 of a str only."""
    if not isinstance(obj, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1",
                                                                                      "iso-8859-1"):
        raise Refused("refusing _codecs.encode other than str -> latin-1 bytes")
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
        raise Refused(f"refusing to load {module}.{name}: not an array, sparse matrix or chumpy object "
                       "(model and motion files contain nothing else)")

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        if (module, name) in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[(module, name)]
        if module == "_codecs" and name == "encode":
            return _checked_encode
        return self._refuse(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("refusing a persistent id")



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


def numeric_array(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what}: expected numbers, got dtype {arr.dtype}")
    return arr


def check_bounded(n: int, what: str) -> None:
    if n > MAX_ELEMENTS:
        raise ValueError(f"{what} would hold {n} elements (more than {MAX_ELEMENTS})")


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, MemoryError):
        return "too large to load"
    if isinstance(exc, Refused):
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
    except Refused as exc:
        raise BadInputError(path, member, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, TypeError, RecursionError, ...
        raise BadInputError(path, member, f"not a readable pickle: {failure_reason(exc)}") from exc


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
        raise BadInputError(path, member, f"unreadable or truncated array ({failure_reason(exc)})") from exc
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
    except Refused as exc:
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
        raise BadInputError(path, member, f"unreadable or truncated array ({failure_reason(exc)})") from exc
    finally:
        view.release()
    if got != nbytes:
        raise BadInputError(path, member, f"truncated array: {got} of {nbytes} bytes")
    return np.frombuffer(buf, dtype=dtype, count=size).reshape(shape, order="F" if fortran else "C")


#: the stand-ins a pickle's numpy globals resolve to: never a value of a loaded file on their own
BARE_STAND_INS = (_DtypeSpec, _NdarrayMarker)
