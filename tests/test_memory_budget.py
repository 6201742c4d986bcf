"""Memory budgets of the array readers (issue 24, item 6): a declared array size must match the bytes present
before anything is allocated, one checked ``.npy`` reader for every untrusted array, a total byte budget per
body-model file, and one BadInputError (never a traceback) for the bombs of the issue.

The bombs run in a child process (:func:`tests.fixtures.untrusted.run_python`) whose peak RSS is asserted; the child
imports only numpy and the reader (no torch), so 300 MiB is far above a refusal (~40 MiB measured) and far
below the 2-4 GiB the old readers reached on the same files.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures import array_bombs as ab  # noqa: E402
from tests.fixtures.untrusted import run_python  # noqa: E402

from lavimo.core.errors import BadInputError  # noqa: E402
from lavimo.core.restricted_unpickle import ByteBudget, read_npy_bytes, read_npz_member  # noqa: E402
from lavimo.dataset.shards.format import load_npy_bytes, load_stats, stats_arrays  # noqa: E402

from tests.conftest import SHARED_DATA as SHARED  # noqa: E402 - honours LAVIMO_SHARED_DATA
AMASS_SAMPLES = [SHARED / "amass" / "amass_sample.npz", SHARED / "amass" / "dmpl_sample.npz"]
#: the peak RSS a refused bomb may cost the reading process (numpy + the reader: ~40 MiB measured)
BOMB_RSS_MIB = 300

_CHILD = """
import json, sys
from lavimo.core.errors import BadInputError
mod, fn, path = sys.argv[1:4]
reader = getattr(__import__(mod, fromlist=[fn]), fn)
try:
    reader(path)
    print(json.dumps({"outcome": "loaded"}))
except BadInputError as exc:
    print(json.dumps({"outcome": "refused", "field": exc.field, "message": str(exc)}))
"""


def _stats_as_npy(p: Path) -> Path:
    p.write_bytes(ab.npy_bytes(np.ones(64, np.float32)))
    return p


def _amass_2tb(p: Path) -> Path:
    return ab.write_npz(p, {"poses": ab.npy_header(((1 << 41) // (8 * 156), 156)), "trans": ab.npy_header((5, 3))})


def _npy_file_2tb(p: Path) -> Path:
    p.write_bytes(ab.npy_header(((1 << 41) // (4 * 263), 263), "<f4"))
    return p


def _header_bomb(p: Path) -> Path:
    """A deflated npz whose ``mean`` member is a version-2 ``.npy`` whose header declares 128 MiB (of spaces:
    ~130 KB compressed): numpy's parser reads the whole declared header before it checks its length."""
    head = b"\x93NUMPY\x02\x00" + (128 << 20).to_bytes(4, "little") + b" " * (128 << 20)
    return ab.write_npz(p, {"mean": head, "std": ab.npy_bytes(np.ones(4, np.float32))}, compress=True)


#: (case, reader module, reader, builder, file name, field the refusal names)
BOMBS = [
    ("amass_715_bytes", "lavimo.dataset.amass", "load_amass", ab.amass_bomb, "bomb_poses.npz", "poses"),
    ("amass_2TB", "lavimo.dataset.amass", "load_amass", _amass_2tb, "big_poses.npz", "poses"),
    ("body_npz_204_bytes", "lavimo.body.smpl_files", "load_npz_restricted", ab.body_npz_bomb, "SMPLH_MALE.npz",
     "v_template"),
    ("body_npz_2TB", "lavimo.body.smpl_files", "load_npz_restricted", lambda p: ab.huge_npz(p, "v_template"),
     "SMPLX_MALE.npz", "v_template"),
    ("smpl_pickle_1KB", "lavimo.body.smpl_files", "load_smpl_pickle", ab.smpl_tile_bomb, "SMPL_MALE.pkl", "t0"),
    ("stats_8TiB", "lavimo.dataset.shards.format", "load_stats", lambda p: ab.huge_npz(p, declared=1 << 43),
     "stats.npz", "mean"),
    ("stats_2TB", "lavimo.dataset.shards.format", "load_stats", ab.huge_npz, "stats.npz", "mean"),
    ("stats_is_a_npy", "lavimo.dataset.shards.format", "load_stats", _stats_as_npy, "stats.npz", "archive"),
    ("npz_header_128MiB", "lavimo.dataset.shards.format", "load_stats", _header_bomb, "stats.npz", "mean"),
    ("npy_file_2TB", "lavimo.core.restricted_unpickle", "read_npy_file", _npy_file_2tb, "000001.npy", "array"),
]


@pytest.mark.parametrize("case,mod,fn,build,name,field", BOMBS, ids=[b[0] for b in BOMBS])
def test_issue_bombs_are_one_bad_input_error_in_bounded_memory(tmp_path, case, mod, fn, build, name, field):
    """Failed on the branch point: amass 2056 MiB, body npz 2080 MiB (refused only after allocating), the SMPL
    pickle loaded at 4127 MiB in 36 s, the stats files ended in tracebacks (MemoryError / TypeError)."""
    path = build(tmp_path / name)
    assert path.stat().st_size < (200_000 if case == "npz_header_128MiB" else 1100)
    m = run_python(_CHILD, mod, fn, path, timeout=60)
    assert m.returncode == 0 and "Traceback" not in m.stderr, m.stderr[-2000:]
    got = json.loads(m.stdout.strip().splitlines()[-1])
    assert got["outcome"] == "refused" and got["field"] == field, got
    assert name in got["message"] and "\n" not in got["message"], got
    assert m.peak_rss_mib < BOMB_RSS_MIB, f"{case}: peak RSS {m.peak_rss_mib:.0f} MiB"
    assert not m.timed_out  # the RSS bound catches a reader that allocates first; no wall-clock bound


# ------------------------------------------------------------------------------------- parity with numpy
_BENIGN = [
    np.arange(24, dtype="<f8").reshape(2, 3, 4),
    np.asfortranarray(np.arange(12, dtype="<f4").reshape(3, 4)),
    np.arange(6, dtype=">i4").reshape(2, 3),
    np.array(3.5),
    np.zeros((0, 263), np.float32),
    np.array([True, False]),
    np.arange(5, dtype=np.uint16),
    np.array(["male"]),
    np.array(b"female"),
    np.array([1 + 2j], np.complex64),
    np.random.default_rng(0).standard_normal((17, 263)).astype(np.float16),
]


@pytest.mark.parametrize("compress", [False, True])
def test_npz_members_match_np_load(tmp_path, compress):
    p = tmp_path / "a.npz"
    (np.savez_compressed if compress else np.savez)(p, **{f"a{i}": a for i, a in enumerate(_BENIGN)})
    with np.load(p, allow_pickle=False) as z, zipfile.ZipFile(p) as zf:
        for i in range(len(_BENIGN)):
            want, got = z[f"a{i}"], read_npz_member(zf, p, f"a{i}")
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.flags.f_contiguous == want.flags.f_contiguous and got.flags.writeable
            np.testing.assert_array_equal(got, want)


def test_npy_bytes_match_np_load():
    for a in _BENIGN:
        raw = ab.npy_bytes(a)
        want = np.load(io.BytesIO(raw), allow_pickle=False)
        for got in (load_npy_bytes(raw), read_npy_bytes(raw, None, "x")):
            assert got.dtype == want.dtype and got.shape == want.shape and got.flags.writeable
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sample", AMASS_SAMPLES, ids=lambda p: p.name)
def test_real_amass_members_match_np_load(sample):
    if not sample.is_file():
        pytest.skip(f"{sample}: ../shared fixtures absent")
    with np.load(sample, allow_pickle=True) as z, zipfile.ZipFile(sample) as zf:
        for key in z.files:
            want = z[key]
            if want.dtype.hasobject:
                continue
            got = read_npz_member(zf, sample, key)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_stats_match_np_load(tmp_path):
    from lavimo.dataset.shards.format import stats_fingerprint, write_stats

    mean, std = np.arange(263, dtype=np.float32), np.full(263, 2.0, np.float32)
    write_stats(tmp_path / "stats.npz", mean, std, fingerprint="ab" * 32, num_samples=3)
    got_mean, got_std = stats_arrays(tmp_path / "stats.npz")
    np.testing.assert_array_equal(got_mean, mean)
    np.testing.assert_array_equal(got_std, std)
    assert stats_fingerprint(tmp_path / "stats.npz") == "ab" * 32
    np.testing.assert_array_equal(load_stats(tmp_path)[1], std)


# ------------------------------------------------------------------------------- sizes that do not agree
def test_header_and_bytes_must_agree(tmp_path):
    raw = ab.npy_bytes(np.arange(10.0))
    with pytest.raises(ValueError, match="truncated"):
        load_npy_bytes(raw[:-8])
    with pytest.raises(ValueError, match="trailing data"):
        load_npy_bytes(raw + b"\0" * 8)
    with pytest.raises(ValueError, match="larger than"):
        load_npy_bytes(ab.npy_header((1 << 40,)))


@pytest.mark.parametrize("declared", [10, 100000, (1 << 32) - 1])
def test_zip_declared_size_that_lies(tmp_path, declared):
    """The central directory's uncompressed size is rewritten: smaller or larger than the member really is."""
    p = ab.write_npz(tmp_path / "a.npz", {"poses": ab.npy_bytes(np.zeros((20, 156)))}, compress=True)
    ab.set_declared_size(p, "poses.npy", declared)
    with zipfile.ZipFile(p) as zf, pytest.raises(BadInputError) as e:
        read_npz_member(zf, p, "poses")
    assert e.value.field == "poses" and str(p) in str(e.value)


def test_compressed_member_over_the_budget_is_refused_before_inflating(tmp_path):
    """A deflate bomb (a small member that inflates to 8 MiB) against a 1 MiB budget: refused from the header."""
    p = ab.write_npz(tmp_path / "a.npz", {"poses": ab.npy_bytes(np.zeros((1 << 20,)))}, compress=True)
    assert p.stat().st_size < 20000
    with zipfile.ZipFile(p) as zf, pytest.raises(BadInputError, match="budget per array"):
        read_npz_member(zf, p, "poses", max_bytes=1 << 20)


def test_body_model_total_budget(tmp_path, monkeypatch):
    """Each array within bounds, their sum over the file's budget (lowered here to 1 MiB): refused, naming the
    member that crossed it, for an npz and for a pickle of chumpy Tiles."""
    import lavimo.body.smpl_files as sf

    npz = ab.write_npz(tmp_path / "m.npz", {k: ab.npy_bytes(np.zeros(50_000)) for k in ("a", "b", "c")})
    pkl = ab.smpl_tile_bomb(tmp_path / "m.pkl", copies=3, reps=50_000)
    assert set(sf.load_npz_restricted(npz)) == {"a", "b", "c"}           # 1.2 MB: within the real budget
    assert sf.load_smpl_pickle(pkl)["t2"].shape == (50_000,)
    monkeypatch.setattr(sf, "MAX_MODEL_FILE_BYTES", 1 << 20)
    with pytest.raises(BadInputError, match="budget") as e:
        sf.load_npz_restricted(npz)
    assert e.value.field == "c"
    with pytest.raises(BadInputError, match="budget") as e:
        sf.load_smpl_pickle(pkl)
    assert e.value.field == "t2"


def test_pickle_list_of_repeated_arrays_is_charged_before_numpy_builds_it(tmp_path):
    """A chumpy Ch whose ``x`` is a list of 20000 references to one 8000-element array (memo GETs: a ~100 KB
    file): np.asarray would build 1.3 GB; the list is counted and refused first."""
    arr = ab.p2_array([0.0] * 8000, "f8")
    x = b"(" + arr + b"q\x01" + b"h\x01" * 19999 + b"l"
    ch = ab.p2_object("chumpy.ch", "Ch", {"x": x})
    p = tmp_path / "SMPL.pkl"
    p.write_bytes(b"\x80\x02}(" + ab.p2_str("v_template") + ch + b"u.")
    from lavimo.body.smpl_files import load_smpl_pickle

    m = run_python("import sys\nfrom lavimo.body.smpl_files import load_smpl_pickle as f\nfrom lavimo.core.errors import "
                   "BadInputError\ntry:\n    f(sys.argv[1])\nexcept BadInputError as e:\n    print(e)", p)
    assert m.returncode == 0 and "more than" in m.stdout and "v_template" in m.stdout, (m.stdout, m.stderr)
    assert m.peak_rss_mib < BOMB_RSS_MIB
    with pytest.raises(BadInputError):
        load_smpl_pickle(p)


def test_byte_budget_counts_and_refuses():
    b = ByteBudget(100)
    b.charge(60, "f", "a")
    with pytest.raises(BadInputError, match="budget") as e:
        b.charge(41, "f", "b")
    assert e.value.field == "b" and e.value.path == "f"


# ------------------------------------------------------------------------------------------ through a command
def _render_inputs(root: Path) -> tuple[Path, Path]:
    """A good 0.2 s AMASS clip 00000 and the issue's bomb as clip 00001 (TMR annotations)."""
    t = np.arange(12) / 60.0
    poses = np.zeros((12, 156))
    amass = root / "amass"
    (amass / "S").mkdir(parents=True)
    np.savez(amass / "S" / "a_poses.npz", poses=poses, trans=np.stack([0.4 * t, 0 * t, 0.95 + 0 * t], 1),
             betas=np.zeros(16), gender=np.array("neutral"), mocap_framerate=np.array(60.0))
    ab.amass_bomb(amass / "S" / "b_poses.npz")
    ann = {k: {"path": f"S/{c}_poses", "duration": 0.2,
               "annotations": [{"seg_id": c, "text": "a person stands", "start": 0.0, "end": 0.2}]}
           for k, c in (("00000", "a"), ("00001", "b"))}
    (root / "annotations.json").write_text(json.dumps(ann))
    return amass, root / "annotations.json"


_RENDER = "import sys\nfrom lavimo.render.cli import main\nsys.exit(main(sys.argv[1:]))"


@pytest.mark.slow
def test_render_amass_with_bombs_one_line_and_bounded_memory(tmp_path):
    """render-amass (torch imported: ~0.5-0.9 GiB before any input) on the AMASS bomb as one clip: that clip
    fails alone (exit 1, its reason names the file and poses); with a body-model bomb as the model: exit 2 with
    one line naming it. Peak RSS stays within 400 MiB of the same command on good inputs only."""
    amass, ann = _render_inputs(tmp_path)
    base = ["--amass", amass, "--annotations", ann, "--size", "32", "--workers", "1"]
    m = run_python(_RENDER, *base, "--out", tmp_path / "v1", "--keyids", _keyids(tmp_path, "00000"), timeout=300)
    assert m.returncode == 0, m.stderr[-2000:]
    baseline = m.peak_rss_mib
    m = run_python(_RENDER, *base, "--out", tmp_path / "v2", timeout=300)
    assert m.returncode == 1 and "Traceback" not in m.stderr, m.stderr[-2000:]
    report = json.loads((tmp_path / "v2" / "render-report.json").read_text())
    assert set(report["failed"]) == {"00001"} and "poses" in json.dumps(report["failed"]), report["failed"]
    assert m.peak_rss_mib < baseline + 400, (m.peak_rss_mib, baseline)
    models = tmp_path / "models" / "smplh"
    models.mkdir(parents=True)
    for g in ("NEUTRAL", "MALE", "FEMALE"):
        ab.body_npz_bomb(models / f"SMPLH_{g}.npz")
    m = run_python(_RENDER, *base, "--out", tmp_path / "v3", "--keyids", _keyids(tmp_path, "00000"),
                   "--body-models", tmp_path / "models", timeout=300)
    lines = [ln for ln in m.stderr.splitlines() if "error:" in ln]  # the other lines are INFO logs
    assert m.returncode == 2 and len(lines) == 1 and "Traceback" not in m.stderr, m.stderr
    assert lines[0].startswith("render-amass: error: --body-models: ") and "SMPLH_" in lines[0], lines
    assert "v_template" in lines[0], lines
    assert m.peak_rss_mib < baseline + 400, (m.peak_rss_mib, baseline)


def _keyids(root: Path, *keys: str) -> Path:
    p = root / f"keyids-{'-'.join(keys)}.txt"
    p.write_text("".join(f"{k}\n" for k in keys))
    return p


def test_npy_parity_with_numpy_property():
    """Any plain array numpy can save (hypothesis: dtypes, byte orders, shapes including 0-d and empty, C and
    Fortran order) reads back through the checked reader exactly as ``np.load`` reads it."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    dtypes = st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                       hnp.floating_dtypes(), hnp.complex_number_dtypes(), hnp.byte_string_dtypes(max_len=6),
                       hnp.unicode_string_dtypes(max_len=6))

    @settings(derandomize=True, deadline=None, max_examples=150)
    @given(hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)), st.booleans())
    def check(a: np.ndarray, fortran: bool) -> None:
        a = np.asfortranarray(a) if fortran else a
        raw = ab.npy_bytes(a)
        want = np.load(io.BytesIO(raw), allow_pickle=False)
        got = read_npy_bytes(raw, None, "x")
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.flags.f_contiguous == want.flags.f_contiguous and got.flags.c_contiguous == want.flags.c_contiguous
        assert got.tobytes(order="A") == want.tobytes(order="A")

    check()


def test_from_sims_file_goes_through_the_checked_reader(tmp_path):
    """``lavimo-evaluate --from-sims``: a member whose header declares more than it holds is refused naming the
    member (np.load said only "not a readable .npz archive (ValueError)"); benign files read as before."""
    from lavimo.evaluation.cli import load_sims_file

    p = ab.write_npz(tmp_path / "sims.npz", {"sims": ab.npy_header((4096, 4096), "<f4") + b"\0" * 64})
    with pytest.raises(BadInputError, match="truncated") as e:
        load_sims_file(p)
    assert e.value.field == "sims"
    np.savez(tmp_path / "ok.npz", sims=np.eye(3, dtype=np.float32), keyids=np.array(["a", "b", "c"]))
    sims, emb, keyids = load_sims_file(tmp_path / "ok.npz")
    np.testing.assert_array_equal(sims, np.eye(3))
    assert emb is None and keyids == ["a", "b", "c"]


def test_humanml3d_vecs_go_through_the_checked_reader(tmp_path):
    """``--humanml3d-vecs`` files (third-party ``new_joint_vecs/<keyid>.npy``) are read by read_npy_file: the
    same array as np.load for a real file, one BadInputError naming the file for a header declaring 2 TB."""
    from lavimo.dataset.features import _read_vecs
    from lavimo.dataset.motion import get_skeleton

    skel = get_skeleton("humanml3d")
    good = np.random.default_rng(0).standard_normal((9, skel.feature_dim)).astype(np.float32)
    np.save(tmp_path / "000002.npy", good)
    np.testing.assert_array_equal(_read_vecs(tmp_path / "000002.npy", skel), np.load(tmp_path / "000002.npy"))
    bomb = _npy_file_2tb(tmp_path / "000001.npy")
    with pytest.raises(BadInputError, match="000001.npy") as err:
        _read_vecs(bomb, skel)
    assert err.value.field == "features"
