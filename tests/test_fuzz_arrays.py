"""Fuzzing the array and annotation readers (issue 24, item 7): AMASS npz, body-model npz and pkl, ``stats.npz``,
shard tar members (``.npy`` / ``.json``) and manifests, ``.build/set.json``, annotations (annotations.json,
index.csv, ``texts/*.txt``), split and subset files.

For each reader a seeded generator (reproducible: the seed is fixed, the mutation list is the same on every
run) writes a few hundred mutants of benign files: truncation at random offsets, byte flips, ``.npy`` headers
rewritten to other dtypes and shapes (up to 2**40 elements), zip central directories declaring other sizes,
members dropped, pickle integers and lengths made huge, JSON nested deeply or with wrong types. ONE child
process (no torch: ~45 MiB) runs the reader on every mutant and prints one JSON line per file: the outcome
(``ok``, ``refused`` = the reader's documented error, ``error`` = anything else) with the exception type. The test
asserts no ``error`` (no traceback would reach a user), every refusal naming the file, each file read in
bounded time, and the child's peak RSS (from wait4: the maximum over all mutants) under :data:`RSS_BOUND_MIB`.
"""

from __future__ import annotations

import io
import json
import random
import struct
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np

from tests.conftest import SHARED_DATA
from tests.fixtures import array_bombs as ab
from tests.fixtures.child_peak import PEAK
from tests.fixtures.untrusted import run_python

#: peak RSS of the fuzzing child over all its mutants (numpy + the readers: ~45-60 MiB measured)
RSS_BOUND_MIB = 300
#: wall-clock bound of one mutant's read
PER_FILE_SECONDS = 5.0
SEED = 24

# The child: reads (path, reader) pairs from a list file, runs the reader, prints one JSON line per file.
_CHILD = r'''
import importlib, json, sys, time
from lavimo.core.errors import BadInputError

DOCUMENTED = {"BadInputError": (BadInputError,)}
def resolve(spec):
    mod, fn = spec.split(":")
    return getattr(importlib.import_module(mod), fn)

extra = {}
def documented(name):
    if name not in extra:
        import tarfile
        extra.update({"EOFError": EOFError, "TarError": tarfile.TarError, "OSError": OSError,
                      "ValueError": ValueError})
    return extra[name]

for line in open(sys.argv[1]):
    path, spec, allowed = line.rstrip("\n").split("\t")
    reader = resolve(spec)
    allowed = tuple(documented(a) for a in allowed.split(",") if a) + (BadInputError,)
    t0 = time.monotonic()
    try:
        reader(path)
        out = {"outcome": "ok"}
    except allowed as exc:
        out = {"outcome": "refused", "type": type(exc).__name__, "message": str(exc)[:300]}
    except BaseException as exc:  # noqa: BLE001 - what the test reports
        out = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)[:300]}
    out.update(file=path, reader=spec, seconds=round(time.monotonic() - t0, 3))
    print(json.dumps(out), flush=True)
'''

# Reader entry points run by the child (module:function taking one path). Those that are not already a
# one-path function are small adapters in this module's _ADAPTERS source, written next to the mutants.
_ADAPTERS = '''
import json
from pathlib import Path

def amass_both(path):
    from lavimo.dataset.amass import load_amass, read_amass_header
    try:
        read_amass_header(path)
    finally:
        load_amass(path)

def stats_both(path):
    from lavimo.dataset.shards.format import load_stats, stats_fingerprint
    stats_fingerprint(path)
    load_stats(path)

def npy_member(path):
    from lavimo.dataset.shards.format import load_npy_bytes
    load_npy_bytes(Path(path).read_bytes())

def texts_member(path):
    from lavimo.dataset.shards.format import parse_texts
    parse_texts(Path(path).read_bytes())

def tar_members(path):
    """A shard tar as the readers take it (the product's per-kind caps): members streamed, .npy / texts.json /
    meta.json parsed."""
    from lavimo.dataset.shards.format import iter_tar_members, load_npy_bytes, parse_meta, parse_texts
    for name, data in iter_tar_members(path, refused=lambda *a: None):
        if name.endswith(".npy"):
            load_npy_bytes(data)
        elif name.endswith(".texts.json"):
            parse_texts(data)
        elif name.endswith(".meta.json"):
            parse_meta(data)

def manifest(path):
    from lavimo.dataset.shards.format import manifest_shards, read_manifest, read_manifests
    root = Path(path).parent
    read_manifests(root)
    m = read_manifest(root, "train")
    manifest_shards(root, "train", m)

def build_state(path):
    from lavimo.dataset.shards.build import _read_set_state
    _read_set_state(Path(path))

def annotations(path):
    from lavimo.dataset.annotations import load_clips
    clips = load_clips(Path(path).parent if Path(path).name != "annotations.json" else path, None, "train")
    clips.report.summary()

def subset(path):
    from lavimo.dataset.subsets import read_subset
    read_subset(path)
'''


# ------------------------------------------------------------------------------------------------ mutations
def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if out:
            out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


_DESCRS = ["<f8", "<f4", ">f8", "|u1", "<i8", "|O", "<U8", "|S4", "|b1", "<c16", "<f2", "|V8",
           [("a", "<f8"), ("b", "<i4")]]


def _shape(rng: random.Random, old: tuple[int, ...]) -> tuple[int, ...]:
    pick = rng.randrange(9)
    if pick == 8:  # the bomb: just inside the 2**28-element bound, gigabytes declared, no data behind
        rest = tuple(old[1:])
        return (((1 << 28) - 1) // max(1, int(np.prod(rest, dtype=np.int64))),) + rest
    if pick == 0:
        return (1 << 40,)
    if pick == 1:
        return (1 << 27, 8)
    if pick == 2:
        return ((1 << 41) // 8,)
    if pick == 3:
        return ()
    if pick == 4:
        return tuple(reversed(old)) + (1,)
    if pick == 5:
        return (0,) + old[1:]
    if pick == 6:
        return tuple(s * rng.randint(2, 1000) for s in old) or (7,)
    return tuple(rng.randint(0, 4) for _ in range(rng.randint(1, 4)))


def _rewrite_npy_header(rng: random.Random, npy: bytes) -> bytes:
    """The .npy member with another dtype and/or shape in its header, its data bytes kept."""
    bio = io.BytesIO(npy)
    try:
        version = np.lib.format.read_magic(bio)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(bio)
    except Exception:  # noqa: BLE001 - already damaged: flip instead
        return _flip(rng, npy)
    data = npy[bio.tell():]
    descr = np.lib.format.dtype_to_descr(dtype)
    if rng.random() < 0.6:
        shape = _shape(rng, shape)
    if rng.random() < 0.5:
        descr = rng.choice(_DESCRS)
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": rng.random() < 0.2 or fortran,
                                               "shape": shape})
    return head.getvalue() + data


def _npz_members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename[:-4]: zf.read(i) for i in zf.infolist()}


def mutate_npz(rng: random.Random, data: bytes, path: Path) -> None:
    """One mutant of the npz ``data`` written to ``path``."""
    kind = rng.choice(["truncate", "flip", "header", "header", "declared", "header+declared", "drop"])
    if kind == "truncate":
        path.write_bytes(_truncate(rng, data))
        return
    if kind == "flip":
        path.write_bytes(_flip(rng, data))
        return
    members = _npz_members(data)
    key = rng.choice(sorted(members))
    compress = rng.random() < 0.5
    if kind == "drop":
        del members[key]
        ab.write_npz(path, members, compress=compress)
        return
    if kind.startswith("header"):
        members[key] = _rewrite_npy_header(rng, members[key])
    ab.write_npz(path, members, compress=compress)
    if kind.endswith("declared"):
        declared = rng.choice([0, 1, 100, len(members[key]) + rng.randint(1, 4096), 0xFFFFFFFF,
                               rng.randrange(1 << 32)])
        ab.set_declared_size(path, f"{key}.npy", declared)


def mutate_npy(rng: random.Random, data: bytes, path: Path) -> None:
    kind = rng.choice(["truncate", "flip", "header", "header"])
    path.write_bytes({"truncate": _truncate, "flip": _flip, "header": _rewrite_npy_header}[kind](rng, data))


def mutate_pickle(rng: random.Random, data: bytes, path: Path) -> None:
    """Truncation, flips, or the 4-byte integers after BININT (``J``) / BINSTRING (``T``) opcodes made huge."""
    kind = rng.choice(["truncate", "flip", "ints", "ints"])
    if kind != "ints":
        path.write_bytes(_truncate(rng, data) if kind == "truncate" else _flip(rng, data))
        return
    out = bytearray(data)
    spots = [i for i in range(len(out) - 4) if out[i] in b"JT"]
    for i in rng.sample(spots, min(len(spots), rng.randint(1, 3))):
        struct.pack_into("<I", out, i + 1, rng.choice([0x7FFFFFFF, 0xFFFFFFFF, 1 << 28, (1 << 28) - 1,
                                                       rng.randrange(1 << 31)]))
    path.write_bytes(bytes(out))


def _deep(rng: random.Random) -> str:
    n = rng.choice([100, 5000, 200000])
    return "[" * n + "]" * n


def mutate_text(rng: random.Random, data: bytes, path: Path, *, json_like: bool = False) -> None:
    kind = rng.choice(["truncate", "flip", "lines", "json" if json_like else "bytes"])
    if kind == "truncate":
        out = _truncate(rng, data)
    elif kind == "flip":
        out = _flip(rng, data)
    elif kind == "lines":  # lines duplicated many times, or a huge line
        lines = data.splitlines(keepends=True) or [b"x\n"]
        if rng.random() < 0.5:
            out = data + rng.choice(lines) * rng.choice([2, 1000, 50000])
        else:
            out = data + b"9" * rng.choice([1000, 1 << 20]) + b"\n"
    elif kind == "json":
        doc = json.loads(data)
        choice = rng.randrange(4)
        if choice == 0:
            out = _deep(rng).encode()
        elif choice == 1:
            out = json.dumps(rng.choice([[], 1, "x", None, 1e308, [doc]])).encode()
        elif choice == 2 and isinstance(doc, dict) and doc:
            k = rng.choice(sorted(doc))
            doc[k] = rng.choice([None, 1e308, -1, "x", [], {}, [[[]]], True])
            out = json.dumps(doc).encode()
        else:
            out = data.replace(b"1", b"1" * rng.randint(20, 5000), 1)
    else:
        out = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
    path.write_bytes(out)


# ------------------------------------------------------------------------------------------- benign files
def _amass_bases(tmp: Path) -> list[bytes]:
    rng = np.random.default_rng(0)
    members = dict(poses=rng.standard_normal((12, 156)), trans=rng.standard_normal((12, 3)),
                   betas=np.zeros(16), gender=np.array("male"), mocap_framerate=np.array(120.0))
    out = []
    for i, (save, extra) in enumerate([(np.savez, {}), (np.savez_compressed, {}),
                                       (np.savez, {"gender": np.array("female", dtype=object)})]):
        p = tmp / f"base{i}.npz"
        save(p, **{**members, **extra})
        out.append(p.read_bytes())
    real = SHARED_DATA / "amass" / "dmpl_sample.npz"
    if real.is_file():
        out.append(real.read_bytes())
    return out


def _body_npz_base(tmp: Path) -> bytes:
    p = tmp / "body.npz"
    np.savez(p, v_template=np.zeros((20, 3)), f=np.array([[0, 1, 2]], np.uint32), weights=np.ones((20, 4)) / 4,
             kintree_table=np.array([[-1, 0, 1, 2], [0, 1, 2, 3]]), shapedirs=np.zeros((20, 3, 10)),
             names=np.array(["a", 1, None], dtype=object))
    return p.read_bytes()


def _pickle_base() -> bytes:
    """An SMPL-like protocol-2 pickle (as the official Python 2 files): Ch, Select, Tile, csc, a plain array."""
    ch = ab.p2_object("chumpy.ch", "Ch", {"x": ab.p2_array([float(i) for i in range(12)], "f8")})
    select = ab.p2_object("chumpy.reordering", "Select", {"a": ch, "idxs": ab.p2_array([0, 2, 4], "i4")})
    tile = ab.p2_object("chumpy.reordering", "Tile", {"a": ch, "reps": b"]J\x02\x00\x00\x00a"})
    csc = ab.p2_object("scipy.sparse.csc", "csc_matrix", {
        "data": ab.p2_array([0.5, 1.0], "f8"), "indices": ab.p2_array([0, 1], "i4"), "indptr": ab.p2_array([0, 1, 2], "i4"),
        "_shape": b"K\x02K\x02\x86"})
    body = (ab.p2_str("v_template") + ch + ab.p2_str("sel") + select + ab.p2_str("tile") + tile
            + ab.p2_str("J_regressor") + csc + ab.p2_str("f") + ab.p2_array([0, 1, 2], "i4"))
    return b"\x80\x02}(" + body + b"u."


def _stats_base(tmp: Path) -> bytes:
    from lavimo.dataset.shards.format import write_stats

    write_stats(tmp / "stats.npz", np.arange(16, dtype=np.float32), np.ones(16, np.float32),
                fingerprint="ab" * 32, num_samples=3)
    return (tmp / "stats.npz").read_bytes()


def _tar_base_members() -> list[tuple[str, bytes]]:
    """(name, bytes) of two samples laid out as the shard writer does (``<keyid>.<member>`` plain files), in order."""
    from lavimo.dataset.shards.format import json_bytes, npy_bytes

    sample = {"meta.json": json_bytes({"fps": 20.0}), "motion.npy": npy_bytes(np.ones((6, 8), np.float32)),
              "sent.npy": npy_bytes(np.zeros((1, 4), np.float16)),
              "texts.json": json_bytes([{"caption": "a person walks", "start": 0.0, "end": 1.0}])}
    return [(f"{k}.{member}", data) for k in ("000001", "000002") for member, data in sample.items()]


def _tar_base() -> bytes:
    return _tar_bytes(_tar_base_members())


# ----------------------------------------------------------------------------------------------- harness
def _run(tmp: Path, cases: list[tuple[Path, str, str]]) -> list[dict]:
    """Run every (file, reader spec, documented extra exceptions) in ONE measured child; check the contract."""
    (tmp / "fuzz_adapters.py").write_text(_ADAPTERS)
    listing = tmp / "cases.tsv"
    listing.write_text("".join(f"{p}\t{spec}\t{allowed}\n" for p, spec, allowed in cases))
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp)
    m = run_python(textwrap.dedent(_CHILD), listing, timeout=120, env=env)
    rows = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
    assert not m.timed_out and m.returncode == 0, f"rc={m.returncode} {m.stderr[-3000:]}"
    assert len(rows) == len(cases), m.stderr[-3000:]
    errors = [r for r in rows if r["outcome"] == "error"]
    assert not errors, "\n".join(json.dumps(r) for r in errors[:10])
    for r in rows:
        if r["outcome"] == "refused" and r["type"] == "BadInputError":
            assert Path(r["file"]).name in r["message"] or Path(r["file"]).parent.name in r["message"], r
            assert "\n" not in r["message"], r
    slow = [r for r in rows if r["seconds"] > PER_FILE_SECONDS]
    assert not slow, slow[:5]
    assert m.peak_rss_mib < RSS_BOUND_MIB, f"peak RSS {m.peak_rss_mib:.0f} MiB over {len(rows)} mutants"
    return rows


def _mutants(tmp: Path, name: str, bases: list[bytes], mutate, n: int, suffix: str, seed: int) -> list[Path]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        d = tmp / f"{name}{i:04d}"
        d.mkdir()
        p = d / f"{name}{i:04d}{suffix}"
        mutate(rng, rng.choice(bases), p)
        out.append(p)
    return out


def _outcomes(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------- tests
def test_fuzz_amass_npz(tmp_path):
    files = _mutants(tmp_path, "amass", _amass_bases(tmp_path), mutate_npz, 250, ".npz", SEED)
    rows = _run(tmp_path, [(p, "fuzz_adapters:amass_both", "") for p in files])
    assert _outcomes(rows).get("refused", 0) > 100


def test_fuzz_body_model_npz_and_pickle(tmp_path):
    npz = _mutants(tmp_path, "SMPLH_MALE", [_body_npz_base(tmp_path)], mutate_npz, 200, ".npz", SEED + 1)
    pkl = _mutants(tmp_path, "SMPL_MALE", [_pickle_base()], mutate_pickle, 300, ".pkl", SEED + 2)
    rows = _run(tmp_path, [(p, "lavimo.body.smpl_files:load_npz_restricted", "") for p in npz]
                + [(p, "lavimo.body.smpl_files:load_smpl_pickle", "") for p in pkl])
    assert _outcomes(rows).get("refused", 0) > 200


def test_fuzz_stats_npz(tmp_path):
    files = _mutants(tmp_path, "stats", [_stats_base(tmp_path)], mutate_npz, 200, ".npz", SEED + 3)
    rows = _run(tmp_path, [(p, "fuzz_adapters:stats_both", "") for p in files])
    assert _outcomes(rows).get("refused", 0) > 80


def test_fuzz_shard_members_tars_and_manifests(tmp_path):
    """.npy members (ValueError is load_npy_bytes' documented error: the loader counts the sample as skipped),
    texts.json, whole tars (iter_tar_members also raises EOFError / TarError / OSError for a damaged tar: the
    loader reports that shard) and manifests."""
    from lavimo.dataset.shards.format import npy_bytes

    npys = [npy_bytes(np.ones((6, 8), np.float32)), npy_bytes(np.zeros((2, 4), np.float16)),
            npy_bytes(np.asfortranarray(np.ones((3, 5))))]
    manifest = json.dumps({"kind": "lavimo-shards-manifest", "format_version": 1, "split": "train",
                           "num_samples": 2, "feature_dim": 8,
                           "shards": [{"name": "train-000000.tar", "count": 2, "sha256": "0" * 64}]}).encode()
    texts = json.dumps([{"caption": "a person walks", "start": 0.0, "end": 1.0}, "jumps"]).encode()
    cases = [(p, "fuzz_adapters:npy_member", "ValueError")
             for p in _mutants(tmp_path, "motion", npys, mutate_npy, 150, ".npy", SEED + 4)]
    cases += [(p, "fuzz_adapters:texts_member", "ValueError")
              for p in _mutants(tmp_path, "texts", [texts], lambda r, d, p: mutate_text(r, d, p, json_like=True),
                                100, ".json", SEED + 5)]
    cases += [(p, "fuzz_adapters:tar_members", "ValueError,EOFError,TarError,OSError")
              for p in _mutants(tmp_path, "train-000000", [_tar_base()],
                                lambda r, d, p: p.write_bytes(r.choice([_truncate, _flip])(r, d)), 100, ".tar",
                                SEED + 6)]
    rng = random.Random(SEED + 7)
    for i in range(100):
        d = tmp_path / f"set{i:03d}"
        d.mkdir()
        mutate_text(rng, manifest, d / "train.json", json_like=True)
        cases.append((d / "train.json", "fuzz_adapters:manifest", ""))
    rows = _run(tmp_path, cases)
    assert _outcomes(rows).get("refused", 0) > 150


def test_fuzz_build_state(tmp_path):
    state = json.dumps({"format_version": 1, "text_model": {"name": "x", "dim": 8}, "video": {"format": "jpgs"},
                        "feature_dim": 263}, indent=2).encode()
    files = _mutants(tmp_path, "set", [state], lambda r, d, p: mutate_text(r, d, p, json_like=True), 150, ".json",
                     SEED + 8)
    rows = _run(tmp_path, [(p, "fuzz_adapters:build_state", "") for p in files])
    assert _outcomes(rows).get("refused", 0) > 40


def _humanml3d_dir(d: Path) -> dict[str, bytes]:
    return {
        "index.csv": b"source_path,start_frame,end_frame,new_name\n./pose_data/KIT/3/walk_poses.npy,0,40,000000.npy\n"
                     b"./pose_data/KIT/3/run_poses.npy,10,-1,000001.npy\n",
        "splits/train.txt": b"000000\n000001\nM000000\n",
        "texts/000000.txt": b"a person walks forward.#a/DET person/NOUN#0.0#0.0\nwalking#walk/VERB#0.5#1.5\n",
        "texts/000001.txt": b"someone runs#someone/PRON run/VERB#0.0#0.0\n",
    }


def test_fuzz_annotations_and_split_files(tmp_path):
    """HumanML3D layouts (index.csv, texts/*.txt, splits/train.txt: one of them mutated per case), TMR
    annotations.json, and subset files (read_subset)."""
    rng = random.Random(SEED + 9)
    tmr = json.dumps({"00001": {"path": "KIT/3/walk_poses", "duration": 2.0,
                                "annotations": [{"seg_id": "00001_0", "text": "a person walks", "start": 0.0,
                                                 "end": 2.0}]},
                      "00002": {"path": "KIT/3/run_poses", "duration": 1.0, "annotations": []}}).encode()
    cases = []
    for i in range(160):
        d = tmp_path / f"h3d{i:03d}"
        files = _humanml3d_dir(d)
        target = rng.choice(sorted(files))
        for rel, data in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(data)
        mutate_text(rng, files[target], d / target)
        cases.append((d / "index.csv", "fuzz_adapters:annotations", ""))
    for i in range(100):
        d = tmp_path / f"tmr{i:03d}"
        d.mkdir()
        mutate_text(rng, tmr, d / "annotations.json", json_like=True)
        cases.append((d / "annotations.json", "fuzz_adapters:annotations", ""))
    for i in range(100):
        d = tmp_path / f"subset{i:03d}"
        d.mkdir()
        mutate_text(rng, b"000000\n000001\n000002\n", d / "nsim_test.txt")
        cases.append((d / "nsim_test.txt", "fuzz_adapters:subset", ""))
    rows = _run(tmp_path, cases)
    assert _outcomes(rows).get("ok", 0) > 20 and _outcomes(rows).get("refused", 0) > 20


# ------------------------------------------------------------------------------------ tar bombs (issue 24)
# The loader's own tar reading (lavimo.dataset.shards.stream._tar_samples over lavimo.dataset.shards.format.iter_tar_members, with the
# product's caps) on two bombs: a gzip file named .tar (decompressing would give a member ~1000x its size) and a
# sample of many members of unknown kinds (kept in memory until the sample ends, before the fix). The child
# imports the loader first (torch: a few hundred MiB), then reports its peak RSS before and after the read: the
# growth is what the shard cost.
_TAR_BOMB_CHILD = PEAK + r'''
import json, sys, tarfile
from lavimo.dataset.shards.stream import _Skips, _tar_samples

def peak():
    return peak_kib() / 1024

before = peak()
skips = _Skips()
out = {}
try:
    out["keys"] = [(s["__key__"], sorted(k for k in s if not k.startswith("__"))) for s in _tar_samples(sys.argv[1],
                                                                                                         skips)]
except (tarfile.TarError, OSError, EOFError, ValueError) as exc:  # what _read_tars counts as shard_unreadable
    out["refused"] = f"{type(exc).__name__}: {exc}"
out.update(counts=dict(skips.counts), before=before, growth=peak() - before)
print(json.dumps(out))
'''
#: what reading one bomb shard may add to the loader process's peak RSS (one member read at a time, the biggest
#: here being a few KB; the readers' buffers: a few MiB)
TAR_BOMB_GROWTH_MIB = 48


def _tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _tar_bomb(path: Path) -> dict:
    m = run_python(_TAR_BOMB_CHILD, path, timeout=120)
    assert not m.timed_out and m.returncode == 0, f"rc={m.returncode} {m.stderr[-3000:]}"
    return json.loads(m.stdout.strip().splitlines()[-1])


def test_compressed_tar_is_refused_unread(tmp_path):
    """A gzip stream named ``.tar`` (40 KB on disk, a 48 MiB motion.npy inside) is refused with one message
    naming it; nothing is decompressed."""
    import gzip

    from lavimo.dataset.shards.format import npy_bytes

    base = _tar_base()
    bomb = _tar_bytes(_tar_base_members()[:4] + [("000002.motion.npy", npy_bytes(np.zeros((48 << 20) // 4 - 32,
                                                                                          np.float32)))])
    path = tmp_path / "train-000000.tar"
    path.write_bytes(gzip.compress(bomb, compresslevel=9))
    assert path.stat().st_size < 200_000
    got = _tar_bomb(path)
    assert "keys" not in got, got
    assert "gzip-compressed" in got["refused"] and path.name in got["refused"], got
    assert got["growth"] < TAR_BOMB_GROWTH_MIB, got
    # bzip2 and xz too; a plain tar with the same members reads
    import bz2
    import lzma

    for comp, kind in ((bz2.compress, "bzip2"), (lzma.compress, "xz")):
        path.write_bytes(comp(base))
        got = _tar_bomb(path)
        assert kind + "-compressed" in got.get("refused", ""), got
    path.write_bytes(base)
    assert [k for k, _ in _tar_bomb(path)["keys"]] == ["000001", "000002"]


def test_many_members_per_sample_are_not_kept(tmp_path):
    """One sample with 1500 members of unknown kinds (128 KiB each, 188 MiB in all) between its real members:
    they are skipped unread (``member_kind``), the sample keeps only its members, memory does not grow with them;
    a member above its kind's cap (a 2 MiB meta.json) is refused unread (``member_size``)."""
    members = dict(_tar_base_members())
    junk = b"\x01" * (128 << 10)
    order = [(n, d) for n, d in members.items() if n.startswith("000001.")][:2]
    order += [(f"000001.extra{i:04d}.bin", junk) for i in range(1500)]
    order += [(n, d) for n, d in members.items() if n.startswith("000001.")][2:]
    order += [("000002.meta.json", b" " * (2 << 20))]
    order += [(n, d) for n, d in members.items() if n.startswith("000002.") and not n.endswith("meta.json")]
    path = tmp_path / "train-000000.tar"
    path.write_bytes(_tar_bytes(order))
    got = _tar_bomb(path)
    assert got.get("keys") == [["000001", ["meta.json", "motion.npy", "sent.npy", "texts.json"]],
                               ["000002", ["motion.npy", "sent.npy", "texts.json"]]], got
    assert got["counts"] == {"member_kind": 1500, "member_size": 1}, got
    assert got["growth"] < TAR_BOMB_GROWTH_MIB, got
