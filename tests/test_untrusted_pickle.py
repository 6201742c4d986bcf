"""Untrusted AMASS and SMPL-family files: nothing in them runs, nothing crashes the process.

Every test writes its own crafted file. Code-execution attempts assert that a marker file does not appear and
that the BadInputError names the file and the member; the memory-safety vectors (object pointers from raw
bytes) run in a subprocess that must end with a clean BadInputError, not SIGSEGV.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lavimo.dataset.amass import load_amass, read_amass_header
from lavimo.core.errors import BadInputError
from lavimo.body.model import load_body
from lavimo.body.smpl_files import load_npz_restricted, load_smpl_pickle
from lavimo.core.restricted_unpickle import MAX_DEPTH
from tests.test_smpl_pickle import _fake_chumpy, _smpl_dict, _without_chumpy, _write_chumpy_pickle

ROOT = Path(__file__).resolve().parents[1]


# -- crafting ----------------------------------------------------------------------------------------------
def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _object_npy(payload: bytes, shape: tuple = ()) -> bytes:
    """An .npy member claiming an object array whose data is ``payload`` (numpy stores those as a pickle)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _write_npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _amass_members(**override: bytes) -> dict[str, bytes]:
    t = 6
    members = {"poses.npy": _npy(np.zeros((t, 156))), "trans.npy": _npy(np.zeros((t, 3))),
               "betas.npy": _npy(np.zeros(16)), "gender.npy": _npy(np.array("male")),
               "mocap_framerate.npy": _npy(np.array(120.0))}
    members.update({f"{k}.npy": v for k, v in override.items()})
    return members


class _Reduce:
    """Pickles as ``func(*args)``: the classic code-execution gadget."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker: Path) -> dict[str, bytes]:
    """Pickles that would touch ``marker`` if anything ran them."""
    touch = f"touch {marker}"
    return {
        "os.system": b"cos\nsystem\n(S'" + touch.encode() + b"'\ntR.",          # protocol 0, module 'os'
        "posix.system": pickle.dumps(_Reduce(os.system, touch), protocol=2),   # os.system pickles as posix
        "builtins.exec": pickle.dumps(_Reduce(exec, f"open({str(marker)!r}, 'w').close()"), protocol=4),
        "numpy runstring": b"cnumpy.testing._private.utils\nrunstring\n(S'open(\"" + str(marker).encode()
                           + b"\", \"w\").close()'\n(dtR.",
        # the evil call hidden as an element of a genuine object array
        "element": pickle.dumps(np.array([_Reduce(os.system, touch)], dtype=object), protocol=3),
    }


def _proto2_setitem(key: str, value_ops: bytes) -> bytes:
    """A protocol-2 pickle of ``{key: <value_ops>}``."""
    k = key.encode()
    return b"\x80\x02}" + b"X" + struct.pack("<I", len(k)) + k + value_ops + b"s."


# numpy's own globals abused: object dtype with raw bytes -> object pointers read from the file
_NDARRAY_OBJ_BUFFER = (b"cnumpy\nndarray\n(K\x02\x85cnumpy\ndtype\n(X\x02\x00\x00\x00O8K\x00K\x01tR"
                       b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tbC\x10"
                       + b"A" * 16 + b"tR")
_RECONSTRUCT_OBJ_BYTES = (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\nK\x00\x85C\x01btR"
                          b"(K\x01K\x02\x85cnumpy\ndtype\n(X\x02\x00\x00\x00O8K\x00K\x01tR"
                          b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb\x89C\x10"
                          + b"A" * 16 + b"tb")


def _run_isolated(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


def _isolated_bad_input(loader_dotted_name: str, path: Path) -> str:
    """Call ``loader_dotted_name`` (e.g. ``lavimo.dataset.amass.load_amass``) on ``path`` in a fresh interpreter (a
    crash there is a return code, not a dead test run); it must raise BadInputError (exit 3, not -11 for
    SIGSEGV). Returns stdout: ``BAD <the error>``."""
    module, name = loader_dotted_name.rsplit(".", 1)
    r = _run_isolated(f"""
        import sys
        from {module} import {name}
        from lavimo.core.errors import BadInputError
        try:
            print(repr({name}({str(path)!r})))     # touching object pointers made from bytes crashes
        except BadInputError as e:
            print("BAD", e)
            sys.exit(3)
    """)
    assert r.returncode == 3, (loader_dotted_name, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r.stdout


# -- 1. AMASS ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.exec", "numpy runstring", "element"])
def test_amass_object_gender_cannot_run_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    p = _write_npz(tmp_path / "evil_poses.npz", _amass_members(gender=_object_npy(_payloads(marker)[kind])))
    with pytest.raises(BadInputError) as e:
        load_amass(p)
    assert e.value.field == "gender" and str(p) in str(e.value)
    assert not marker.exists()
    assert read_amass_header(p) == (6, 120.0)          # the header reader never touches gender
    assert not marker.exists()


@pytest.mark.parametrize("field", ["poses", "trans", "betas", "mocap_framerate"])
def test_amass_object_numeric_members_are_never_unpickled(tmp_path, field):
    marker = tmp_path / "pwned"
    members = _amass_members(**{field: _object_npy(_payloads(marker)["posix.system"], (6, 156))})
    p = _write_npz(tmp_path / "evil.npz", members)
    readers = (load_amass, read_amass_header) if field != "betas" else (load_amass,)
    for reader in readers:
        with pytest.raises(BadInputError) as e:
            reader(p)
        assert e.value.field == field and str(p) in str(e.value)
        assert "object" in str(e.value) or "dtype" in str(e.value)
    assert not marker.exists()


def test_amass_plain_object_gender_still_loads(tmp_path):
    for value, expect in (("female", "female"), (b"male", "male")):
        arr = np.array(value, dtype=object)
        p = _write_npz(tmp_path / f"ok_{expect}.npz", _amass_members(gender=_object_npy(pickle.dumps(arr, 3))))
        assert load_amass(p).gender == expect
    # numpy's own writer (np.savez of an object gender) -> the same pickle layout
    p = tmp_path / "savez.npz"
    np.savez(p, poses=np.zeros((4, 165)), trans=np.zeros((4, 3)), betas=np.zeros(10),
             gender=np.array("neutral", dtype=object), mocap_frame_rate=np.array(60.0))
    m = load_amass(p)
    assert m.gender == "neutral" and m.model_type == "smplx"


@pytest.mark.parametrize("payload, why", [
    (pickle.dumps(np.array([{"a": np.zeros(3)}], dtype=object), 3), "plain"),    # element holds an array
    (pickle.dumps(np.array([sp.csc_matrix((2, 2))], dtype=object), 3), "refusing"),
    (pickle.dumps(np.zeros(3), 3), "not an object array"),
    (b"\x80\x03X\x04\x00\x00\x00male.", "not an object array"),                   # a bare str
    (b"\x80\x03cnumpy.core.multiarray\n_reconstruct\n", "not a readable pickle"),  # truncated
    (b"\x80\x03" + _RECONSTRUCT_OBJ_BYTES + b".", "list of its elements"),
])
def test_amass_gender_not_plain_data(tmp_path, payload, why):
    p = _write_npz(tmp_path / "odd.npz", _amass_members(gender=_object_npy(payload)))
    with pytest.raises(BadInputError, match=why) as e:
        load_amass(p)
    assert e.value.field == "gender" and str(p) in str(e.value)


def test_amass_segfault_vector_is_a_clean_error(tmp_path):
    p = _write_npz(tmp_path / "seg.npz", _amass_members(gender=_object_npy(b"\x80\x02" + _NDARRAY_OBJ_BUFFER
                                                                           + b".")))
    assert f"BAD {p}: gender: refusing a direct numpy.ndarray" in _isolated_bad_input("lavimo.dataset.amass.load_amass", p)


def test_amass_gender_member_size_and_truncation(tmp_path):
    big = _object_npy(b"\x80\x03" + b"N" * (1 << 17) + b".")
    p = _write_npz(tmp_path / "big.npz", _amass_members(gender=big))
    with pytest.raises(BadInputError, match="larger than") as e:
        load_amass(p)
    assert e.value.field == "gender"
    short = _npy(np.zeros((6, 156)))[:-100]
    p = _write_npz(tmp_path / "short.npz", _amass_members(poses=short))
    with pytest.raises(BadInputError, match="truncated") as e:
        load_amass(p)
    assert e.value.field == "poses" and str(p) in str(e.value)


# -- 3. SMPL pickles: memory safety and malformed state ------------------------------------------------------
@pytest.mark.parametrize("vector, message", [
    (_NDARRAY_OBJ_BUFFER, "refusing a direct numpy.ndarray"),
    (_RECONSTRUCT_OBJ_BYTES, "not a list of its elements"),
])
def test_object_pointer_vectors_end_as_bad_input_not_sigsegv(tmp_path, vector, message):
    p = tmp_path / "SMPL_NEUTRAL.pkl"
    p.write_bytes(_proto2_setitem("v_template", vector))
    out = _isolated_bad_input("lavimo.body.smpl_files.load_smpl_pickle", p)
    assert f"BAD {p}: pickle: " in out and message in out
    # and the same file in an npz member (object arrays of model npz files use the same unpickler)
    z = _write_npz(tmp_path / "m.npz", {"v_template.npy": _object_npy(b"\x80\x02" + vector + b".")})
    out = _isolated_bad_input("lavimo.body.smpl_files.load_npz_restricted", z)
    assert f"BAD {z}: v_template: " in out and message in out


@pytest.mark.parametrize("value, message", [
    (np.zeros(2, dtype=[("a", "O")]), "refusing dtype"),                   # structured dtype holding objects
    (np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]), "refusing dtype"),   # any structured dtype
    (np.array(["2020-01-01"], dtype="M8[D]"), "refusing dtype"),
    (np.array([1, 2], dtype=object), None),                                # plain object array: allowed
])
def test_dtype_allow_list(tmp_path, value, message):
    p = tmp_path / "m.pkl"
    p.write_bytes(pickle.dumps({"x": value}, protocol=2))
    if message is None:
        assert load_smpl_pickle(p)["x"].tolist() == [1, 2]
        return
    with pytest.raises(BadInputError, match=message) as e:
        load_smpl_pickle(p)
    assert str(p) in str(e.value) and e.value.field == "pickle"


def _chumpy_file(tmp_path, monkeypatch, build) -> Path:
    chumpy = _fake_chumpy(monkeypatch)
    p = tmp_path / "SMPL_MALE.pkl"
    p.write_bytes(pickle.dumps({"v_template": build(chumpy), "f": np.zeros((1, 3), np.uint32)}, protocol=2))
    _without_chumpy(monkeypatch)
    return p


def _select(chumpy, **state):
    s = chumpy.Select(chumpy.Ch(np.arange(6.0)), np.arange(6), (2, 3))
    for k, v in state.items():
        if v is None:
            del s.__dict__[k]
        else:
            s.__dict__[k] = v
    return s


@pytest.mark.parametrize("build, message", [
    (lambda ch: _select(ch, a=None), "without its 'a' term"),
    (lambda ch: _select(ch, idxs=None), "without its 'idxs' value"),
    (lambda ch: _select(ch, idxs=np.array([0, 99])), "IndexError"),
    (lambda ch: _select(ch, idxs=np.array([0.5])), "indices of dtype"),
    (lambda ch: _select(ch, preferred_shape=(7, 7)), "ValueError"),
    (lambda ch: _select(ch, preferred_shape="xx"), "TypeError"),
    (lambda ch: _select(ch, a=ch.Ch(["a", "b"])), "ValueError"),
    (lambda ch: _select(ch, a={"not": "an array"}), "malformed"),
    (lambda ch: _chumpy_state(ch.Ch(1.0), {"_raw": 1}), "without its 'x' value"),
    (lambda ch: _chumpy_state(ch.Ch(1.0), None), "without its 'x' value"),
])
def test_malformed_chumpy_state_is_bad_input(tmp_path, monkeypatch, build, message):
    p = _chumpy_file(tmp_path, monkeypatch, build)
    with pytest.raises(BadInputError, match=message) as e:
        load_smpl_pickle(p)
    assert e.value.field == "v_template" and str(p) in str(e.value)


def _chumpy_state(obj, state):
    obj.__dict__.clear()
    if state is not None:
        obj.__dict__.update(state)
    return obj


def test_chumpy_cycles_depth_and_size_are_bounded(tmp_path, monkeypatch):
    def cycle(ch):
        s = _select(ch)
        s.__dict__["a"] = s                      # refers to itself
        return s

    def deep(ch):
        x = ch.Ch(np.arange(6.0))
        for _ in range(MAX_DEPTH + 10):
            x = ch.Select(x, np.arange(6), (6,))
        return x

    def tile(ch):
        class Tile:
            def __init__(self, a, reps):
                self.a, self.reps = a, reps

        Tile.__module__, Tile.__qualname__ = "chumpy.reordering", "Tile"
        monkeypatch.setattr(sys.modules["chumpy.reordering"], "Tile", Tile, raising=False)
        return Tile(ch.Ch(np.zeros(1000)), np.array([1 << 20, 1 << 20]))

    for build, message in ((cycle, "refers to itself"), (deep, "nested deeper"), (tile, "elements")):
        p = _chumpy_file(tmp_path, monkeypatch, build)
        with pytest.raises(BadInputError, match=message) as e:
            load_smpl_pickle(p)
        assert e.value.field == "v_template" and str(p) in str(e.value)


def test_deeply_nested_pickle_is_bad_input(tmp_path):
    n = 200_000                                   # far deeper than Python's recursion limit
    p = tmp_path / "deep.pkl"
    p.write_bytes(_proto2_setitem("v_template", b"]" * n + b"a" * (n - 1)))
    with pytest.raises(BadInputError, match="nested") as e:
        load_smpl_pickle(p)
    assert e.value.field == "v_template" and str(p) in str(e.value)
    # L0 = []; Li = [Li-1, Li-1] through the memo: 2 ** 60 paths, each list converted once
    ops = b"]q\x000" + b"".join(b"]q%c(h%ch%ce0" % (i, i - 1, i - 1) for i in range(1, 61)) + b"h\x3c"
    p.write_bytes(_proto2_setitem("x", ops))
    x = load_smpl_pickle(p)["x"]
    for _ in range(60):
        assert len(x) == 2 and x[0] is x[1]
        x = x[0]
    assert x == []


def _sparse_pickle(tmp_path, tamper) -> Path:
    m = sp.csc_matrix(np.eye(4))
    tamper(m)
    p = tmp_path / "SMPL_MALE.pkl"
    p.write_bytes(pickle.dumps({"J_regressor": m}, protocol=2))
    return p


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m.indices.__setitem__(0, 10 ** 6), "indices must be < 4"),
    (lambda m: m.indptr.__setitem__(1, 3), "indptr|index|indices"),
    (lambda m: delattr(m, "indptr"), "without its 'indptr'"),
    (lambda m: setattr(m, "_shape", (1 << 30, 1 << 30)), "elements"),
    (lambda m: setattr(m, "_shape", "big"), "shape"),
    (lambda m: setattr(m, "data", np.array(["x"] * 4)), "numbers"),
])
def test_malformed_sparse_state_is_bad_input(tmp_path, tamper, message):
    p = _sparse_pickle(tmp_path, tamper)
    with pytest.raises(BadInputError, match=message) as e:
        load_smpl_pickle(p)
    assert e.value.field == "J_regressor" and str(p) in str(e.value)


@pytest.mark.parametrize("ops, message", [
    (b"c__builtin__\nbytearray\nJ\x00\x00\x00@\x85R", "size-only allocation"),          # bytearray(2**30)
    (b"ccopy_reg\n_reconstructor\nc__builtin__\ndict\nc__builtin__\ndict\n}\x87R", "_reconstructor"),
    (b"c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R", "_codecs.encode"),
    (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\ndtype\nK\x00\x85C\x01b\x87R", "reconstruct"),
    (b"cnumpy.core.multiarray\nscalar\ncnumpy\ndtype\nX\x02\x00\x00\x00O8\x85RK\x01\x86R", "object-dtype"),
    (b"cnumpy\nload\nX\x01\x00\x00\x00x\x85R", "refusing to load numpy.load"),
    (b"cbuiltins\ngetattr\n", "refusing to load builtins.getattr"),
])
def test_allowed_globals_cannot_be_misused(tmp_path, ops, message):
    p = tmp_path / "m.pkl"
    p.write_bytes(_proto2_setitem("x", ops))
    with pytest.raises(BadInputError, match=message) as e:
        load_smpl_pickle(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("kind", ["os.system", "posix.system", "builtins.exec", "numpy runstring", "element"])
def test_smpl_pickle_and_npz_members_cannot_run_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    p = tmp_path / "SMPL_MALE.pkl"
    p.write_bytes(payload)
    with pytest.raises(BadInputError) as e:
        load_smpl_pickle(p)
    assert str(p) in str(e.value) and e.value.field in ("pickle", None)
    z = _write_npz(tmp_path / "SMPLX_MALE.npz", {"v_template.npy": _npy(np.zeros((3, 3))),
                                                  "joint2num.npy": _object_npy(payload)})
    with pytest.raises(BadInputError) as e:
        load_npz_restricted(z)
    assert e.value.field == "joint2num" and str(z) in str(e.value)
    assert not marker.exists()


# -- 2. SMPL-family files through load_body: smplx never reads them ------------------------------------------
@pytest.fixture
def no_pickle_loading(monkeypatch):
    """numpy.load with allow_pickle=True and pickle.load/loads fail (and are recorded) while loading."""
    import smplx.body_models

    calls: list[tuple] = []
    real_load = np.load

    def guarded_load(file, *args, allow_pickle=False, **kwargs):
        calls.append((str(file), allow_pickle))
        if allow_pickle:
            raise AssertionError(f"np.load({file}, allow_pickle=True) reached")
        return real_load(file, *args, allow_pickle=allow_pickle, **kwargs)

    def no_pickle(*args, **kwargs):
        calls.append(("pickle.load", True))
        raise AssertionError("pickle.load reached")

    monkeypatch.setattr(np, "load", guarded_load)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(smplx.body_models.pickle, "load", no_pickle)
    return calls


def _write_model(path: Path, num_joints: int, fmt: str, monkeypatch=None) -> None:
    model = _smpl_dict(num_joints)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "pkl":
        chumpy = _fake_chumpy(monkeypatch)
        _write_chumpy_pickle(path, model, chumpy)
        _without_chumpy(monkeypatch)
    else:
        model["J_regressor"] = model["J_regressor"].toarray()
        np.savez(path, **model)


@pytest.mark.parametrize("model_type, joints, fmt", [
    ("smpl", 24, "pkl"), ("smplh", 52, "npz"), ("smplh", 52, "pkl"), ("smplx", 55, "npz"), ("smplx", 55, "pkl"),
])
def test_load_body_never_reaches_a_pickle_path(tmp_path, monkeypatch, no_pickle_loading, model_type, joints,
                                               fmt):
    path = tmp_path / model_type / f"{model_type.upper()}_MALE.{fmt}"
    _write_model(path, joints, fmt, monkeypatch)
    body = load_body(tmp_path, model_type, "male")
    assert body.kind == model_type and body.num_joints == joints and body.source == str(path)
    assert not [c for c in no_pickle_loading if c[1]], no_pickle_loading
    assert not [c for c in no_pickle_loading if c[0] == str(path)]     # np.load never opened the model file
    width = 165 if model_type == "smplx" else 156
    out = body.pose(np.zeros((2, width)), np.zeros((2, 3)))
    assert np.isfinite(out.vertices).all()


def test_smplx_from_arrays_equals_smplx_own_loading(tmp_path):
    """The SMPL-X model built from our arrays is the one smplx builds from the same (benign, test-written)
    file: same buffers, parameters and forward output."""
    import smplx
    import torch

    path = tmp_path / "smplx" / "SMPLX_FEMALE.npz"
    _write_model(path, 55, "npz")
    ours = load_body(tmp_path, "smplx", "female").model
    ref = smplx.SMPLX(model_path=str(path), gender="female", num_betas=10, use_pca=False,
                      flat_hand_mean=True, num_expression_coeffs=10, use_face_contour=False)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for attr in ("num_betas", "num_expression_coeffs", "use_pca", "flat_hand_mean", "use_face_contour",
                 "num_pca_comps", "NUM_BODY_JOINTS"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    np.testing.assert_array_equal(ours.faces, ref.faces)
    rng = np.random.default_rng(0)
    kw = {k: torch.tensor(rng.normal(0, 0.3, (2, n)), dtype=torch.float32) for k, n in
          (("global_orient", 3), ("body_pose", 63), ("left_hand_pose", 45), ("right_hand_pose", 45),
           ("jaw_pose", 3), ("leye_pose", 3), ("reye_pose", 3), ("betas", 10), ("expression", 10))}
    with torch.no_grad():
        oa, ob = ours(**kw), ref(**kw)
    assert torch.equal(oa.vertices, ob.vertices) and torch.equal(oa.joints, ob.joints)


def test_model_npz_extra_members_are_refused_through_load_body(tmp_path):
    marker = tmp_path / "pwned"
    good = tmp_path / "good.npz"
    _write_model(good, 52, "npz")
    with zipfile.ZipFile(good) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    (tmp_path / "smplh").mkdir()
    path = tmp_path / "smplh" / "SMPLH_MALE.npz"
    cases = [({"README.txt": b"hello"}, "README.txt", "not an .npy"),
             ({"evil.pkl": _payloads(marker)["posix.system"]}, "evil.pkl", "not an .npy"),
             ({"part2num.npy": _object_npy(_payloads(marker)["posix.system"])}, "part2num", "refusing"),
             ({"hands_meanl.npy": _object_npy(_payloads(marker)["element"])}, "hands_meanl", "refusing")]
    for extra, member, message in cases:
        _write_npz(path, {**members, **extra})
        with pytest.raises(BadInputError, match=message) as e:
            load_body(tmp_path, "smplh", "male")
        assert e.value.field == member and str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("change, member, message", [
    (lambda m: m["f"].__setitem__((0, 0), 10 ** 6), "f", "vertex indices"),
    (lambda m: m["kintree_table"].__setitem__((0, 3), 40), "kintree_table", "earlier joint"),
    (lambda m: m.__setitem__("weights", m["weights"][:, :10]), "weights", "expected"),
    (lambda m: m.__setitem__("posedirs", m["posedirs"][..., :5]), "posedirs", "expected"),
    (lambda m: m.__setitem__("v_template", m["v_template"].astype(object)), "v_template", "refusing|numbers"),
    (lambda m: m.__setitem__("v_template", m["v_template"][:100]), "v_template", "at least"),
    (lambda m: m["shapedirs"].__setitem__((0, 0, 0), np.nan), "shapedirs", "NaN"),
    (lambda m: m.pop("J_regressor"), "J_regressor", "lacks"),
    (lambda m: m.__setitem__("hands_meanl", np.zeros(12)), "hands_meanl", "45"),
])
def test_inconsistent_model_arrays_are_bad_input(tmp_path, change, member, message):
    model = _smpl_dict(52)
    model["J_regressor"] = model["J_regressor"].toarray()
    change(model)
    path = tmp_path / "smplh" / "SMPLH_FEMALE.npz"
    path.parent.mkdir()
    np.savez(path, **model)
    with pytest.raises(BadInputError, match=message) as e:
        load_body(tmp_path, "smplh", "female")
    assert e.value.field == member and str(path) in str(e.value)


# -- 4. missing, unreadable, truncated model files -----------------------------------------------------------
def test_missing_unreadable_and_truncated_model_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="SMPLH_MALE"):
        load_body(tmp_path, "smplh", "male")
    npz = tmp_path / "smplh" / "SMPLH_MALE.npz"
    _write_model(npz, 52, "npz")
    data = npz.read_bytes()
    for cut in (len(data) // 2, 10, 0):
        npz.write_bytes(data[:cut])
        with pytest.raises(BadInputError) as e:
            load_body(tmp_path, "smplh", "male")
        assert str(npz) in str(e.value) and "truncated" in str(e.value)
    # a member whose data is cut short (the archive itself intact)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members["posedirs.npy"] = members["posedirs.npy"][:-8]
    _write_npz(npz, members)
    with pytest.raises(BadInputError, match="truncated") as e:
        load_body(tmp_path, "smplh", "male")
    assert e.value.field == "posedirs" and str(npz) in str(e.value)
    npz.unlink()
    pkl = tmp_path / "smpl" / "SMPL_MALE.pkl"
    _write_model(pkl, 24, "pkl", monkeypatch)
    data = pkl.read_bytes()
    for cut in (len(data) // 2, 1, 0):
        pkl.write_bytes(data[:cut])
        with pytest.raises(BadInputError) as e:
            load_body(tmp_path, "smpl", "male")
        assert str(pkl) in str(e.value) and e.value.field == "pickle"
    # unreadable (permissions; simulated, as the tests may run as root)
    import lavimo.body.smpl_files as smpl_pickle

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(smpl_pickle, "open", denied, raising=False)
    with pytest.raises(BadInputError, match="Permission denied") as e:
        load_body(tmp_path, "smpl", "male")
    assert str(pkl) in str(e.value)
    pkl.unlink()
    _write_model(npz, 52, "npz")
    monkeypatch.setattr(zipfile, "ZipFile", denied)  # the npz is opened by lavimo.core.restricted_unpickle.open_npz
    with pytest.raises(BadInputError, match="Permission denied") as e:
        load_body(tmp_path, "smplh", "male")
    assert str(npz) in str(e.value)
