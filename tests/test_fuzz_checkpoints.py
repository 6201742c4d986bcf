"""Fuzz and memory-bomb tests of the checkpoint / weights / run-directory readers (issue 24).

Readers: ``model.load_checkpoint`` / ``read_checkpoint_metadata`` (LAVIMO safetensors checkpoints), the pretrained
CLIP weights loader (``lavimo.model.weights._load_any``: safetensors or a weights-only torch zip), ``load_training_state``
(``last.state.safetensors``, a weights-only torch zip), a run's ``config.json`` (``train.py``'s config loading) and
``run.json`` (``lavimo.training.run_dir.load_json``), ``metrics.csv`` (``lavimo.training.run_dir.MetricsTable``, read back on
resume).

Mutated files are generated with hypothesis (derandomized, so CI sees the same files every run) and all of one
test's files are read in ONE child process (:func:`tests.fixtures.untrusted.run_python`: address-space cap, its
own peak RSS from wait4), which prints one JSON line per file. The contract per file (docs/security.md): it loads,
or it is refused with :class:`BadInputError` (train.py's ``SetupError`` for config.json) whose one-line message
names the file; never another exception. The child's peak RSS over all files (the first is the benign original,
the baseline) must stay under the baseline + :data:`RSS_SLACK_MIB`; the whole child under :data:`CHILD_SECONDS`.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.fixtures.untrusted import assert_clean_refusal, run_measured, run_python

REPO = Path(__file__).resolve().parents[1]

#: peak RSS a mutated file may add to the benign file's (MiB); torch alone is ~900 MiB here, a bomb is gigabytes
RSS_SLACK_MIB = 300
#: wall-clock bound of one child reading every mutated file of a test (seconds)
CHILD_SECONDS = 90
#: peak RSS of evaluate.py refusing a crafted checkpoint (MiB): torch + transformers + open_clip imported and the
#: tiny checkpoint's metadata read are about 1.2 GiB here; the same file cost 13 GiB before the checks
EVALUATE_RSS_MIB = 1600

#: derandomized (the same files on every run), no shrinking (one example is one child process of many files)
FUZZ = settings(derandomize=True, deadline=None, max_examples=1, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))

# one child reads many files: argv[1] = JSON list of [kind, path]; one JSON line per file on stdout
CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from lavimo.core.errors import BadInputError
from lavimo.model import load_checkpoint
from lavimo.model.weights import _load_any
from lavimo.core.errors import SetupError
from lavimo.training.config import _load_config
from lavimo.training.loop import load_training_state
from lavimo.training.run_dir import MetricsTable, load_json

READERS = {
    "ckpt": lambda p: load_checkpoint(p),
    "weights": lambda p: _load_any(Path(p)),
    "state": lambda p: load_training_state(p, complete=True),
    "config": lambda p: _load_config(p, {}),
    "runjson": lambda p: load_json(p),
    "metrics": lambda p: MetricsTable(p).truncate_after(1),
}
for kind, path in json.loads(sys.argv[1]):
    t0 = time.monotonic()
    rec = {"kind": kind, "path": path}
    try:
        READERS[kind](path)
        rec["outcome"] = "ok"
    except (BadInputError, SetupError) as exc:
        rec["outcome"] = "refused"
        rec["message"] = str(exc)
    except Exception as exc:
        rec["outcome"] = "unexpected"
        rec["message"] = f"{type(exc).__name__}: {exc}"[:500]
    rec["seconds"] = time.monotonic() - t0
    rec["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(rec), flush=True)
"""


def _run_child(files: list[tuple[str, Path]]) -> list[dict]:
    """Read every (kind, path) in one measured child; its records (the first file is the benign baseline)."""
    m = run_python(CHILD, json.dumps([[k, str(p)] for k, p in files]), timeout=CHILD_SECONDS, cwd=REPO)
    detail = f"rc={m.returncode} rss={m.peak_rss_mib:.0f} MiB t={m.seconds:.1f}s stderr: {m.stderr[-3000:]}"
    assert m.returncode == 0 and not m.timed_out, detail
    assert "Traceback" not in m.stderr, detail
    recs = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == len(files), detail
    base = recs[0]
    assert base["outcome"] == "ok", base
    for r in recs[1:]:
        assert r["outcome"] in ("ok", "refused"), r
        if r["outcome"] == "refused":
            assert Path(r["path"]).name in r["message"], r
        assert r["maxrss_mib"] < base["maxrss_mib"] + RSS_SLACK_MIB, (r, base)
    assert m.peak_rss_mib < base["maxrss_mib"] + RSS_SLACK_MIB, detail
    print(f"{len(recs) - 1} mutated files ({sum(r['outcome'] == 'refused' for r in recs)} refused): peak RSS "
          f"{m.peak_rss_mib:.0f} MiB (benign file {base['maxrss_mib']:.0f} MiB), slowest file "
          f"{max(r['seconds'] for r in recs[1:]):.2f} s, child {m.seconds:.1f} s")
    return recs


# ---------------------------------------------------------------------------------------------------------
# files to mutate


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, Path]:
    """A tiny LAVIMO checkpoint, a CLIP-style safetensors and .pt state dict, a training state, config.json and
    run.json, as train.py writes them."""
    from safetensors.torch import save_file

    from lavimo.model import build_model, load_preset, save_checkpoint
    from lavimo.training.config import load_run_config
    from lavimo.training.loop import rng_state, save_training_state

    root = tmp_path_factory.mktemp("originals")
    torch.manual_seed(0)
    model = build_model(load_preset("tiny"))
    save_checkpoint(model, root / "ckpt.safetensors", extra={"step": 1})
    visual = {f"visual.{k}": v.detach().clone().contiguous() for k, v in model.video.visual.state_dict().items()}
    save_file(visual, str(root / "clip.safetensors"))
    torch.save(visual, root / "clip.pt")
    opt = torch.optim.AdamW(model.motion.parameters() if hasattr(model, "motion") else model.parameters())
    save_training_state(root / "last.state.safetensors", {
        "epoch": 0, "batch_in_epoch": 1, "step": 1, "epochs": 1, "steps_per_epoch": 4, "world_size": 1,
        "optimizer": opt.state_dict(), "scheduler": {"last_epoch": 1}, "scaler": {}, "rng": [rng_state()],
        "best_score": None, "nonfinite": {"total": 0}, "period": {}})
    cfg = load_run_config("tiny")
    (root / "config.json").write_text(json.dumps({**cfg.to_dict(), "trainer": {"world_size": 1}}, indent=2))
    (root / "run.json").write_text(json.dumps({"sessions": [{"command": ["train.py"]}], "shards": {}}, indent=2))
    (root / "metrics.csv").write_text("epoch,step,lr,val_score,best\n0,1,0.001,12.5,1\n0,2,0.001,11.0,0\n")
    return {"metrics": root / "metrics.csv", "ckpt": root / "ckpt.safetensors", "clip_st": root / "clip.safetensors", "clip_pt": root / "clip.pt",
            "state": root / "last.state.safetensors", "config": root / "config.json", "runjson": root / "run.json"}


def _bytes_mutation(data: bytes, kind: str, a: int, b: int) -> bytes:
    """One blind mutation of ``data``: truncation at a random offset, a flipped byte (in the first 4 KB half of
    the time: headers, zip directories), a run of 0xFF over 8 bytes (a huge length), or garbage appended."""
    n = len(data)
    if kind == "truncate":
        return data[: a % n]
    if kind == "flip":
        at = a % min(n, 4096) if b & 1 else a % n
        return data[:at] + bytes([data[at] ^ (1 + b % 255)]) + data[at + 1:]
    if kind == "ones":
        at = a % max(1, n - 8)
        return data[:at] + b"\xff" * 8 + data[at + 8:]
    return data + bytes([b]) * (1 + a % 4096)


def _safetensors_mutation(data: bytes, kind: str, a: int, b: int) -> bytes:
    """A mutation that knows the safetensors layout: header length, a tensor's shape / offsets / dtype, the
    metadata's config or text assets (huge sizes, deep nesting), or a blind one (:func:`_bytes_mutation`)."""
    header, body = _split(data)
    names = sorted(k for k in header if k != "__metadata__")
    name = names[a % len(names)]
    big = [1 << 62, 1 << 40, 2**31, 10**9, -1][b % 5]
    if kind == "hlen":
        return struct.pack("<Q", [len(data), 1 << 63, 10**8 - 1, 10**8 + 1, len(data) - 7][b % 5]) + data[8:]
    if kind == "shape":
        header[name]["shape"] = [big] + header[name]["shape"][1:]
    elif kind == "offsets":
        header[name]["data_offsets"] = [header[name]["data_offsets"][0], big] if b & 1 else [big, big]
    elif kind == "dtype":
        header[name]["dtype"] = ["F64", "I8", "X9", "", "BOOL"][b % 5]
    elif kind == "nest" and "__metadata__" in header:
        key = sorted(header["__metadata__"])[a % len(header["__metadata__"])]
        header["__metadata__"][key] = "[" * (5000 + a % 5000) + "]" * (5000 + a % 5000)
    elif kind == "config" and "__metadata__" in header and "lavimo_config" in header["__metadata__"]:
        conf = json.loads(header["__metadata__"]["lavimo_config"])
        field = ["latent_dim", "ff_dim", "max_motion_len", "feature_dim", "text_layers", "image_size"][a % 6]
        conf[field] = [2**20, 10**6, 2**31, 65536, 30000][b % 5] // (2 if field == "latent_dim" else 1)
        if field == "latent_dim":
            conf["num_heads"] = 2
        header["__metadata__"]["lavimo_config"] = json.dumps(conf)
    elif kind == "assets" and "__metadata__" in header and "lavimo_text_assets" in header["__metadata__"]:
        assets = json.loads(header["__metadata__"]["lavimo_text_assets"])
        conf = json.loads(assets["config.json"])
        key = ["vocab_size", "hidden_size", "max_position_embeddings", "num_hidden_layers", "intermediate_size"][a % 5]
        conf[key] = [10**8, 2**31, 10**6, 123456, 2**40][b % 5]
        assets["config.json"] = json.dumps(conf)
        header["__metadata__"]["lavimo_text_assets"] = json.dumps(assets)
    else:
        return _bytes_mutation(data, kind if kind in ("truncate", "flip", "ones") else "append", a, b)
    return _join(header, body)


ST_KINDS = ["hlen", "shape", "offsets", "dtype", "nest", "config", "assets", "truncate", "flip", "ones", "append"]
BLIND_KINDS = ["truncate", "flip", "ones", "append"]


def _mutations(kinds: list[str], n: int):
    """``n`` mutations (kind, a, b): every kind in turn (so each one is tried), ``a`` and ``b`` drawn from a
    random generator seeded by hypothesis (a list drawn element by element starts from near-identical items)."""
    def build(seed: int) -> list[tuple[str, int, int]]:
        rng = random.Random(seed)
        return [(kinds[i % len(kinds)], rng.randrange(2**31), rng.randrange(256)) for i in range(n)]
    return st.integers(0, 2**32 - 1).map(build)


def _write_all(tmp_path: Path, original: Path, muts, mutate, kind: str) -> list[tuple[str, Path]]:
    data = original.read_bytes()
    out = [(kind, original)]
    for i, (how, a, b) in enumerate(muts):
        p = tmp_path / f"m{i:03d}-{how}{original.suffix}"
        p.write_bytes(mutate(data, how, a, b))
        out.append((kind, p))
    return out


# ---------------------------------------------------------------------------------------------------------
# the fuzz tests


@FUZZ
@given(muts=_mutations(ST_KINDS, 3 * len(ST_KINDS)))
def test_fuzz_lavimo_checkpoints_and_memory_bombs(originals, tmp_path_factory, muts):
    tmp = tmp_path_factory.mktemp("fuzz-ckpt")
    bombs = [("ckpt", _bomb(originals["ckpt"], tmp / f"bomb-{h}.safetensors", h)) for h in BOMBS]
    recs = _run_child(_write_all(tmp, originals["ckpt"], muts, _safetensors_mutation, "ckpt") + bombs)
    assert sum(r["outcome"] == "refused" for r in recs) >= len(recs) // 2, recs  # the mutations do bite
    # the bombs: refused, by the checks made before allocation
    for (how, expected), r in zip(BOMBS.items(), recs[-len(BOMBS):]):
        assert r["outcome"] == "refused" and expected in r["message"], (how, r)


@FUZZ
@given(muts=_mutations(ST_KINDS, 2 * len(ST_KINDS)), pt_muts=_mutations(BLIND_KINDS, 16))
def test_fuzz_pretrained_weights(originals, tmp_path_factory, muts, pt_muts):
    tmp = tmp_path_factory.mktemp("fuzz-weights")
    files = _write_all(tmp, originals["clip_st"], muts, _safetensors_mutation, "weights")
    files += _write_all(tmp, originals["clip_pt"], pt_muts, _bytes_mutation, "weights")[1:]
    _run_child(files)


@FUZZ
@given(muts=_mutations(BLIND_KINDS, 32))
def test_fuzz_training_state(originals, tmp_path_factory, muts):
    tmp = tmp_path_factory.mktemp("fuzz-state")
    _run_child(_write_all(tmp, originals["state"], muts, _bytes_mutation, "state"))


def _json_mutation(data: bytes, kind: str, a: int, b: int) -> bytes:
    """config.json / run.json mutations: deep nesting, wrong types, huge numbers, or a blind byte mutation."""
    obj = json.loads(data)
    if kind == "nest":
        return b'{"model": ' + b"[" * (1000 + a % 100000) + b"]" * (1000 + a % 100000) + b"}"
    if kind == "types" and "model" in obj:
        field = sorted(obj["model"])[a % len(obj["model"])]
        obj["model"][field] = [None, [1], {"a": 1}, "x", 1e308, -(2**70), True][b % 7]
        return json.dumps(obj).encode()
    if kind == "types":
        obj["sessions"] = [None, 7, "x", {"a": [1]}][b % 4]
        obj["shards"] = [[], {"splits": 3}, None][b % 3]
        return json.dumps(obj).encode()
    if kind == "trust" and "model" in obj:
        obj["model"].update(trust_weights_pickle=True, video_weights="/tmp/evil.pt")
        return json.dumps(obj).encode()
    return _bytes_mutation(data, kind if kind in BLIND_KINDS else "flip", a, b)


def _csv_mutation(data: bytes, kind: str, a: int, b: int) -> bytes:
    """metrics.csv mutations: a field longer than csv's limit, a step that is not a number, no step column, or a
    blind byte mutation."""
    if kind == "longfield":
        return data + b"0," + b"9" * (200_000 + a % 1000) + b",x,1,0\n"
    if kind == "step":
        return data + ["0,abc,1,1,0\n", "0,,1,1,0\n", "0\n", "0,1e999999,1,1,0\n"][b % 4].encode()
    if kind == "header":
        return data.replace(b"step", b"stp", 1)
    return _bytes_mutation(data, kind, a, b)


@FUZZ
@given(muts=_mutations(["nest", "types", "trust", *BLIND_KINDS], 28),
       run_muts=_mutations(["nest", "types", *BLIND_KINDS], 12),
       csv_muts=_mutations(["longfield", "step", "header", *BLIND_KINDS], 14))
def test_fuzz_run_directory_files(originals, tmp_path_factory, muts, run_muts, csv_muts):
    tmp = tmp_path_factory.mktemp("fuzz-json")
    files = _write_all(tmp, originals["config"], muts, _json_mutation, "config")
    files += _write_all(tmp, originals["runjson"], run_muts, _json_mutation, "runjson")
    files += _write_all(tmp, originals["metrics"], csv_muts, _csv_mutation, "metrics")
    _run_child(files)


# ---------------------------------------------------------------------------------------------------------
# the memory bombs of the issue, one by one, through the API and a command


def _bomb(original: Path, dst: Path, how: str) -> Path:
    if how == "items":  # a 30 MB header (under the 32 MiB cap) of 15 M JSON values: 4.5 GB if parsed
        raw = b'{"t": {"dtype": "F32", "shape": [' + b"0," * 15_000_000 + b'0], "data_offsets": [0, 0]}}'
        dst.write_bytes(struct.pack("<Q", len(raw)) + raw)
        return dst
    header, body = _split(original.read_bytes())
    meta = header["__metadata__"]
    if how == "config":  # a checkpoint whose config describes a model of billions of weights
        conf = json.loads(meta["lavimo_config"])
        conf.update(latent_dim=16384, ff_dim=65536, num_heads=2, max_motion_len=2**20)
        meta["lavimo_config"] = json.dumps(conf)
    elif how == "text-config":  # its text backbone's config.json: a 100M-word vocabulary
        assets = json.loads(meta["lavimo_text_assets"])
        conf = json.loads(assets["config.json"])
        conf.update(vocab_size=10**8, hidden_size=64)
        assets["config.json"] = json.dumps(conf)
        meta["lavimo_text_assets"] = json.dumps(assets)
    elif how == "shape":  # a tensor declared 2^40 elements over the bytes of a small one
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [2**20, 2**20]
    dst.write_bytes(_join(header, body))
    return dst


#: the crafted files of the issue's "memory bombs" class, and what their refusal says
BOMBS = {"config": "refused before allocating", "text-config": "refused before allocating",
         "shape": "data_offsets span", "items": "JSON values"}


def test_crafted_checkpoint_through_evaluate_exits_2_with_one_line(originals, tmp_path):
    bomb = _bomb(originals["ckpt"], tmp_path / "bomb.safetensors", "config")
    m = run_measured([os.sys.executable, str(REPO / "evaluate.py"), "--run", str(tmp_path), "--checkpoint",
                      str(bomb), "--shards", str(tmp_path / "no-shards"), "--device", "cpu", "--no-progress"],
                     cwd=REPO)
    assert_clean_refusal(m, bomb, codes=(2,), max_rss_mib=EVALUATE_RSS_MIB)
    print(f"refused: exit {m.returncode}, peak RSS {m.peak_rss_mib:.0f} MiB, {m.seconds:.1f} s")
    assert "refused before allocating" in m.stderr, m.stderr
    assert len([ln for ln in m.stderr.splitlines() if "error:" in ln]) == 1, m.stderr
