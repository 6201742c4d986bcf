"""Reading SMPL-family model files (``.pkl`` and ``.npz``) without ``chumpy`` and without running their code.

The official SMPL-family pickles (Python 2, protocol 2) store several arrays (``v_template``, ``shapedirs``,
``posedirs``, ``weights``, ``J``) as ``chumpy`` objects and ``J_regressor`` as a ``scipy.sparse`` matrix.
``chumpy`` no longer imports with current numpy, and a plain ``pickle.load`` would run whatever a file asks
for. Model files are untrusted input, so they are read with :class:`RestrictedUnpickler`: the checked numpy
reconstruction of :mod:`lavimo.core.restricted_unpickle` (see its docstring: allow-listed dtypes, validated array
states, no object arrays from raw bytes, no direct ``numpy.ndarray(...)`` calls) plus

- ``chumpy.*`` classes map to a fresh stand-in class per load that keeps their pickled state;
  :class:`_Converter` then evaluates it to a numpy array (a ``Ch`` is its ``x``; reorderings are replayed
  with numpy, with output sizes bounded);
- ``scipy.sparse`` csc/csr/coo matrices map to a stand-in rebuilt as a real scipy matrix from its arrays,
  after a full format check (indices within the shape, monotonic ``indptr``, numeric arrays);
- ``copyreg._reconstructor`` only for ``(stand-in class, object, None)``; the builtins ``set``, ``frozenset``,
  ``dict``, ``list``, ``tuple``, ``object``, ``slice``, ``complex``, ``int``, ``float``, ``bool``, ``str`` and
  ``bytes``/``bytearray`` (not from an int: no size-only allocations); anything else is refused as there.

Memory is bounded per file: every array built (unpickled, converted from chumpy, a sparse matrix at its dense
size, an npz member) is charged, before it is allocated, to one :class:`lavimo.core.restricted_unpickle.ByteBudget` of
:data:`lavimo.core.restricted_unpickle.MAX_MODEL_FILE_BYTES` (1 GiB; a real model holds 100-300 MB of arrays).

Every failure (refused global, malformed state, chumpy object without its terms, cycles, too deep nesting,
sizes over the bounds or the budget) ends as :class:`BadInputError` naming the file and the member (the npz member, or the
pickle's top-level key once known, else ``pickle``).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from lavimo.core.errors import BadInputError
from lavimo.core.restricted_unpickle import (
    BARE_STAND_INS, MAX_DEPTH, MAX_MODEL_FILE_BYTES, ByteBudget, NumpyUnpickler, Refused, check_bounded,
    failure_reason, numeric_array, open_npz, read_npz_member, restricted_load, take_bytes,
)

log = logging.getLogger(__name__)


# -- SMPL-family stand-ins ------------------------------------------------------------------------------
class _PickledState:
    """Keeps the state a pickle hands to ``__setstate__`` (in ``_state``) and the constructor args."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_raw": state}

    def __reduce__(self):  # never re-pickle a stand-in by accident
        raise TypeError("stand-ins are not picklable; convert them first")


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
            raise Refused(f"refusing {kind.__name__}(int) (a size-only allocation)")
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
            raise Refused("refusing copyreg._reconstructor other than for a chumpy/sparse object")
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


#: most numbers a list / tuple in a model pickle may hold where an array is expected (real files store arrays)
_MAX_LIST_ELEMENTS = 1 << 24


def _as_array(value: Any, what: str) -> np.ndarray:
    """``np.asarray(value)`` with its cost counted first: an array is used as it is (already charged when it was
    built); a list / tuple (which a pickle can make of many references to one large array) is walked, its
    numbers counted (at most :data:`_MAX_LIST_ELEMENTS`) and charged to the active budget before numpy
    allocates the result."""
    if isinstance(value, np.ndarray):
        return value
    n, stack = 0, [value]
    while stack:
        x = stack.pop()
        if isinstance(x, (list, tuple)):
            stack.extend(x)
        else:
            n += x.size if isinstance(x, np.ndarray) else 1
        if n > _MAX_LIST_ELEMENTS or len(stack) > _MAX_LIST_ELEMENTS:
            raise Refused(f"{what}: a list of more than {_MAX_LIST_ELEMENTS} numbers")
    take_bytes(n * 8, what)
    return np.asarray(value)


class _Converter:
    """Stand-ins -> numpy arrays / scipy matrices, checked arrays -> plain ``np.ndarray``, recursively, with a
    memo (shared references converted once: no exponential blow-up from a pickle's memo) and a depth bound
    (cycles and deep nesting end as an error)."""

    def __init__(self) -> None:
        self._memo: dict[int, Any] = {}
        self._active: set[int] = set()

    def __call__(self, obj: Any, depth: int = 0) -> Any:
        if isinstance(obj, BARE_STAND_INS) or callable(obj) and not isinstance(obj, np.ndarray):
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
            what = f"chumpy {cls} term '{key}'"
            return numeric_array(_as_array(self(st[key], depth), what), what)

        def arg(key: str) -> Any:
            if key not in st:
                raise ValueError(f"chumpy {cls} object without its '{key}' value")
            return self(st[key], depth)

        if cls == "Ch":
            if "x" not in st:
                raise ValueError("chumpy Ch object without its 'x' value")
            x = _as_array(self(st["x"], depth), "chumpy Ch")
            if x.dtype != np.float64:
                take_bytes(x.size * 8, "chumpy Ch")
            return np.asarray(x, dtype=np.float64)
        if cls == "Select":
            idxs, a = _as_array(arg("idxs"), "chumpy Select indices"), sub("a")
            if idxs.dtype.kind not in "iu":
                raise ValueError(f"chumpy Select indices of dtype {idxs.dtype}")
            check_bounded(idxs.size, "chumpy Select")
            take_bytes(idxs.size * a.itemsize, "chumpy Select")
            r = a.ravel()[idxs].copy()
            return r.reshape(arg("preferred_shape")) if "preferred_shape" in st else r
        if cls == "transpose":
            a = sub("a")
            take_bytes(a.nbytes, "chumpy transpose")
            return np.ascontiguousarray(np.transpose(a, axes=self(st.get("axes"), depth)))
        if cls == "Reshape":
            return sub("a").reshape(arg("newshape"))
        if cls == "swapaxes":
            return np.swapaxes(sub("a"), int(arg("axis1")), int(arg("axis2")))
        if cls == "rollaxis":
            return np.rollaxis(sub("a"), int(arg("axis")), int(st.get("start", 0)))
        if cls == "Tile":
            a, reps = sub("a"), _as_array(arg("reps"), "chumpy Tile reps")
            if reps.dtype.kind not in "iu" or reps.ndim > 1 or (reps < 0).any():
                raise ValueError("malformed chumpy Tile reps")
            n = a.size * int(np.prod([int(r) for r in reps.ravel()], dtype=object))
            check_bounded(n, "chumpy Tile")
            take_bytes(n * a.itemsize, "chumpy Tile")
            return np.tile(a, reps)
        if cls == "Repeat":
            a, repeats = sub("a"), _as_array(arg("repeats"), "chumpy Repeat repeats")
            if repeats.dtype.kind not in "iu" or (repeats < 0).any():
                raise ValueError("malformed chumpy Repeat repeats")
            n = int(repeats.max(initial=0)) * a.size             # an upper bound of the result
            check_bounded(n, "chumpy Repeat")
            take_bytes(n * a.itemsize, "chumpy Repeat")
            return np.repeat(a, repeats, self(st.get("axis"), depth))
        if cls == "Concatenate":
            terms = st.get("dterms") or sorted((k for k in st if isinstance(k, str) and k.startswith("m")
                                                and k[1:].isdigit()), key=lambda k: int(k[1:]))
            if not isinstance(terms, (list, tuple)) or not all(isinstance(t, str) for t in terms):
                raise ValueError("malformed chumpy Concatenate terms")
            parts = [sub(t) for t in terms]
            check_bounded(sum(p.size for p in parts), "chumpy Concatenate")
            take_bytes(sum(p.nbytes for p in parts), "chumpy Concatenate")
            return np.concatenate(parts, axis=int(st.get("axis", 0)))
        raise Refused(f"unsupported chumpy class {obj._chumpy_class} (only Ch and reorderings can be "
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
        check_bounded(shape[0] * shape[1], f"{fmt} sparse matrix (dense)")
        take_bytes(shape[0] * shape[1] * 8, f"{fmt} sparse matrix (made dense for the model)")

        def field(key: str, kinds: str) -> np.ndarray:
            if key not in st:
                raise ValueError(f"{fmt} sparse matrix without its '{key}' array")
            a = _as_array(self(st[key], depth), f"{fmt} sparse matrix '{key}'")
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


def load_smpl_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SMPL-family ``.pkl`` without chumpy -> dict of numpy arrays (sparse stays scipy.sparse), under
    the rules and the one budget of the module docstring; nothing in the file runs. FileNotFoundError for a
    missing file; BadInputError naming the file and member (``pickle``, then the top-level key) for the rest."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise BadInputError(path, "pickle", f"unreadable ({exc.strerror or exc})") from exc
    budget = ByteBudget(MAX_MODEL_FILE_BYTES)
    with fh:
        data = restricted_load(fh, path, "pickle", RestrictedUnpickler, budget)
    if not isinstance(data, dict):
        raise BadInputError(path, "pickle", f"expected a dict of model arrays, got {type(data).__name__}")
    out: dict[str, Any] = {}
    conv = _Converter()
    with budget.active():
        for key, value in data.items():
            name = key if isinstance(key, str) else repr(key)[:40]
            try:
                out[name] = conv(value)
            except Exception as exc:  # noqa: BLE001 - any failure on untrusted state is bad input
                raise BadInputError(path, name, failure_reason(exc)) from exc
    return out


def load_npz_restricted(path: str | os.PathLike) -> dict[str, Any]:
    """Read an SMPL-family model ``.npz`` -> {member name without ``.npy``: value}; never ``np.load``.

    Only ``.npy`` members (others refused, named). Plain arrays: :func:`read_npz_member` (header checked against
    the zip's declared bytes before allocating). Object members (SMPL-X's name tables): the ``.pkl`` allow-list
    (:class:`RestrictedUnpickler`), then converted. One budget of :data:`MAX_MODEL_FILE_BYTES` for all arrays.
    FileNotFoundError for a missing file, BadInputError naming the file and member for everything else.
    """
    path = Path(path)
    out: dict[str, Any] = {}
    budget = ByteBudget(MAX_MODEL_FILE_BYTES)
    with open_npz(path) as zf:
        for info in zf.infolist():
            member = info.filename
            if not member.endswith(".npy") or info.is_dir():
                raise BadInputError(path, member, "not an .npy array member (an SMPL-family npz holds "
                                                  "nothing else): refused")
            key = member[:-4]

            def unpickle(raw: bytes, key: str = key) -> Any:
                obj = restricted_load(io.BytesIO(raw), path, key, RestrictedUnpickler, budget)
                try:
                    with budget.active():
                        return _Converter()(obj)
                except Exception as exc:  # noqa: BLE001 - any failure on untrusted state is bad input
                    raise BadInputError(path, key, failure_reason(exc)) from exc

            out[key] = read_npz_member(zf, path, key, object_loader=unpickle, max_bytes=MAX_MODEL_FILE_BYTES,
                                       budget=budget)
    return out
