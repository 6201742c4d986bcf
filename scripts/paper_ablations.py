#!/usr/bin/env python
"""Train the rows of the LAVIMO paper's Tables 2-6, evaluate them, print each table beside the paper's numbers.

    python scripts/paper_ablations.py [all|train|table] --shards SHARDS --out runs/ablations [--tables all]
        [--rows tmr,ours,...] [--preset paper] [--epochs N] [--set FIELD=VALUE ...] [--random-init] [--device D]
        [--split test] [--protocol threshold|all] [--launcher CMD] [--in-process] [--dry-run] [--force]
        [-- TRAIN.PY FLAGS...]

The rows and the paper's figures are data (``evaluation/paper/lavimo_tables.json``); :func:`switch_flags` turns a
row's switches into ``train.py`` flags. ``train``: each row's run in ``OUT/<run>/`` (complete: skipped, unfinished:
resumed; rows of the same config share one run). ``table``: each run evaluated under TMR's threshold protocol
(``--protocol all``: exact pairs, for templated captions) (skipped while its metrics are newer than the checkpoint), ``OUT/tables/paper_tables.{md,tex,json,png}`` written
(ours, the paper's, the difference; fusion weights). ``all`` (default): both. docs/paper.md says more.

Exit status: 0 every row done; 1 some row failed (the others still ran; the table marks it) or interrupted (SIGINT /
SIGTERM stop the running child; rerun to continue); 2 usage or set-up error (bad flags; a data file row with unknown
switches or a missing paper number; a run directory of another config; shards of another dataset), one line on
stderr naming the file and field.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lavimo") is None:  # the checkout is the package: installed, not put on sys.path
    print("lavimo is not installed: run `pip install -e .` in the checkout (or make venv)", file=sys.stderr)
    sys.exit(2)

from lavimo.core.atomic import write_json, write_text  # noqa: E402
from lavimo.core.errors import BadInputError, SetupError, print_error  # noqa: E402
from lavimo.core.keyids import check_keyid, child_path  # noqa: E402
from lavimo.core.process import run_stoppable  # noqa: E402
from lavimo.core.stop import StopSignals  # noqa: E402

PROG = "paper_ablations.py"
DATA = REPO / "evaluation" / "paper" / "lavimo_tables.json"
TRAIN_PY, EVALUATE_PY = REPO / "train.py", REPO / "evaluate.py"
#: each switch value of a Table 2 row -> its train.py flags (the config fields: docs/model.md)
SWITCHES = {
    "modalities": {"MT": ["--modalities", "tm"], "MTV": ["--modalities", "tmv"]},
    "distilbert": {"frozen": ["--freeze-text"], "unfrozen": ["--set", "freeze_text=false"]},
    "negative_filtering": {"tmr": ["--negative-filtering", "tmr"], "soft": ["--negative-filtering", "soft"],
                           "ours": ["--negative-filtering", "lavimo"]},
    "reconstruction": {"none": ["--recon-weight", "0"], "plain": ["--no-fusion"], "fusion": ["--set", "fusion=true"]},
}
#: a sweep's parameter -> (its train.py flag, ``{}`` = the row's value; its name in the paper's header)
SWEEPS = {"recon_weight": ("--recon-weight {}", "λ_recon"), "negative_threshold": ("--threshold {}", "ε"),
          "batch_size": ("--batch-size {}", "B"), "latent_dim": ("--set latent_dim={}", "C")}
TASK_NAMES = {"t2m": "T→M", "m2t": "M→T", "v2m": "V→M"}
WEIGHTS = ("text", "video", "motion")
NOT_RESULT_FIELDS = {"num_workers", "log_every", "eval_every", "checkpoint_every"}  # rows differing only here share
CONTINUABLE_FIELDS = NOT_RESULT_FIELDS | {"epochs", "extra"}  # a saved run may differ in these and be continued
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
EXIT_PREEMPTED = 75  # train.py stopped by a signal after a checkpoint (lavimo.training.preemption)


@dataclasses.dataclass
class Row:
    """A row of a paper table: its switches (a sweep row: its base row's, plus ``parameter`` = ``value``) and the
    paper's numbers by column (``t2m_R1``: R@1 in %; ``t2m_MedR``: median rank)."""

    table: str
    name: str  # the row's id and, unless it shares another row's run, its run directory
    label: str
    switches: dict[str, str]
    paper: dict[str, float]
    parameter: str | None = None
    value: float | None = None


@dataclasses.dataclass
class Table:
    name: str
    caption: str
    dataset: str
    threshold: float
    columns: list[str]
    rows: list[Row]
    parameter: str | None = None


def switch_flags(row: Row) -> list[str]:
    """The one place a row becomes a run: its switches (and sweep value) as ``train.py`` flags added to the
    preset's. Every switch is given explicitly, so a row does not depend on the preset's defaults."""
    flags = [f for key, options in SWITCHES.items() for f in options[row.switches[key]]]
    if row.parameter is not None:
        flags += SWEEPS[row.parameter][0].format(_num_text(row.value)).split()
    return flags


def _num_text(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() and abs(v) >= 1 else repr(v)


def _number(path: Path, field: str, v: Any, what: str = "a number") -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadInputError(path, field, f"expected {what}, got {json.dumps(v)[:40]}")
    return float(v)


def _load_row(path: Path, field: str, r: Any, t: Table, base: Row | None) -> Row:
    if not isinstance(r, dict):
        raise BadInputError(path, field, "expected an object")
    known = {"value", "metrics"} if base else {"row", "metrics", *SWITCHES}
    unknown = sorted(set(r) - known)
    if unknown:
        raise BadInputError(path, f"{field}.{unknown[0]}", f"unknown switch (known: {', '.join(sorted(known))})")
    metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
    missing = [c for c in t.columns if c not in metrics]
    if missing:
        raise BadInputError(path, f"{field}.metrics.{missing[0]}", "missing paper number")
    paper = {c: _number(path, f"{field}.metrics.{c}", metrics[c], "the paper's number") for c in t.columns}
    if base is not None:
        value = _number(path, f"{field}.value", r.get("value"))
        return Row(t.name, f"{t.parameter}-{_num_text(value).replace('.', 'p')}", _num_text(value),
                   dict(base.switches), paper, t.parameter, value)
    for key, options in SWITCHES.items():
        if r.get(key) not in options:
            raise BadInputError(path, f"{field}.{key}", f"unknown switch value {r.get(key)!r} (known: "
                                f"{', '.join(options)})")
    if not isinstance(r.get("row"), str) or not r["row"].isalnum():
        raise BadInputError(path, f"{field}.row", "expected the row's name (letters and digits)")
    return Row(t.name, r["row"].lower(), r["row"], {k: r[k] for k in SWITCHES}, paper)


def _load_table(path: Path, name: str, t: Any, base: dict[str, Row]) -> Table:
    if not isinstance(t, dict) or not isinstance(t.get("rows"), list) or not t["rows"]:
        raise BadInputError(path, f"{name}.rows", "expected a non-empty list of rows")
    cols = t.get("columns")
    if not isinstance(cols, list) or not cols or not all(
            isinstance(c, str) and c.partition("_")[0] in TASK_NAMES and c.partition("_")[2] for c in cols):
        raise BadInputError(path, f"{name}.columns", f"expected names TASK_METRIC, TASK one of {list(TASK_NAMES)}")
    param = t.get("parameter")
    if param is not None and param not in SWEEPS:
        raise BadInputError(path, f"{name}.parameter", f"unknown sweep parameter {param!r} (known: {list(SWEEPS)})")
    if param is not None and t.get("sweep_base") not in base:
        raise BadInputError(path, f"{name}.sweep_base", f"expected the name of a table2 row, one of {list(base)}")
    table = Table(name, str(t.get("caption", name)), str(t.get("dataset", "")),
                  _number(path, f"{name}.threshold", t.get("threshold", 0.8)), cols, [], param)
    table.rows = [_load_row(path, f"{name}.rows[{i}]", r, table, base.get(t.get("sweep_base")) if param else None)
                  for i, r in enumerate(t["rows"])]
    return table


def load_tables(path: str | Path = DATA) -> tuple[dict[str, Table], dict[str, float], str]:
    """The data file -> (tables by name, the paper's fusion weights, the source). Raises BadInputError naming
    the file and the field (an unknown switch, a missing paper number, ...)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(path, None, "data file not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(path, "json", f"not a readable JSON file ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("table2"), dict):
        raise BadInputError(path, "table2", "missing (the sweeps start from its rows)")
    tables = {"table2": _load_table(path, "table2", data["table2"], {})}
    base = {r.label: r for r in tables["table2"].rows}
    for name in sorted(k for k in data if k.startswith("table") and k != "table2"):
        tables[name] = _load_table(path, name, data[name], base)
    fw = data.get("fusion_attention_weights")
    fw = fw if isinstance(fw, dict) else {}
    fusion = {m: _number(path, f"fusion_attention_weights.{m}", fw.get(m), "the paper's number") for m in WEIGHTS}
    return tables, fusion, str(data.get("source", ""))


def select_rows(tables: dict[str, Table], tables_arg: str, rows_arg: str | None) -> list[Row]:
    names = list(tables) if tables_arg == "all" else [n.strip() for n in tables_arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in tables]
    if unknown or not names:
        raise SetupError(f"--tables: unknown table {', '.join(unknown) or repr(tables_arg)} (tables: "
                         f"{', '.join(tables)}, or all)")
    rows = [r for n in names for r in tables[n].rows]
    wanted = {w.strip().lower() for w in (rows_arg or "").split(",") if w.strip()}
    unknown = sorted(wanted - {r.name for r in rows})
    if unknown or (rows_arg is not None and not wanted):
        raise SetupError(f"--rows: unknown row {', '.join(unknown) or repr(rows_arg)}; rows of {', '.join(names)}: "
                         f"{', '.join(dict.fromkeys(r.name for r in rows))}")
    return [r for r in rows if not wanted or r.name in wanted]


def shard_facts(shards: Path, tables: list[Table]) -> dict[str, Any]:
    """``feature_dim`` (the train manifest's), ``dataset`` and ``fps`` (its first sample's meta.json) of a shard
    set; a set of a published dataset (KIT-ML, HumanML3D) other than a selected table's raises BadInputError."""
    from lavimo.dataset.shards.format import SampleMeta, manifest_path, manifest_shards, read_manifest, shard_members

    for split in ("train", "val"):
        if not manifest_path(shards, split).is_file():
            raise SetupError(f"{manifest_path(shards, split)}: not found; --shards needs a shard set with train and "
                             "val splits (build it with build-shards)")
    m = read_manifest(shards, "train")
    facts: dict[str, Any] = {"feature_dim": m.get("feature_dim"), "dataset": None, "fps": None}
    with contextlib.suppress(OSError, ValueError, EOFError, BadInputError, IndexError, StopIteration):
        first = Path(manifest_shards(shards, "train", m)[0][1])
        meta = SampleMeta.parse(next(d for _, d in shard_members(first, want=lambda n: n.endswith(".meta.json"))))
        facts["dataset"], facts["fps"] = meta.dataset, meta.fps
    have = "".join(c for c in str(facts["dataset"] or ("kitml" if facts["feature_dim"] == 251 else "")).lower()
                   if c.isalnum())
    for t in tables:
        if have in ("kitml", "humanml3d") and have != "".join(c for c in t.dataset.lower() if c.isalnum()):
            raise BadInputError(manifest_path(shards, "train"), "dataset", f"the shards hold "
                                f"{facts['dataset'] or 'KIT-ML features (251)'} but {t.name} is on {t.dataset}")
    return facts


@dataclasses.dataclass
class Resolved:
    """A row as a train.py run: ``argv`` without ``--out``/``--resume``, its config, and ``run`` = its run
    directory's name (the first row of the data file with the same config)."""

    row: Row
    argv: list[str]
    cfg: Any
    run: str


def resolve_rows(tables: dict[str, Table], shards: str, preset: str, common: list[str]) -> dict[str, Resolved]:
    """Every row of every table (run sharing does not depend on the selection) -> Resolved, by row name; the
    config as train.py resolves it, ``common`` (dataset, command-line and ``--`` flags) after the row's flags."""
    import lavimo.training.cli as train_cli
    from lavimo.training.config import load_run_config

    out: dict[str, Resolved] = {}
    first: dict[str, str] = {}
    for row in (r for t in tables.values() for r in t.rows):
        what = f"{row.name} ({shlex.join(switch_flags(row))} + command-line flags)"
        argv = ["--shards", shards, "--preset", preset, *switch_flags(row), *common]
        buf = io.StringIO()  # argparse's usage text swallowed: a bad flag is one SetupError line
        try:
            with contextlib.redirect_stderr(buf):
                a = train_cli.parse_args(argv)
        except SystemExit:
            raise SetupError(f"{what}: {(buf.getvalue().strip().splitlines() or ['bad arguments'])[-1]}") from None
        moved = [f for f, ok in (("--out", a.out is None), ("--shards", a.shards == shards),
                                 ("--preset", a.preset == preset), ("--resume", not a.resume)) if not ok]
        if moved:
            raise SetupError(f"train.py flags: {', '.join(moved)} may not be given (this script sets them)")
        try:
            cfg = load_run_config(preset, **train_cli.config_overrides(a))
        except FileNotFoundError as exc:
            raise SetupError(f"--preset: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise SetupError(f"{what}: {' '.join(str(exc).split())}") from None
        if row.switches.get("reconstruction") in ("plain", "fusion") and cfg.flat().get("recon_weight") == 0:
            raise SetupError(f"row {row.name}: reconstruction {row.switches['reconstruction']!r} resolves to "
                             "recon_weight 0 (from the preset or --set): give it a positive recon_weight")
        key = json.dumps({k: v for k, v in cfg.flat().items() if k not in NOT_RESULT_FIELDS}, sort_keys=True,
                         default=str)
        out[row.name] = Resolved(row, argv + ([] if "--no-progress" in argv else ["--no-progress"]), cfg,
                                 first.setdefault(key, row.name))
    return out


def run_state(run_dir: Path, cfg: Any) -> tuple[str, str]:
    """``("fresh"|"resume"|"complete", detail)`` of a run directory. A saved config that differs from ``cfg`` in a
    field that changes the result (another preset or switches) raises BadInputError naming its config.json and
    the field."""
    from lavimo.model.checkpoint import read_checkpoint_metadata
    from lavimo.training.config import load_run_config

    saved_path = run_dir / "config.json"
    if saved_path.is_file():
        try:
            saved = load_run_config(saved_path).flat()
        except (OSError, ValueError, TypeError) as exc:
            raise BadInputError(saved_path, "json", f"unreadable ({' '.join(str(exc).split())[:120]})") from None
        want = cfg.flat()
        changed = [k for k in sorted(want) if saved.get(k) != want[k] and k not in CONTINUABLE_FIELDS]
        if changed:
            raise BadInputError(saved_path, changed[0], f"a run of another config (saved {saved.get(changed[0])!r}, "
                                f"this row wants {want[changed[0]]!r}; {len(changed)} field(s) differ): remove "
                                "the directory or choose another --out")
    if not (run_dir / "checkpoints" / "last.state.safetensors").is_file():
        return "fresh", ""
    try:
        extra = read_checkpoint_metadata(run_dir / "checkpoints" / "last.safetensors")["extra"]
        epoch, batch = int(extra.get("epoch", -1)), int(extra.get("batch_in_epoch", 0))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return "resume", "last checkpoint unreadable"
    if epoch >= cfg.train.epochs and batch == 0:
        return "complete", f"epoch {epoch}/{cfg.train.epochs}"
    return "resume", f"from epoch {epoch}/{cfg.train.epochs}, batch {batch}"


def run_tool(script: Path, argv: list[str], log_path: Path, stop: StopSignals, in_process: bool = False,
             launcher: Sequence[str] | None = None) -> int:
    """Run train.py / evaluate.py, its output appended to ``log_path``; its exit status.

    The stop signals only *record* (``stop``), so none can land between ``Popen`` starting the child and this
    function holding it: the child is polled and, once a signal was recorded, stopped (SIGTERM, SIGKILL after
    30 s); then (or when train.py says it was stopped) KeyboardInterrupt is raised. ``in_process``:
    ``module.main(argv)`` here (a crash is status 1)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*(launcher or [sys.executable]), str(script), *argv]
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
        fh.flush()
        if stop():  # a stop recorded before the child started: start none
            raise KeyboardInterrupt
        if in_process:
            rc = _run_in_process(script.stem, argv, fh)
        else:  # its own session; one SIGTERM once a stop was recorded, SIGKILL 30 s later
            rc = run_stoppable(cmd, stop, kill_after_s=30, stdout=fh, stderr=subprocess.STDOUT)
    if stop() or (script == TRAIN_PY and rc == EXIT_PREEMPTED):  # train.py itself was stopped (in process too)
        raise KeyboardInterrupt  # the child was stopped; main() says how to continue
    return rc


def _run_in_process(name: str, argv: list[str], fh) -> int:
    import importlib
    import logging
    import traceback

    module = importlib.import_module({"train": "lavimo.train", "evaluate": "lavimo.evaluation.cli"}[name])
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers[:] = [logging.StreamHandler(fh)]  # the tool's logging.basicConfig is then a no-op
    root.setLevel(logging.INFO)
    # main's StopSignals only records SIGINT; the tool in this process would never see it: Ctrl-C raises
    # KeyboardInterrupt here (or reaches the tool's own handler) for the call's duration
    old_int = _swap_sigint(signal.default_int_handler)
    try:
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            rc = module.main(list(argv))
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Exception:  # noqa: BLE001 - one row's crash must not stop the others
        traceback.print_exc(file=fh)
        rc = 1
    finally:
        root.handlers[:], root.level = saved
        if old_int is not None:
            _swap_sigint(old_int)
    return int(rc or 0)


def _swap_sigint(handler):
    """Install ``handler`` for SIGINT; the previous one (None off the main thread, where it cannot be set)."""
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None


def launcher_processes(launcher: str | None) -> int:
    """Processes per node of a ``--launcher`` (torchrun's --nproc_per_node / --nproc-per-node; 1 without it; 2 for
    a value that is not a number, e.g. ``gpu``): Table 5's batch size is per process."""
    words = shlex.split(launcher or "")
    for i, w in enumerate(words):
        flag, eq, val = w.partition("=")
        if flag in ("--nproc_per_node", "--nproc-per-node"):
            val = val if eq else (words[i + 1] if i + 1 < len(words) else "")
            return int(val) if val.isdigit() else 2
    return 1


def error_line(log_path: Path) -> str:
    """The last line of the log's last command that looks like an error (else its last line), and the log."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")[-65536:]
    except OSError:
        text = ""
    lines = [ln.strip() for ln in text.rpartition("\n=== ")[2].splitlines()[1:] if ln.strip()]
    pick = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    return f"{pick[:300]} (log: {log_path})"


def train_rows(selected: list[Row], res: dict[str, Resolved], args, stop: StopSignals) -> list[str]:
    """Train each selected row's run once (complete: skipped, unfinished: resumed); a line per failed run."""
    out, runs = Path(args.out), list(dict.fromkeys(res[r.name].run for r in selected))
    states = {run: run_state(child_path(out, run), res[run].cfg) for run in runs}  # every refusal before any work
    launcher = shlex.split(args.launcher) if args.launcher else None
    failed = []
    for i, run in enumerate(runs, 1):
        also = [r.name for r in selected if res[r.name].run == run and r.name != run]
        head = f"[{i}/{len(runs)}] {run}" + (f" (also {', '.join(also)})" if also else "")
        (state, detail), run_dir = states[run], child_path(out, run)
        argv = [*res[run].argv, "--out", str(run_dir), *(["--resume"] if state == "resume" else [])]
        if state == "complete":
            print(f"{head}: skipped, complete ({detail})", flush=True)
        elif args.dry_run:
            print(f"{head}: would {'train' if state == 'fresh' else f'resume ({detail})'}\n  "
                  f"{shlex.join([*(launcher or [sys.executable]), str(TRAIN_PY), *argv])}", flush=True)
        else:
            print(f"{head}: {'training' if state == 'fresh' else f'resuming {detail}'} -> {run_dir}", flush=True)
            t0, log_path = time.perf_counter(), child_path(out / "logs", f"{run}-train.log")
            rc = run_tool(TRAIN_PY, argv, log_path, stop, args.in_process, launcher)
            print(f"{head}: " + (f"done in {time.perf_counter() - t0:.1f} s" if rc == 0 else
                                 f"FAILED, exit {rc}: {error_line(log_path)}"), flush=True)
            failed += [f"{run}: train.py exit {rc}"] if rc else []
    return failed


def evaluate_run(run_dir: Path, args, stop: StopSignals) -> dict[str, Any]:
    """The ``--protocol``'s numbers of a run: ``tasks`` (``{"t2m": {"R@1": ...}}``), ``n``, ``fusion``;
    evaluated unless an evaluation of this checkpoint (newer than it) on these shards exists. ``{"error": ...}``
    when there are none."""
    from lavimo.evaluation.cli import resolve_checkpoint

    try:
        checkpoint = resolve_checkpoint(run_dir, None)
    except FileNotFoundError:
        return {"error": f"{run_dir}: no checkpoint (not trained)"}
    eval_dir = child_path(run_dir / "eval", f"table-{args.split}")
    metrics, info_path = eval_dir / "metrics.json", eval_dir / "eval_info.json"
    try:  # an earlier evaluation of this checkpoint on these shards counts
        info = json.loads(info_path.read_text(encoding="utf-8"))
        done = metrics.stat().st_mtime >= checkpoint.stat().st_mtime and Path(str(info.get("shards"))).resolve() \
            == Path(args.shards).resolve() and info.get("threshold") == args.threshold \
            and args.protocol in (info.get("protocols") or [])
    except (OSError, ValueError, AttributeError):
        done = False
    if args.force or not done:
        if args.dry_run:
            return {"error": "dry run"}
        argv = ["--run", str(run_dir), "--shards", args.shards, "--split", args.split, "--protocol", args.protocol,
                "--threshold", repr(args.threshold), "--tasks", "t2m", "m2t", "v2m", "--out", str(eval_dir),
                "--no-progress", *(["--device", args.device] if args.device else [])]
        log_path = child_path(Path(args.out) / "logs", f"{run_dir.name}-eval-{args.split}.log")
        rc = run_tool(EVALUATE_PY, argv, log_path, stop, args.in_process)
        if rc != 0:
            return {"error": f"evaluate.py exit {rc}: {error_line(log_path)}"}
    try:
        proto = json.loads(metrics.read_text(encoding="utf-8"))[args.protocol]
        info = json.loads(info_path.read_text(encoding="utf-8"))
        return {"tasks": {t: v for t, v in proto.items() if isinstance(v, dict)}, "n": info.get("n"),
                "fusion": info.get("fusion_weights") or None}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {"error": f"{metrics}: unreadable ({' '.join(str(exc).split())[:120]})"}


def column_value(result: dict[str, Any], column: str) -> float | None:
    """Our number of a column ``t2m_R1`` / ``v2m_MedR`` (metrics.json's ``R@1`` / ``MedR``), None if absent."""
    task, _, metric = column.partition("_")
    v = result.get("tasks", {}).get(task, {}).get(metric if metric == "MedR" else f"R@{metric[1:]}")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def table_json(tables: dict[str, Table], selected: list[Row], res: dict[str, Resolved], results: dict[str, dict],
               paper_fusion: dict[str, float], source: str, facts: dict, args) -> dict[str, Any]:
    """What the renderers print: per table and row ours, the paper's and the difference (ours - paper)."""
    out: dict[str, Any] = {"source": source, "split": args.split, "protocol": args.protocol,
                           "threshold": args.threshold, "shards": facts,
                           "tables": {}}
    for t in tables.values():
        rows = []
        for r in (r for r in selected if r.table == t.name):
            result = results[res[r.name].run]
            ours = {c: column_value(result, c) for c in t.columns}
            rows.append({"row": r.name, "label": r.label, "switches": r.switches, "value": r.value,
                         "run": res[r.name].run, "ours": ours, "paper": r.paper, "n": result.get("n"),
                         "diff": {c: None if ours[c] is None else round(ours[c] - r.paper[c], 4) for c in t.columns},
                         "error": result.get("error")})
        if rows:
            out["tables"][t.name] = {"caption": t.caption, "dataset": t.dataset, "parameter": t.parameter,
                                     "columns": t.columns, "rows": rows}
    fw = results.get(res["ours"].run, {}).get("fusion") if "ours" in res else None
    out["fusion_weights"] = {"ours": fw, "paper": paper_fusion, "diff": fw and {
        m: round(float(fw[m]) - paper_fusion[m], 4) for m in WEIGHTS if m in fw}}
    return out


def _grid(t: dict) -> list[list[str]]:
    """A table's header and cells: the setting, then per row a line of ours, of the paper's and of Δ."""
    metric = {c: c.split("_")[1] if c.endswith("MedR") else "R@" + c.split("_R")[1] for c in t["columns"]}
    setting = ["Row", *(k.replace("_", " ") for k in SWITCHES)] if t["parameter"] is None else \
        [SWEEPS[t["parameter"]][1]]
    grid = [[*setting, "", *(f"{TASK_NAMES[c.split('_')[0]]} {metric[c]}" for c in t["columns"])]]
    for r in t["rows"]:
        cells = [r["label"], *r["switches"].values()][:len(setting)]
        for kind, vals, f in (("ours", r["ours"], "{:.2f}"), ("paper", r["paper"], "{:.2f}"),
                              ("Δ", r["diff"], "{:+.2f}")):
            grid.append([*(cells if kind == "ours" else [""] * len(cells)), kind,
                         *("n/a" if vals[c] is None else f.format(vals[c]) for c in t["columns"])])
    return grid


def _fusion_grid(fw: dict) -> list[list[str]]:
    fw = {**fw, "Δ": fw["diff"]}
    return [["", *WEIGHTS]] + [[kind, *("n/a" if not fw[kind] or m not in fw[kind] else f.format(fw[kind][m])
                                        for m in WEIGHTS)]
                               for kind, f in (("ours", "{:.4f}"), ("paper", "{:.4f}"), ("Δ", "{:+.4f}"))]


def _protocol(data: dict, t: dict) -> str:
    ns, f = sorted({r["n"] for r in t["rows"] if r["n"] is not None}), data["shards"]
    return (f"Paper: {t['dataset']}. Ours: {f['dataset'] or 'unknown'} shards (feature_dim {f['feature_dim']}, "
            f"{f['fps']} fps), split {data['split']}{', N = ' + '/'.join(map(str, ns)) if ns else ''}. TMR's "
            + (f"\"all with threshold\" protocol ({data['threshold']:g})" if data.get("protocol", "threshold")
               == "threshold" else "\"all\" protocol (exact pairs, no threshold; not the paper's)")
            + "; R@k in %, MedR = median rank; "
            "Δ = ours − paper.")


def render(data: dict, latex: bool = False) -> str:
    """The tables in the paper's layout as Markdown, or (``latex``) as LaTeX tabulars with the notes as comments."""
    tex = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "→": r"$\rightarrow$", "−": "-", "Δ": r"$\Delta$",
           "λ": r"$\lambda$", "ε": r"$\epsilon$"}
    esc = (lambda s: "".join(tex.get(c, c) for c in str(s))) if latex else (lambda s: str(s).replace("|", "\\|"))
    blocks = [(t["caption"], _protocol(data, t), _grid(t), len(t["columns"]),
               [f"n/a {r['row']}: {r['error']}" for r in t["rows"] if r["error"]]) for t in data["tables"].values()]
    blocks.append(("Fusion attention weights of the Ours run (mean over the split)", "",
                   _fusion_grid(data["fusion_weights"]), len(WEIGHTS), []))
    out = []
    for title, note, grid, n_numbers, errors in blocks:
        n_text = len(grid[0]) - n_numbers
        if latex:
            out += [f"% {esc(title)}", *([f"% {esc(note)}"] if note else []), r"\begin{tabular}{" + "l" * n_text
                    + "r" * (len(grid[0]) - n_text) + "}", r"\hline", " & ".join(map(esc, grid[0])) + r" \\",
                    r"\hline", *(" & ".join(map(esc, g)) + r" \\" for g in grid[1:]), r"\hline", r"\end{tabular}",
                    *(f"% {esc(e)}" for e in errors), ""]
        else:
            out += [f"### {title}", "", *([note, ""] if note else []), "| " + " | ".join(map(esc, grid[0])) + " |",
                    "|" + "---|" * n_text + "---:|" * (len(grid[0]) - n_text),
                    *("| " + " | ".join(map(esc, g)) + " |" for g in grid[1:]), *(f"- {esc(e)}" for e in errors), ""]
    return "\n".join(out + [("% " if latex else "") + f"Paper: {data['source']}", ""])


def render_png(data: dict, path: Path) -> None:
    """Grouped bars of each table's first column (T→M R@1) per row, ours beside the paper's; a panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tables = list(data["tables"].values())
    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    for ax, t in zip(axes[0], tables):
        col, x = t["columns"][0], np.arange(len(t["rows"]))
        ax.bar(x - 0.2, [r["ours"][col] or 0.0 for r in t["rows"]], 0.4, label="ours")
        ax.bar(x + 0.2, [r["paper"][col] for r in t["rows"]], 0.4, label="paper")
        ax.set_xticks(x, [r["label"] for r in t["rows"]], rotation=45, fontsize=8)
        ax.set_title(t["caption"].split(".")[0] + (f" ({SWEEPS[t['parameter']][1]})" if t["parameter"] else ""))
        ax.set_ylabel(_grid(t)[0][-len(t["columns"])] + " (%)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_tables(selected: list[Row], res: dict[str, Resolved], loaded, facts: dict, args, stop) -> int:
    """Evaluate every selected row's run, print the Markdown tables, write OUT/tables/; 1 if a row has no result."""
    runs = list(dict.fromkeys(res[r.name].run for r in selected))
    for run in runs:  # a run directory of another config is refused (exit 2) before anything is evaluated
        run_state(child_path(Path(args.out), run), res[run].cfg)
    results: dict[str, dict] = {}
    for i, run in enumerate(runs, 1):
        results[run] = evaluate_run(child_path(Path(args.out), run), args, stop)
        print(f"[{i}/{len(runs)}] {run}: " + (f"FAILED: {results[run]['error']}" if "error" in results[run] else
                                              "evaluated"), file=sys.stderr, flush=True)
    if args.dry_run:
        return EXIT_OK
    data, out = table_json(loaded[0], selected, res, results, loaded[1], loaded[2], facts, args), Path(args.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    write_text(out / "tables" / "paper_tables.md", render(data))
    write_text(out / "tables" / "paper_tables.tex", render(data, latex=True))
    write_json(out / "tables" / "paper_tables.json", data)
    render_png(data, out / "tables" / "paper_tables.png")
    print(render(data), end="", flush=True)
    print(f"tables written to {out / 'tables'}/paper_tables.{{md,tex,json,png}}", file=sys.stderr)
    return EXIT_FAILED if any("error" in r for r in results.values()) else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Train the LAVIMO paper's Tables 2-6 and print them beside "
                                "the paper's numbers.", epilog="Arguments after -- go to every train.py command.")
    p.add_argument("mode", nargs="?", choices=["all", "train", "table"], default="all",
                   help="train the rows, evaluate them and write the tables, or both (default)")
    p.add_argument("--shards", required=True, help="shard set directory (build-shards output)")
    p.add_argument("--out", "--runs", default="runs/ablations", help="directory of the runs and tables")
    p.add_argument("--data", default=str(DATA), help="the paper's tables (default: %(default)s)")
    p.add_argument("--tables", "--table", default="all", help="table2,...,table6 or all (default)")
    p.add_argument("--rows", default=None, help="only these rows, comma separated (e.g. tmr,ours,recon_weight-0p01)")
    p.add_argument("--preset", default="paper", help="preset (paper, demo, tiny or a JSON file)")
    p.add_argument("--epochs", type=int, default=None, help="epochs of every row (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config field for every row (repeatable); wins over a row's switches")
    p.add_argument("--random-init", action="store_true", help="random backbones (no pretrained weights needed)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"])
    p.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    p.add_argument("--protocol", default="threshold", choices=["threshold", "all"],
                   help="TMR protocol of the tables: threshold (the paper's, default) or all (exact pairs: for "
                        "templated captions, where the threshold counts every caption of the same action as correct)")
    p.add_argument("--launcher", default=None, metavar="CMD", help="run train.py with this, e.g. 'torchrun "
                   "--nproc_per_node=4'")
    p.add_argument("--in-process", action="store_true", help="call the tools' main() in this process")
    p.add_argument("--dry-run", action="store_true", help="print the train.py commands, run nothing")
    p.add_argument("--force", action="store_true", help="re-evaluate even when the metrics exist")
    return p


def run(args: argparse.Namespace, passthrough: list[str], stop: StopSignals) -> int:
    loaded = load_tables(args.data)
    selected = select_rows(loaded[0], args.tables, args.rows)
    check_keyid(args.split, None, "--split")
    if args.launcher is not None and (args.in_process or not shlex.split(args.launcher)):
        raise SetupError("--launcher: give a command (e.g. 'torchrun --nproc_per_node=4'), without --in-process")
    if launcher_processes(args.launcher) > 1 and any(r.parameter == "batch_size" for r in selected):
        raise SetupError(f"--launcher {args.launcher!r}: Table 5's batch size is per process, so B would be "
                         "multiplied by the process count: run its rows with one process per node")
    facts = shard_facts(Path(args.shards), [loaded[0][t] for t in dict.fromkeys(r.table for r in selected)])
    args.threshold = loaded[0][selected[0].table].threshold
    common = [*(["--set", f"feature_dim={facts['feature_dim']}"] if facts["feature_dim"] else []),
              *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
              *[f for s in args.set for f in ("--set", s)], *(["--random-init"] if args.random_init else []),
              *(["--device", args.device] if args.device else []), *passthrough]
    res = resolve_rows(loaded[0], args.shards, args.preset, common)
    failed: list[str] = []
    if args.mode in ("all", "train"):
        from lavimo.model.weights import missing_pretrained

        missing = sorted({m for r in selected for m in missing_pretrained(res[res[r.name].run].cfg.model)})
        if missing and not args.dry_run:
            raise SetupError(f"missing pretrained weights (or pass --random-init): {'; '.join(missing)}")
        failed = train_rows(selected, res, args, stop)
        if args.dry_run:
            print(f"dry run: {len(selected)} row(s), nothing was run", flush=True)
            return EXIT_OK
    rc = write_tables(selected, res, loaded, facts, args, stop) if args.mode in ("all", "table") else EXIT_OK
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    if stop():  # a signal during the tables: not a success
        raise KeyboardInterrupt
    return EXIT_FAILED if failed else rc


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    try:
        args = build_parser().parse_args(argv[:cut])
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_SETUP
    stop = StopSignals(prog=PROG, on_first="stopping the running child")
    try:
        with stop.installed():
            return run(args, argv[cut + 1:], stop)
    except (SetupError, BadInputError) as exc:
        return print_error(PROG, exc, EXIT_SETUP)
    except OSError as exc:
        return print_error(PROG, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", EXIT_SETUP)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted: rerun the same command to continue (complete rows are skipped, unfinished runs "
              "resume)", file=sys.stderr, flush=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
