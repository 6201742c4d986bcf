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

:class:`NumpyUnpickler` admits exactly that; :class:`lavimo.body.smpl_files.RestrictedUnpickler` extends it with the
SMPL-family stand-ins (chumpy, scipy.sparse, a few builtins). Every failure ends as :class:`BadInputError`
naming the file and the member (:func:`restricted_load`).
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import pickle
import re
import zipfile
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np

from lavimo.core.errors import BadInputError

log = logging.getLogger(__name__)

#: Largest array (elements) any loader here builds; SMPL-X's posedirs, the largest, holds ~15.3 M.
MAX_ELEMENTS = 1 << 28
#: Deepest nesting of containers / chumpy terms the body-model converter follows.
MAX_DEPTH = 64
#: Largest pickled (object) ``.npy`` member of an npz that is unpickled at all.
MAX_PICKLE_MEMBER_BYTES = 64 << 20
#: ``.npy`` members never name more than 32 dimensions (numpy's own limit is 64).
_MAX_NDIM = 32
#: Largest single array (bytes) read from an untrusted file: 1 GiB, 8x the largest real one (SMPL-X's ``posedirs``,
#: 10475 x 3 x 486 float64, 122 MB; a 10-minute AMASS take at 120 fps: 95 MB).
MAX_ARRAY_BYTES = 1 << 30
#: Total bytes of the arrays one body-model file (``.pkl`` or ``.npz``) may make us build, whatever their number:
#: 1 GiB, 3x a real SMPL-family model's 100-300 MB; a 1 KB pickle of many bounded arrays stops here.
MAX_MODEL_FILE_BYTES = 1 << 30
#: what :func:`read_npy` reads at a time
_READ_CHUNK = 1 << 22

# dtype type codes a pickle may ask for (what numpy's dtype.__reduce__ writes for plain dtypes)
_DTYPE_CODE = re.compile(r"(b1|\?|[iu][1248]|f[248]|c(8|16)|O[48]?|[SU][1-9][0-9]{0,6})\Z")


#: the first torch whose ``torch.load(weights_only=True)`` a crafted file cannot make run code (CVE-2025-32434:
#: remote code execution through the weights-only loader in torch <= 2.5.1)
SAFE_TORCH_LOAD = (2, 6)


def torch_load_tensors(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """The tensors and plain containers of a pickled torch file (``.pt`` / ``.bin``), read with
    ``torch.load(weights_only=True)`` on the CPU; never unpickles an object or runs code. Refused (BadInputError
    naming the file) on a torch older than :data:`SAFE_TORCH_LOAD`, whose weights-only loader a crafted file can
    escape. Other failures of the loader propagate as torch raises them."""
    import torch

    version = tuple(int(x) for x in re.findall(r"\d+", torch.__version__)[:2])
    if version < SAFE_TORCH_LOAD:
        raise BadInputError(path, None, f"not read with torch {torch.__version__}: before "
                                        f"{'.'.join(map(str, SAFE_TORCH_LOAD))} its weights-only loader can run code "
                                        f"from a crafted file (CVE-2025-32434); upgrade torch or use .safetensors")
    return torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=mmap)


class Refused(ValueError):
    """Raised inside the unpickler; turned into BadInputError(path, member, message) at the load boundary."""


#: the :class:`ByteBudget` of the file being loaded (set by :func:`restricted_load` / the body-model loaders)
_ACTIVE_BUDGET: contextvars.ContextVar[Any] = contextvars.ContextVar("lavimo_byte_budget", default=None)


def take_bytes(nbytes: int, what: str) -> None:
    """Charge ``nbytes`` (about to be allocated for ``what``) to the active :class:`ByteBudget`, if any; raises
    :class:`Refused` past its limit."""
    budget = _ACTIVE_BUDGET.get()
    if budget is not None:
        budget.take(nbytes, what)


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


def _check_shape(shape: Any, max_elements: int = MAX_ELEMENTS) -> tuple[tuple[int, ...], int]:
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM:
        raise Refused(f"malformed array shape {shape!r:.80}")
    size = 1
    for s in shape:
        if type(s) is not int or s < 0:
            raise Refused(f"malformed array shape {shape!r:.80}")
        size *= s
        if size > max_elements:
            raise Refused(f"array of shape {shape!r:.80} is larger than {max_elements} elements")
    return shape, size


def _raw_bytes(data: Any) -> bytes:
    if isinstance(data, str):             # Python 2 str, decoded as latin-1 by the unpickler
        return data.encode("latin1")
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    raise Refused(f"array data must be bytes, got {type(data).__name__}")


class _CheckedArray(np.ndarray):
    """The array ``_reconstruct`` hands to BUILD: validates the pickled state before numpy uses it.

    Converted to a plain ``np.ndarray`` (a view of the same memory) after loading.
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
        take_bytes(size * dtype.itemsize, f"array of shape {shape}")
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
    take_bytes(size * dt.itemsize, f"array of shape {shape}")
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
                    cls: type[NumpyUnpickler] = NumpyUnpickler, budget: "ByteBudget | None" = None) -> Any:
    """Run ``cls`` (an allow-list unpickler) over ``fh``; every failure -> BadInputError(path, member). The
    arrays it builds are charged to ``budget`` (default: a fresh one of :data:`MAX_MODEL_FILE_BYTES`)."""
    try:
        with (budget or ByteBudget(MAX_MODEL_FILE_BYTES)).active():
            return cls(fh, path, member).load()
    except BadInputError:
        raise
    except Refused as exc:
        raise BadInputError(path, member, str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, EOFError, TypeError, RecursionError, ...
        raise BadInputError(path, member, f"not a readable pickle: {failure_reason(exc)}") from exc


class _Bounded:
    """A read-only view of ``fh`` yielding at most ``limit`` bytes, counted in ``pos``: read through
    ``_Bounded(fh, n + 1)``, a stream declared ``n`` bytes long is never consumed (or decompressed) further."""

    def __init__(self, fh: BinaryIO, limit: int) -> None:
        self._fh = fh
        self.left = limit
        self.pos = 0

    def read(self, n: int | None = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        if n <= 0:
            return b""
        data = self._fh.read(n)
        self.left -= len(data)
        self.pos += len(data)
        return data


#: the longest ``.npy`` header read (bytes; numpy writes ~128 for a plain array): a version-2 header may declare a
#: length of up to 4 GiB, which a deflated member can really produce, so the length is checked before reading it
MAX_NPY_HEADER_BYTES = 1 << 16


def read_npy_header(fh: BinaryIO, path: str | os.PathLike, member: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an ``.npy`` stream's header (numpy's bounded parser, no pickle), its
    declared length checked (<= :data:`MAX_NPY_HEADER_BYTES`) before it is read; consumes exactly magic, length
    and header. BadInputError(path, member) for a malformed, truncated or oversized header."""
    try:
        prefix = fh.read(10)  # magic (6) + version (2) + the first two bytes of the length
        if len(prefix) < 10 or prefix[:6] != b"\x93NUMPY":
            raise ValueError("not a .npy array (bad magic or truncated)")
        version = (prefix[6], prefix[7])
        if version == (1, 0):
            length = int.from_bytes(prefix[8:10], "little")
        elif version == (2, 0):
            more = fh.read(2)
            prefix += more
            length = int.from_bytes(prefix[8:12], "little")
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        if length > MAX_NPY_HEADER_BYTES:
            raise BadInputError(path, member, f"a .npy header of {length} bytes (at most {MAX_NPY_HEADER_BYTES})")
        header = fh.read(length)
        if len(header) != length:
            raise ValueError(f"truncated header: {len(header)} of {length} bytes")
        head = io.BytesIO(prefix + header)
        np.lib.format.read_magic(head)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(head, max_header_size=MAX_NPY_HEADER_BYTES)
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - ValueError, EOFError, zipfile/zlib errors on bad input
        raise BadInputError(path, member, f"unreadable or truncated array ({failure_reason(exc)})") from exc
    if len(shape) > _MAX_NDIM:
        raise BadInputError(path, member, f"{len(shape)} dimensions")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def check_declared(shape: tuple[int, ...], dtype: np.dtype, present: int, path: str | os.PathLike | None,
                   member: str, max_bytes: int = MAX_ARRAY_BYTES, max_elements: int = MAX_ELEMENTS
                   ) -> tuple[int, int]:
    """The rule of every untrusted ``.npy`` read, before anything is allocated: at most ``max_elements`` elements,
    ``size * itemsize`` equal to the ``present`` bytes and at most ``max_bytes``. (size, nbytes), or
    BadInputError(path, member)."""
    try:
        _, size = _check_shape(shape, max_elements)
    except Refused as exc:
        raise BadInputError(path, member, str(exc)) from exc
    expected = size * dtype.itemsize
    if expected != present:
        what = "truncated array" if present < expected else "array with trailing data"
        raise BadInputError(path, member, f"{what}: the header declares shape {shape} of {dtype} ({expected} "
                                          f"bytes), the member holds {max(present, 0)} bytes of data")
    if expected > max_bytes:
        raise BadInputError(path, member, f"array of {expected} bytes is larger than the {max_bytes}-byte "
                                          "budget per array")
    return size, expected


def _open_member(zf: zipfile.ZipFile, path: str | os.PathLike, key: str) -> tuple[zipfile.ZipInfo, BinaryIO]:
    """(the zip entry, an open stream) of the npz member ``key.npy``; BadInputError(path, key) when it is missing,
    encrypted or damaged."""
    try:
        info = zf.getinfo(f"{key}.npy")
    except KeyError:
        raise BadInputError(path, key, "missing key") from None
    try:
        return info, zf.open(info)
    except Exception as exc:  # noqa: BLE001 - damaged / encrypted member
        raise BadInputError(path, key, f"unreadable member ({failure_reason(exc)})") from exc


def read_npz_header(zf: zipfile.ZipFile, path: str | os.PathLike, key: str, max_bytes: int = MAX_ARRAY_BYTES,
                    max_elements: int = MAX_ELEMENTS) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of npz member ``key`` without reading its data, checked against the zip's
    declared size (:func:`check_declared`, plain dtypes) as :func:`read_npz_member` would."""
    info, fh = _open_member(zf, path, key)
    with fh:
        src = _Bounded(fh, info.file_size + 1)
        shape, fortran, dtype = read_npy_header(src, path, key)  # type: ignore[arg-type]
    if not dtype.hasobject:
        check_declared(shape, dtype, info.file_size - src.pos, path, key, max_bytes, max_elements)
    return shape, fortran, dtype


def read_npy(fh: BinaryIO, path: str | os.PathLike, member: str,
             object_loader: Callable[[bytes], Any] | None = None, *, nbytes: int,
             max_bytes: int = MAX_ARRAY_BYTES, budget: "ByteBudget | None" = None,
             max_elements: int = MAX_ELEMENTS) -> Any:
    """One ``.npy`` member of an untrusted file as a writable plain array, without numpy's pickle path: the one
    checked ``.npy`` reader (AMASS and body-model npz members, shard ``.npy`` members, ``stats.npz``).

    ``nbytes``: the member's size (header included) as its container declares it. Nothing is allocated until the
    header passes :func:`check_declared` against it (and ``budget``, when given, is charged); the data is then
    read incrementally (memory follows the bytes really produced, at most ``nbytes + 1`` read: a declared size
    can lie too) and must be exactly that long. Object arrays (a pickle): refused unless ``object_loader`` is
    given, which gets the pickle's bytes (at most :data:`MAX_PICKLE_MEMBER_BYTES`). Raises BadInputError(path,
    member).
    """
    src = _Bounded(fh, max(int(nbytes), 0) + 1)
    shape, fortran, dtype = read_npy_header(src, path, member)  # type: ignore[arg-type]
    present = int(nbytes) - src.pos
    try:
        if dtype.hasobject:
            if object_loader is None:
                raise BadInputError(path, member, "object array (a pickle): refused, expected plain numbers")
            if present > MAX_PICKLE_MEMBER_BYTES:
                raise BadInputError(path, member, f"pickled member of {present} bytes, larger than "
                                                  f"{MAX_PICKLE_MEMBER_BYTES}")
            raw = src.read(present + 1)
            if len(raw) != present:
                raise BadInputError(path, member, f"truncated or oversized pickled member: {len(raw)} bytes, "
                                                  f"{present} declared")
            return object_loader(raw)
        size, expected = check_declared(shape, dtype, present, path, member, max_bytes, max_elements)
        if budget is not None:
            budget.charge(expected, path, member)
        buf = bytearray()  # grown as bytes arrive (realloc, no extra copy): a lying size costs what is there
        while len(buf) < expected:
            chunk = src.read(min(_READ_CHUNK, expected - len(buf)))
            if not chunk:
                break
            buf += chunk
        if len(buf) != expected:
            raise BadInputError(path, member, f"truncated array: {len(buf)} of {expected} bytes")
        if src.read(1):
            raise BadInputError(path, member, f"more data than the {nbytes} bytes declared")
    except BadInputError:
        raise
    except Exception as exc:  # noqa: BLE001 - zlib / zipfile / OS errors on a damaged archive
        raise BadInputError(path, member, f"unreadable or truncated array ({failure_reason(exc)})") from exc
    return np.frombuffer(buf, dtype=dtype, count=size).reshape(shape, order="F" if fortran else "C")


def read_npy_bytes(data: bytes, path: str | os.PathLike | None, member: str,
                   max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """:func:`read_npy` of an in-memory ``.npy`` (e.g. a shard tar member): plain arrays only."""
    return read_npy(io.BytesIO(data), path, member, nbytes=len(data), max_bytes=max_bytes)


def read_npy_file(path: str | os.PathLike, member: str = "array", max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """:func:`read_npy` of a standalone ``.npy`` file (e.g. HumanML3D's ``new_joint_vecs/<keyid>.npy``, a motion
    query): plain arrays only, checked against the file's size before anything is allocated.
    ``FileNotFoundError`` when absent; BadInputError(path, member) for anything wrong with the content."""
    with open(path, "rb") as fh:
        return read_npy(fh, path, member, nbytes=os.fstat(fh.fileno()).st_size, max_bytes=max_bytes)


def open_npz(path: str | os.PathLike, source: str | os.PathLike | BinaryIO | None = None) -> zipfile.ZipFile:
    """``path`` (or the file object ``source``) as a zip archive; BadInputError(path, ``archive``) when it is not
    one."""
    try:
        return zipfile.ZipFile(path if source is None else source)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, OSError, EOFError, ValueError on a damaged file
        raise BadInputError(path, "archive", f"not an npz archive, or unreadable or truncated ({failure_reason(exc)})") from exc


def read_npz_member(zf: zipfile.ZipFile, path: str | os.PathLike, key: str,
                    object_loader: Callable[[bytes], Any] | None = None, *,
                    max_bytes: int = MAX_ARRAY_BYTES, budget: "ByteBudget | None" = None,
                    max_elements: int = MAX_ELEMENTS) -> Any:
    """npz member ``key`` (``key.npy``) through :func:`read_npy` against its declared uncompressed size;
    BadInputError(path, key): missing, encrypted, damaged, or any :func:`read_npy` refusal."""
    info, fh = _open_member(zf, path, key)
    with fh:
        return read_npy(fh, path, key, object_loader, nbytes=info.file_size, max_bytes=max_bytes, budget=budget,
                        max_elements=max_elements)


class ByteBudget:
    """A running total of the array bytes one untrusted file has made a reader build, refused past ``limit``
    (:data:`MAX_MODEL_FILE_BYTES` for a body model): each array is bounded on its own, their sum too."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, nbytes: int, what: str = "arrays") -> None:
        """Count ``nbytes`` more (before they are allocated); :class:`Refused` past the limit."""
        self.used += int(nbytes)
        if self.used > self.limit:
            raise Refused(f"{what}: the file's arrays would need {self.used} bytes, over the budget of "
                          f"{self.limit} bytes per file")

    def charge(self, nbytes: int, path: str | os.PathLike | None = None, member: str | None = None) -> None:
        """:meth:`take`, as BadInputError(path, member)."""
        try:
            self.take(nbytes, "array")
        except Refused as exc:
            raise BadInputError(path, member, str(exc)) from None

    @contextlib.contextmanager
    def active(self) -> Iterator[ByteBudget]:
        """Make this the budget :func:`take_bytes` charges while the block runs."""
        token = _ACTIVE_BUDGET.set(self)
        try:
            yield self
        finally:
            _ACTIVE_BUDGET.reset(token)


#: the stand-ins a pickle's numpy globals resolve to: never a value of a loaded file on their own
BARE_STAND_INS = (_DtypeSpec, _NdarrayMarker)
