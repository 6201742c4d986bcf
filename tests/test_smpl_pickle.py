"""Chumpy-free loading of SMPL-family pickles, and the real-model path of load_body end to end.

The official model files cannot be shipped, so the tests write look-alikes themselves: the procedural body's
arrays pickled (protocol 2, as the Python 2 originals) through a stand-in ``chumpy`` module injected into
``sys.modules`` only while pickling, so loading happens with no chumpy importable.
"""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

from lavimo.core.errors import BadInputError
from lavimo.body import procedural as pb
from lavimo.body import skeleton
from lavimo.body.model import load_body
from lavimo.body.smpl_files import load_npz_restricted, load_smpl_pickle
from lavimo.render.avatars import vertex_parts


def _fake_chumpy(monkeypatch) -> types.SimpleNamespace:
    """A minimal ``chumpy`` with ``ch.Ch`` and ``reordering.Select`` whose pickled state mimics chumpy's."""
    ch_mod = types.ModuleType("chumpy.ch")
    re_mod = types.ModuleType("chumpy.reordering")
    ops_mod = types.ModuleType("chumpy.ch_ops")
    pkg = types.ModuleType("chumpy")

    def state(extra: dict) -> dict:
        return {"_dirty_vars": set(), "_itr": None, "_depends_on_deps": {}, "_make_dense": False,
                "_make_sparse": False, **extra}

    class Ch:
        def __init__(self, x):
            self.__dict__.update(state({"x": np.asarray(x)}))

    class Select:
        def __init__(self, a, idxs, preferred_shape):
            self.__dict__.update(state({"a": a, "idxs": idxs, "preferred_shape": preferred_shape}))

    class add:  # noqa: N801 - chumpy's name
        def __init__(self, a, b):
            self.__dict__.update(state({"a": a, "b": b}))

    for cls, mod in ((Ch, ch_mod), (Select, re_mod), (add, ops_mod)):
        cls.__module__ = mod.__name__
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    pkg.ch, pkg.reordering, pkg.ch_ops = ch_mod, re_mod, ops_mod
    for name, mod in (("chumpy", pkg), ("chumpy.ch", ch_mod), ("chumpy.reordering", re_mod),
                      ("chumpy.ch_ops", ops_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    return types.SimpleNamespace(Ch=Ch, Select=Select, add=add)


def _smpl_dict(num_joints: int = 24, posedirs_scale: float = 0.0) -> dict:
    """Model arrays built from the procedural body: SMPL (24 joints), SMPL-H (52) or SMPL-X (55).

    The extra SMPL-H/SMPL-X joints sit at the SMPL hand joints (fingers) or the head (jaw, eyes); the SMPL
    hand-joint skinning weights move to the middle-finger base joints. The first 22 joints are SMPL's."""
    d = pb.load_procedural_body()
    v, w24, reg24 = d["v_template"], d["weights"], d["J_regressor"]
    nv = len(v)
    parents = list(skeleton.PARENTS[:22])
    rows = [reg24[j] for j in range(22)]
    w = np.zeros((nv, num_joints))
    w[:, :22] = w24[:, :22]
    if num_joints == 24:
        parents, rows, w = list(skeleton.PARENTS), list(reg24), w24.copy()
    else:
        if num_joints == 55:                      # jaw, left eye, right eye
            parents += [15, 15, 15]
            rows += [reg24[15]] * 3
        for side, (wrist, hand) in enumerate(((20, 22), (21, 23))):
            for finger in range(5):
                for k in range(3):
                    parents.append(wrist if k == 0 else len(parents) - 1)
                    rows.append(reg24[hand])
                    if finger == 2 and k == 0:
                        w[:, len(parents) - 1] = w24[:, hand]
    kintree = np.stack([np.array(parents, dtype=np.int64) % (2 ** 32), np.arange(num_joints)]).astype(np.uint32)
    kintree[0, 0] = 2 ** 32 - 1                   # as in the official files
    rng = np.random.default_rng(0)
    shape = (nv, 3, 9 * (num_joints - 1))
    posedirs = (rng.normal(0, posedirs_scale, shape) if posedirs_scale else np.zeros(shape)).astype(np.float32)
    shapedirs = np.concatenate([d["shapedirs"], np.zeros((nv, 3, 10))], axis=2)     # 20 columns
    out = {
        "v_template": v, "f": d["f"].astype(np.uint32), "weights": w, "posedirs": posedirs,
        "shapedirs": shapedirs, "J_regressor": sp.csc_matrix(np.array(rows)), "kintree_table": kintree,
        "J": np.array(rows) @ v, "bs_style": "lbs", "bs_type": "lrotmin",
    }
    if num_joints > 24:
        for s in ("l", "r"):
            out[f"hands_components{s}"] = np.eye(45)
            out[f"hands_mean{s}"] = np.zeros(45)
    if num_joints == 55:
        out["lmk_faces_idx"] = np.arange(51, dtype=np.int64)
        out["lmk_bary_coords"] = np.full((51, 3), 1.0 / 3.0)
        # smplx indexes SMPL-X vertices up to ~10k for its extra joints: pad with unused vertex copies
        pad = 10475 - nv
        src = np.arange(pad) % nv
        out["v_template"] = np.concatenate([v, v[src]])
        out["weights"] = np.concatenate([w, w[src]])
        out["posedirs"] = np.concatenate([posedirs, posedirs[src]])
        out["shapedirs"] = np.concatenate([shapedirs, shapedirs[src]])
        out["J_regressor"] = sp.csc_matrix(np.concatenate([np.array(rows), np.zeros((num_joints, pad))], axis=1))
    return out


def _write_chumpy_pickle(path, model: dict, chumpy) -> None:
    obj = dict(model)
    for k in ("v_template", "weights", "J"):
        obj[k] = chumpy.Ch(model[k])
    # shapedirs as chumpy reordering of a Ch (what some files hold)
    sd = model["shapedirs"]
    obj["shapedirs"] = chumpy.Select(chumpy.Ch(sd.ravel()[::-1].copy()), np.arange(sd.size)[::-1].copy(),
                                     sd.shape)
    obj["posedirs"] = chumpy.Ch(model["posedirs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _without_chumpy(monkeypatch):
    for name in ("chumpy", "chumpy.ch", "chumpy.reordering", "chumpy.ch_ops"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def _poses(n: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.4, (n, width)), rng.normal(0, 0.3, (n, 3)), rng.normal(0, 1, 16)


def test_pickle_with_chumpy_objects_loads_as_arrays(tmp_path, monkeypatch):
    chumpy = _fake_chumpy(monkeypatch)
    model = _smpl_dict(24)
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    _write_chumpy_pickle(path, model, chumpy)
    _without_chumpy(monkeypatch)
    data = load_smpl_pickle(path)
    for k in ("v_template", "weights", "J", "shapedirs", "posedirs"):
        assert type(data[k]) is np.ndarray, k
        np.testing.assert_array_equal(data[k], model[k])
    assert sp.issparse(data["J_regressor"])
    np.testing.assert_array_equal(data["J_regressor"].toarray(), model["J_regressor"].toarray())
    assert data["bs_style"] == "lbs" and data["f"].dtype == np.uint32


def test_smpl_pickle_through_load_body_matches_procedural(tmp_path, monkeypatch):
    chumpy = _fake_chumpy(monkeypatch)
    # lower-case gender as in the official downloads (SMPL_neutral.pkl) is found too
    _write_chumpy_pickle(tmp_path / "smpl" / "SMPL_neutral.pkl", _smpl_dict(24, posedirs_scale=1e-4), chumpy)
    _without_chumpy(monkeypatch)
    body = load_body(tmp_path, model_type="smpl", gender="neutral")
    assert body.kind == "smpl" and body.num_joints == 24
    proc = load_body()
    poses, trans, betas = _poses(12, 156)
    a, b = body.pose(poses, trans, betas), proc.pose(poses, trans, betas)
    ref = body.pose_smplx(poses, trans, betas)        # smplx's own forward, pose blend shapes included
    np.testing.assert_allclose(a.vertices, ref.vertices, atol=2e-5)
    np.testing.assert_allclose(a.joints, ref.joints, atol=2e-5)
    # same joints as the procedural body (pose blend shapes move vertices only), vertices close
    np.testing.assert_allclose(a.joints, b.joints, atol=1e-5)
    diff = np.abs(a.vertices - b.vertices).max()
    assert 1e-5 < diff < 2e-2
    np.testing.assert_array_equal(vertex_parts(body), vertex_parts(proc))


def _write_npz_model(path, num_joints: int) -> None:
    """A synthetic SMPL-family model with ``num_joints`` joints, saved as an .npz (dense J_regressor)."""
    model = _smpl_dict(num_joints)
    model["J_regressor"] = model["J_regressor"].toarray()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **model)


def test_smplh_npz_hands(tmp_path):
    _write_npz_model(tmp_path / "smplh" / "SMPLH_MALE.npz", 52)
    body = load_body(tmp_path, model_type="smplh", gender="male")
    assert body.kind == "smplh" and body.num_joints == 52 and body.gender == "male"
    poses, trans, betas = _poses(10, 156)
    out = body.pose(poses, trans, betas)
    ref = body.pose_smplx(poses, trans, betas)
    np.testing.assert_allclose(out.vertices, ref.vertices, atol=2e-5)
    np.testing.assert_allclose(out.joints, ref.joints, atol=2e-5)
    proc = load_body().pose(poses, trans, betas)
    np.testing.assert_allclose(out.joints[:, :22], proc.joints[:, :22], atol=1e-5)
    # the hands are used: changing the left-hand pose moves exactly the vertices the left fingers skin
    p2 = poses.copy()
    p2[:, 66:111] += 0.5
    moved = np.abs(body.pose(p2, trans, betas).vertices - out.vertices).max(axis=(0, 2)) > 1e-5
    finger = body.model.lbs_weights[:, 22:37].sum(dim=1).numpy() > 1e-6
    assert moved.any() and (moved == finger).all()
    # AMASS's own layout DIR/smplh/<gender>/model.npz is found too
    (tmp_path / "amass" / "smplh" / "female").mkdir(parents=True)
    (tmp_path / "smplh" / "SMPLH_MALE.npz").rename(tmp_path / "amass" / "smplh" / "female" / "model.npz")
    assert load_body(tmp_path / "amass", "smplh", "female").num_joints == 52


@pytest.mark.slow
def test_smplx_npz_through_load_body(tmp_path):
    _write_npz_model(tmp_path / "smplx" / "SMPLX_FEMALE.npz", 55)
    body = load_body(tmp_path, model_type="smplx", gender="female")
    assert body.kind == "smplx" and body.num_joints == 55
    poses, trans, betas = _poses(8, 165)
    out, ref = body.pose(poses, trans, betas), body.pose_smplx(poses, trans, betas)
    np.testing.assert_allclose(out.vertices, ref.vertices, atol=2e-5)
    np.testing.assert_allclose(out.joints, ref.joints, atol=2e-5)
    proc = load_body().pose(poses, trans, betas)
    np.testing.assert_allclose(out.joints[:, :22], proc.joints[:, :22], atol=1e-5)
    # 156-dim (SMPL-H) poses on an SMPL-X body: hands taken from 66:156, jaw/eyes zero
    p156 = np.concatenate([poses[:, :66], poses[:, 75:]], axis=1)
    p165 = poses.copy()
    p165[:, 66:75] = 0
    np.testing.assert_allclose(body.pose(p156, trans, betas).vertices, body.pose(p165, trans, betas).vertices,
                               atol=1e-6)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_referencing_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "SMPL_MALE.pkl"
    path.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "x": _Evil(marker)}, protocol=2))
    with pytest.raises(BadInputError, match="refusing to load .*system"):
        load_smpl_pickle(path)
    assert not marker.exists()
    # through load_body too: a set-up error naming the file, nothing executed
    (tmp_path / "smpl").mkdir()
    path.rename(tmp_path / "smpl" / "SMPL_MALE.pkl")
    with pytest.raises(BadInputError, match="SMPL_MALE.pkl"):
        load_body(tmp_path, "smpl", "male")
    assert not marker.exists()


def test_unsupported_chumpy_op_and_garbage(tmp_path, monkeypatch):
    chumpy = _fake_chumpy(monkeypatch)
    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps({"v_template": chumpy.add(chumpy.Ch(1.0), chumpy.Ch(2.0))}, protocol=2))
    _without_chumpy(monkeypatch)
    with pytest.raises(BadInputError, match="unsupported chumpy class chumpy.ch_ops.add"):
        load_smpl_pickle(path)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(BadInputError):
        load_smpl_pickle(bad)
    lst = tmp_path / "list.pkl"
    lst.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(BadInputError, match="expected a dict"):
        load_smpl_pickle(lst)


def test_npz_object_members_go_through_the_restricted_unpickler(tmp_path):
    ok = tmp_path / "ok.npz"
    np.savez(ok, a=np.arange(3), names=np.array([{"x": 1}], dtype=object))
    data = load_npz_restricted(ok)
    assert data["a"].tolist() == [0, 1, 2] and data["names"][0] == {"x": 1}
    evil = tmp_path / "evil.npz"
    np.savez(evil, a=np.array([_Evil(tmp_path / "pwned")], dtype=object))
    with pytest.raises(BadInputError, match="refusing"):
        load_npz_restricted(evil)
    assert not (tmp_path / "pwned").exists()


def _py2_array(a: np.ndarray) -> bytes:
    """Opcodes Python 2's numpy writes for an array (protocol 2): array data as a py2 ``str`` (BINSTRING)."""
    a = np.ascontiguousarray(a)
    shape = b"(" + b"".join(b"J" + int(s).to_bytes(4, "little") for s in a.shape) + b"t"
    code = a.dtype.str[1:].encode()
    endian = a.dtype.str[:1].encode()
    raw = a.tobytes()
    return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\nK\x00\x85U\x01btR"
            b"(K\x01" + shape + b"cnumpy\ndtype\n(U" + bytes([len(code)]) + code + b"K\x00K\x01tR"
            b"(K\x03U\x01" + endian + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T"
            + len(raw).to_bytes(4, "little") + raw + b"tb")


def _py2_object(module: str, name: str, state: dict[bytes, bytes]) -> bytes:
    """``copy_reg._reconstructor(cls, object, None)`` + BUILD(state), as Python 2 pickles new-style classes."""
    items = b"".join(b"U" + bytes([len(k)]) + k + v for k, v in state.items())
    return (b"ccopy_reg\n_reconstructor\n(c" + module.encode() + b"\n" + name.encode()
            + b"\nc__builtin__\nobject\nNtR}(" + items + b"ub")


def test_python2_style_pickle_loads(tmp_path):
    """The encoding of the official (Python 2) files: copy_reg._reconstructor, py2 str array data."""
    v = np.arange(12.0).reshape(4, 3)
    reg = sp.csc_matrix(np.array([[0.5, 0, 0.5, 0], [0, 1.0, 0, 0]]))
    ch = _py2_object("chumpy.ch", "Ch", {b"x": _py2_array(v)})
    csc = _py2_object("scipy.sparse.csc", "csc_matrix", {
        b"data": _py2_array(reg.data), b"indices": _py2_array(reg.indices.astype(np.int32)),
        b"indptr": _py2_array(reg.indptr.astype(np.int32)), b"_shape": b"K\x02K\x04\x86"})
    f = _py2_array(np.array([[0, 1, 2]], dtype=np.uint32))
    p = tmp_path / "SMPL_py2.pkl"
    p.write_bytes(b"\x80\x02}(U\nv_template" + ch + b"U\x0bJ_regressor" + csc + b"U\x01f" + f
                  + b"U\x08bs_styleU\x03lbsu.")
    data = load_smpl_pickle(p)
    np.testing.assert_array_equal(data["v_template"], v)
    assert type(data["v_template"]) is np.ndarray and data["f"].dtype == np.uint32
    np.testing.assert_array_equal(data["J_regressor"].toarray(), reg.toarray())
    assert data["bs_style"] == "lbs"
