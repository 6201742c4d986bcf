#!/usr/bin/env python
"""Train the LAVIMO paper's ablation rows (Table 2, and the Table 3-6 sweeps) and print their retrieval table.

    python scripts/paper_ablations.py train --shards SHARDS --out runs/ablations [--table table2|NAME,...|all]
        [--rows ours,row5,...] [--preset paper] [--epochs N] [--set FIELD=VALUE ...] [--random-init]
        [--device D] [--launcher 'torchrun --nproc_per_node=4'] [--dry-run] [--in-process] [-- TRAIN.PY FLAGS...]
    python scripts/paper_ablations.py table --shards SHARDS --runs runs/ablations [--table ...] [--rows ...]
        [--split test] [--threshold 0.8] [--format md|latex] [--output FILE] [--no-paper] [--force]
        [--device D] [--dry-run] [--in-process] [-- EVALUATE.PY FLAGS...]

The rows are data (``model/presets/ablations/paper_tables.json``, or ``--data FILE``): each row is a name (its run
directory ``OUT/<name>``), a label, the ``train.py`` flags added to the preset, where that mapping comes from, and
the paper's numbers (null until a user fills them in). ``train`` runs ``train.py`` once per row, as a user would
(a subprocess with this Python; ``--in-process`` calls ``lavimo.train.main(argv)`` instead): a row whose run is complete
is skipped, an unfinished one is continued with ``--resume``. Rows that resolve to the same config (e.g. the
epsilon sweep's 0.8 and ``ours`` under the paper preset) share the run of the first such row in the data file.
``table`` runs ``evaluate.py --protocol threshold --tasks t2m m2t`` per run (TMR's "all with threshold"
protocol; skipped when that evaluation's metrics exist and are newer than the checkpoint) and prints the paper's
layout: rows x (text->motion, motion->text) x (R@1, R@5, R@10, MedR), ours with the paper's numbers under them
("—" where the data file has none).

Files written under ``--out``: ``OUT/<run>/`` (train.py's run directories; evaluations in
``OUT/<run>/eval/table-<split>/``), ``OUT/rows/<row>.json`` (which run a row uses and the exact command),
``OUT/logs/<run>-train.log`` and ``OUT/logs/<run>-eval-<split>.log`` (train.py / evaluate.py output).

Exit status: 0 every row done (or skipped); 1 some row failed or has no result (after finishing the others), or
the command was interrupted; 2 usage or set-up error (bad flags, data file, shard directory, missing pretrained
weights), one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python scripts/paper_ablations.py` from anywhere
    sys.path.insert(0, str(REPO))

from lavimo.core.atomic import write_json, write_text  # noqa: E402
from lavimo.core.errors import BadInputError  # noqa: E402
from lavimo.core.keyids import check_keyid, child_path  # noqa: E402
from lavimo.dataset.shards.format import manifest_path  # noqa: E402

DEFAULT_DATA = REPO / "model" / "presets" / "ablations" / "paper_tables.json"
TRAIN_PY = REPO / "train.py"
EVALUATE_PY = REPO / "evaluate.py"
DIRECTIONS = ("t2m", "m2t")
DIRECTION_NAMES = {"t2m": "T→M", "m2t": "M→T"}
METRICS = ("R@1", "R@5", "R@10", "MedR")
MISSING = "—"  # a paper value the data file does not hold
NO_RESULT = "n/a"  # a row of ours without numbers (not trained, evaluation failed)
EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
RESERVED_NAMES = {"rows", "logs"}  # OUT/rows/ and OUT/logs/ are ours, not run directories
ROW_KEYS = {"name", "label", "flags", "mapping", "mapping_is_ours", "paper"}
TABLE_KEYS = {"title", "paper_table", "paper_table_note", "values_are_ours", "rows"}
# config fields that do not change what a run learns: two rows differing only in these share one run
NOT_RESULT_FIELDS = {"num_workers", "log_every", "eval_every", "checkpoint_every"}
# fields in which a saved run may differ from a row and still be continued into it (more epochs extend it)
CONTINUABLE_FIELDS = NOT_RESULT_FIELDS | {"epochs", "extra"}

log = logging.getLogger("paper_ablations")


class SetupError(Exception):
    """A usage or set-up problem: one line on stderr, exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: stop the current child, report, exit 1."""


# --------------------------------------------------------------------------------------------------------------
# the data file


@dataclasses.dataclass
class Row:
    """One row of a paper table: ``flags`` are train.py flags added to the preset; ``paper[d][m]`` the paper's
    number for direction ``d`` (t2m, m2t) and metric ``m`` (R@1, R@5, R@10 in percent; MedR), None when unknown."""

    name: str
    label: str
    flags: list[str]
    table: str
    index: int
    mapping: str = ""
    mapping_is_ours: bool = False
    paper: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)
    paper_source: str = ""

    @property
    def field(self) -> str:
        return f"tables.{self.table}.rows[{self.index}]"


@dataclasses.dataclass
class Table:
    name: str
    title: str
    paper_table: str
    note: str
    values_are_ours: bool
    rows: list[Row]


def load_data(path: str | os.PathLike) -> dict[str, Table]:
    """Read and validate the rows file; raises BadInputError naming the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BadInputError(path, None, "data file not found") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(path, "json", f"not a readable JSON file ({' '.join(str(exc).split())[:200]})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict) or not data["tables"]:
        raise BadInputError(path, "tables", "expected a JSON object with a non-empty 'tables' object")
    tables: dict[str, Table] = {}
    seen: dict[str, str] = {}
    for tname, t in data["tables"].items():
        tfield = f"tables.{tname}"
        check_keyid(tname, path, "tables (table name)")
        if not isinstance(t, dict):
            raise BadInputError(path, tfield, "expected an object with 'rows'")
        unknown = sorted(k for k in t if k not in TABLE_KEYS and not k.startswith("_"))
        if unknown:
            raise BadInputError(path, tfield, f"unknown keys {unknown} (known: {sorted(TABLE_KEYS)})")
        if not isinstance(t.get("rows"), list) or not t["rows"]:
            raise BadInputError(path, f"{tfield}.rows", "expected a non-empty list of rows")
        strings = {k: t.get(k, "") for k in ("title", "paper_table", "paper_table_note")}
        for k, v in strings.items():
            if not isinstance(v, str):
                raise BadInputError(path, f"{tfield}.{k}", f"expected a string, got {type(v).__name__}")
        if not isinstance(t.get("values_are_ours", False), bool):
            raise BadInputError(path, f"{tfield}.values_are_ours", "expected true or false")
        rows = [_load_row(path, tname, i, r) for i, r in enumerate(t["rows"])]
        for row in rows:
            low = row.name.lower()
            if low in RESERVED_NAMES:
                raise BadInputError(path, f"{row.field}.name", f"{row.name!r} is reserved (OUT/{low}/ holds this "
                                    "script's records); choose another name")
            if low in seen:
                raise BadInputError(path, f"{row.field}.name", f"{row.name!r} is also the name of {seen[low]} "
                                    "(names are run directories: unique across all tables, ignoring case)")
            seen[low] = row.field
        tables[tname] = Table(tname, strings["title"] or tname, strings["paper_table"], strings["paper_table_note"],
                              bool(t.get("values_are_ours", False)), rows)
    return tables


def _load_row(path: Path, table: str, index: int, r: Any) -> Row:
    field = f"tables.{table}.rows[{index}]"
    if not isinstance(r, dict):
        raise BadInputError(path, field, "expected an object")
    unknown = sorted(k for k in r if k not in ROW_KEYS and not k.startswith("_"))
    if unknown:
        raise BadInputError(path, field, f"unknown keys {unknown} (known: {sorted(ROW_KEYS)})")
    name = check_keyid(r.get("name"), path, f"{field}.name")
    label = r.get("label", name)
    mapping = r.get("mapping", "")
    for k, v in (("label", label), ("mapping", mapping)):
        if not isinstance(v, str):
            raise BadInputError(path, f"{field}.{k}", f"expected a string, got {type(v).__name__}")
    flags = r.get("flags", [])
    if not isinstance(flags, list) or not all(isinstance(f, str) and "\0" not in f and len(f) <= 1000
                                               for f in flags):
        raise BadInputError(path, f"{field}.flags", "expected a list of train.py arguments (strings)")
    ours = r.get("mapping_is_ours", False)
    if not isinstance(ours, bool):
        raise BadInputError(path, f"{field}.mapping_is_ours", "expected true or false")
    paper, source = _load_paper(path, f"{field}.paper", r.get("paper"))
    return Row(name=name, label=label, flags=list(flags), table=table, index=index, mapping=mapping,
               mapping_is_ours=ours, paper=paper, paper_source=source)


def _load_paper(path: Path, field: str, p: Any) -> tuple[dict[str, dict[str, float | None]], str]:
    """The paper's numbers of a row: ``{"t2m": {"R@1": x|null, ...}, "m2t": {...}, "source": "..."}`` or null."""
    out: dict[str, dict[str, float | None]] = {d: {m: None for m in METRICS} for d in DIRECTIONS}
    if p is None:
        return out, ""
    if not isinstance(p, dict):
        raise BadInputError(path, field, "expected an object (or null)")
    unknown = sorted(k for k in p if k not in (*DIRECTIONS, "source") and not k.startswith("_"))
    if unknown:
        raise BadInputError(path, field, f"unknown keys {unknown} (known: source, {', '.join(DIRECTIONS)})")
    source = p.get("source", "")
    if not isinstance(source, str):
        raise BadInputError(path, f"{field}.source", "expected a string")
    for d in DIRECTIONS:
        vals = p.get(d)
        if vals is None:
            continue
        if not isinstance(vals, dict):
            raise BadInputError(path, f"{field}.{d}", f"expected an object of {', '.join(METRICS)}")
        bad = sorted(k for k in vals if k not in METRICS)
        if bad:
            raise BadInputError(path, f"{field}.{d}", f"unknown metrics {bad} (known: {', '.join(METRICS)})")
        for m, v in vals.items():
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BadInputError(path, f"{field}.{d}.{m}", f"expected a number or null, got {v!r}")
            out[d][m] = float(v)
    return out, source


def select_rows(tables: dict[str, Table], table_arg: str | None, rows_arg: str | None,
                data_path: Path) -> list[Row]:
    """The rows picked by ``--table`` (default table2; all tables when only ``--rows`` is given) and ``--rows``,
    in data-file order. Raises SetupError for an unknown table or row name."""
    if table_arg is None:
        names = list(tables) if rows_arg else (["table2"] if "table2" in tables else list(tables)[:1])
    elif table_arg.strip().lower() == "all":
        names = list(tables)
    else:
        names = [n.strip() for n in table_arg.split(",") if n.strip()]
        unknown = [n for n in names if n not in tables]
        if unknown or not names:
            raise SetupError(f"--table: unknown table {', '.join(unknown) or repr(table_arg)}; tables in "
                             f"{data_path}: {', '.join(tables)} (or all)")
    rows = [r for n in names for r in tables[n].rows]
    if rows_arg is None:
        return rows
    wanted = [w.strip().lower() for w in rows_arg.split(",") if w.strip()]
    by_name = {r.name.lower(): r for r in rows}
    unknown = [w for w in wanted if w not in by_name]
    if unknown or not wanted:
        raise SetupError(f"--rows: unknown row {', '.join(unknown) or repr(rows_arg)} in table(s) "
                         f"{', '.join(names)} of {data_path}; rows there: {', '.join(r.name for r in rows)}")
    keep = set(wanted)
    return [r for r in rows if r.name.lower() in keep]


# --------------------------------------------------------------------------------------------------------------
# resolving rows to train.py commands and configs


@dataclasses.dataclass
class Resolved:
    """A row as a train.py invocation: ``argv`` without ``--out``/``--resume``; ``run`` = the name of the run
    directory it trains into (its own name, or the first row of the data file with the same config)."""

    row: Row
    argv: list[str]
    cfg: Any  # lavimo.training.config.RunConfig
    key: str
    run: str = ""


def _parse_quietly(parse: Callable[[list[str]], argparse.Namespace], argv: list[str], what: str):
    """argparse with its usage text swallowed: a bad flag becomes one SetupError line naming ``what``."""
    buf = io.StringIO()
    try:
        with contextlib.redirect_stderr(buf):
            return parse(argv)
    except SystemExit as exc:
        lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
        msg = lines[-1] if lines else f"argument parsing failed (status {exc.code})"
        raise SetupError(f"{what}: {msg}") from None


def resolve_rows(tables: dict[str, Table], shards: str, preset: str, global_args: list[str],
                 passthrough: list[str], data_path: Path, warn_for: set[str] | None = None) -> dict[str, Resolved]:
    """Every row of every table (so run sharing does not depend on what is selected) -> Resolved, by row name.

    The config is resolved exactly as train.py does it (``lavimo.training.cli.parse_args``, ``config_overrides``,
    ``lavimo.training.config.load_run_config``). Flags that would move the run (``--out``, ``--shards``, ``--preset``, ``--resume``) are
    refused in the rows and after ``--``. Rows in ``warn_for`` (default all) get a warning when an option of
    this command line overrides one of their own flags.
    """
    import lavimo.core.errors
    import lavimo.training.cli as train_script
    from lavimo.training.config import load_run_config

    try:
        load_run_config(preset)
    except FileNotFoundError as exc:
        raise SetupError(f"--preset: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SetupError(f"--preset {preset}: {' '.join(str(exc).split())}") from None

    def parse(argv: list[str], what: str) -> argparse.Namespace:
        a = _parse_quietly(train_script.parse_args, ["--shards", shards, "--preset", preset, *argv], what)
        moved = [flag for flag, ok in (("--out", a.out is None), ("--shards", a.shards == shards),
                                        ("--preset", a.preset == preset), ("--resume", not a.resume)) if not ok]
        if moved:
            raise SetupError(f"{what}: {', '.join(moved)} may not be given there (this script sets them: "
                             "--shards / --preset / --out on its command line, --resume by itself)")
        return a

    def overrides(a: argparse.Namespace, what: str) -> dict[str, Any]:
        try:
            return train_script.config_overrides(a)
        except lavimo.core.errors.SetupError as exc:
            raise SetupError(f"{what}: {exc}") from None

    common = [*global_args, *passthrough]
    common_over = overrides(parse(common, "train.py flags (given here or after --)"), "train.py flags")
    out: dict[str, Resolved] = {}
    first_of_key: dict[str, str] = {}
    for t in tables.values():
        for row in t.rows:
            what = f"{data_path}: {row.field}.flags ({row.name})"
            row_over = overrides(parse(row.flags, what), what)
            clash = sorted(k for k in row_over if k in common_over and str(common_over[k]) != str(row_over[k]))
            if clash and (warn_for is None or row.name in warn_for):
                log.warning("row %s: %s from this command line override the row's own flags", row.name,
                            ", ".join(f"{k}={common_over[k]}" for k in clash))
            argv = [*row.flags, *common]
            a = parse(argv, what)
            try:
                cfg = load_run_config(preset, **overrides(a, what))
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise SetupError(f"{what}: {' '.join(str(exc).split())}") from None
            full = ["--shards", shards, "--preset", preset, *argv]
            if "--no-progress" not in full:
                full.append("--no-progress")  # train.py's output goes to a log file
            key = json.dumps({k: v for k, v in cfg.flat().items() if k not in NOT_RESULT_FIELDS},
                             sort_keys=True, default=str)
            run = first_of_key.setdefault(key, row.name)
            out[row.name] = Resolved(row=row, argv=full, cfg=cfg, key=key, run=run)
    return out


def run_state(run_dir: Path, cfg: Any) -> tuple[str, str]:
    """What a run directory needs: ``("fresh"|"resume"|"complete"|"conflict", detail)``.

    ``complete``: ``last.state.pt`` exists, the saved config matches ``cfg`` and ``last.safetensors`` says
    ``epoch >= cfg.train.epochs`` at batch 0. ``conflict``: the saved config differs from ``cfg`` in a field
    that changes the result (anything but :data:`CONTINUABLE_FIELDS`; detail names the fields). An unreadable config or checkpoint gives ``resume``
    (train.py then says what is wrong with it).
    """
    from lavimo.model.checkpoint import read_checkpoint_metadata
    from lavimo.training.config import load_run_config

    state = run_dir / "checkpoints" / "last.state.pt"
    if not state.is_file():
        return "fresh", ""
    try:
        saved = load_run_config(run_dir / "config.json").flat()
    except (OSError, ValueError, TypeError) as exc:
        return "resume", f"saved config unreadable ({' '.join(str(exc).split())[:120]})"
    want = cfg.flat()
    changed = [k for k in sorted(want) if saved.get(k) != want[k] and k not in CONTINUABLE_FIELDS]
    if changed:
        shown = "; ".join(f"{k}: saved {saved.get(k)!r}, wanted {want[k]!r}" for k in changed[:4])
        more = f" (+{len(changed) - 4} more)" if len(changed) > 4 else ""
        return "conflict", (f"{run_dir} holds a run with other settings ({shown}{more}); remove it or train "
                            "into another --out")
    try:
        extra = read_checkpoint_metadata(run_dir / "checkpoints" / "last.safetensors")["extra"]
        epoch, batch = int(extra.get("epoch", -1)), int(extra.get("batch_in_epoch", 0))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        return "resume", f"last checkpoint unreadable ({' '.join(str(exc).split())[:120]})"
    if epoch >= cfg.train.epochs and batch == 0:
        return "complete", f"epoch {epoch}/{cfg.train.epochs}"
    return "resume", f"from epoch {epoch}/{cfg.train.epochs}, batch {batch}"


# --------------------------------------------------------------------------------------------------------------
# running train.py / evaluate.py


def tool_command(script: Path, argv: Sequence[str], launcher: Sequence[str] | None = None) -> list[str]:
    """The exact command line a user would type: this Python (or ``launcher``, e.g. torchrun) on the script's
    absolute path."""
    return [*(launcher or [sys.executable]), str(script), *argv]


def run_tool(script: Path, argv: list[str], log_path: Path, in_process: bool,
             launcher: Sequence[str] | None = None) -> int:
    """Run train.py / evaluate.py with ``argv``; its output is appended to ``log_path``. Returns its exit status.

    Subprocess (default): this Python on the script; Ctrl-C / SIGTERM stop it (SIGTERM, then SIGKILL after 30 s)
    and re-raise. ``in_process``: ``module.main(argv)`` in this process with stdout, stderr and logging sent to
    the log (an uncaught exception is logged with its traceback and counts as status 1).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = tool_command(script, argv, launcher)
    with open(log_path, "a", encoding="utf-8") as fh:
        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'(in process) ' if in_process else ''}"
                 f"{shlex.join(cmd)}\n")
        fh.flush()
        if in_process:
            return _run_in_process(script.stem, argv, fh)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT)
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise


#: the module whose ``main`` each top-level script runs
_COMMAND_MODULES = {"train": "lavimo.train", "evaluate": "lavimo.evaluation.cli"}


def _run_in_process(script_name: str, argv: list[str], fh) -> int:
    import importlib

    module = importlib.import_module(_COMMAND_MODULES[script_name])
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.StreamHandler(fh)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers[:] = [handler]  # the tool's logging.basicConfig is then a no-op
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
            try:
                rc = module.main(list(argv))
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # noqa: BLE001 - one row's crash must not stop the others
                traceback.print_exc(file=fh)
                rc = 1
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        fh.flush()
        gc.collect()
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return int(rc or 0)


def error_line(log_path: Path) -> str:
    """The last line of a log that looks like an error (else its last line), for the progress report."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 65536))
            lines = [ln.strip() for ln in fh.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    lines = lines[next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("=== ")), -1) + 1:]
    pick = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    return pick if len(pick) <= 300 else pick[:297] + "..."


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


# --------------------------------------------------------------------------------------------------------------
# train


def cmd_train(args: argparse.Namespace, passthrough: list[str]) -> int:
    data_path = Path(args.data)
    tables = load_data(data_path)
    selected = select_rows(tables, args.table, args.rows, data_path)
    shards = Path(args.shards)
    for split in ("train", "val"):
        if not manifest_path(shards, split).is_file():
            raise SetupError(f"{manifest_path(shards, split)}: not found; --shards needs a shard set with train and val splits "
                             "(build it with build-shards)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SetupError(f"{out}: --out exists and is not a directory")
    global_args: list[str] = []
    if args.epochs is not None:
        global_args += ["--epochs", str(args.epochs)]
    for s in args.set:
        global_args += ["--set", s]
    if args.random_init:
        global_args.append("--random-init")
    if args.device:
        global_args += ["--device", args.device]
    resolved = resolve_rows(tables, args.shards, args.preset, global_args, passthrough, data_path,
                            warn_for={r.name for r in selected})
    launcher = shlex.split(args.launcher) if args.launcher else None
    if launcher is not None and (args.in_process or not launcher):
        raise SetupError("--launcher: give a command (e.g. 'torchrun --nproc_per_node=4'), without --in-process")

    from lavimo.model.weights import missing_pretrained

    missing = sorted({m for r in selected for m in missing_pretrained(resolved[resolved[r.name].run].cfg.model)})
    if missing:
        msg = (f"missing pretrained weights (nothing is downloaded; or pass --random-init): {'; '.join(missing)}")
        if not args.dry_run:
            raise SetupError(msg)
        print(f"warning: {msg}", file=sys.stderr)

    n = len(selected)
    outcome: dict[str, tuple[str, str]] = {}  # run -> (status, detail)
    done, skipped, failed = [], [], []
    for i, row in enumerate(selected, 1):
        res = resolved[row.name]
        run_dir = child_path(out, res.run)
        canon = resolved[res.run]
        head = f"[{i}/{n}] {row.name}"
        shared = "" if res.run == row.name else f" (same config as {res.run}: shares its run)"
        if res.run in outcome:  # a row sharing the run of a row already handled by this command
            status, detail = outcome[res.run]
            print(f"{head}: {status}{shared}{', ' + detail if detail else ''}", flush=True)
            if status == "FAILED":
                failed.append(row.name)
            elif not args.dry_run:
                skipped.append(row.name)
            continue
        state, detail = run_state(run_dir, canon.cfg)
        argv = [*canon.argv, "--out", str(run_dir)] + (["--resume"] if state == "resume" else [])
        cmd = tool_command(TRAIN_PY, argv, launcher)
        if state == "conflict":
            print(f"{head}: FAILED{shared}: {detail}", flush=True)
            failed.append(row.name)
            outcome[res.run] = ("FAILED", detail)
            continue
        if args.dry_run:
            what = {"fresh": "would train", "resume": f"would resume ({detail})",
                    "complete": f"complete ({detail}), would skip"}[state]
            print(f"{head}: {what}{shared} -> {_rel(run_dir)}", flush=True)
            if state != "complete":
                print(f"  {shlex.join(cmd)}", flush=True)
            outcome[res.run] = ("see above", "")
            continue
        if state == "complete":
            print(f"{head}: skipped, complete ({detail}){shared} -> {_rel(run_dir)}", flush=True)
            skipped.append(row.name)
            outcome[res.run] = ("skipped, complete", detail)
            _write_records(out, resolved, res.run, None)
            continue
        log_path = child_path(out / "logs", f"{res.run}-train.log")
        what = "training" if state == "fresh" else f"resuming {detail}"
        print(f"{head} ({row.label}): {what}{shared} -> {_rel(run_dir)}", flush=True)
        _write_records(out, resolved, res.run, cmd)
        t0 = time.perf_counter()
        rc = run_tool(TRAIN_PY, argv, log_path, args.in_process, launcher)
        dt = time.perf_counter() - t0
        if rc == 0:
            print(f"{head}: done in {dt:.1f} s", flush=True)
            done.append(row.name)
            outcome[res.run] = ("done", f"in {dt:.1f} s")
        else:
            why = error_line(log_path)
            print(f"{head}: FAILED, exit {rc} after {dt:.1f} s: {why} (log: {_rel(log_path)})", flush=True)
            failed.append(row.name)
            outcome[res.run] = ("FAILED", f"exit {rc}: {why}")
    if args.dry_run:
        print(f"dry run: {n} row(s), nothing was run" + (f"; {', '.join(failed)} would fail" if failed else ""))
        return EXIT_FAILED if failed else EXIT_OK
    print(f"train: {len(done)} done, {len(skipped)} skipped, {len(failed)} failed"
          + (f" ({', '.join(failed)})" if failed else "") + f"; runs in {_rel(out)}", flush=True)
    if not failed:
        table = [] if args.table is None else ["--table", args.table]
        rows = [] if args.rows is None else ["--rows", args.rows]
        print("next: " + shlex.join([sys.executable, _rel(Path(__file__)), "table", "--shards", args.shards,
                                     "--runs", args.out, *table, *rows]), flush=True)
    return EXIT_FAILED if failed else EXIT_OK


def _write_records(out: Path, resolved: dict[str, Resolved], run: str, cmd: list[str] | None) -> None:
    """OUT/rows/<row>.json for every row of the data file whose config is that of ``run`` (selected or not):
    which run directory its numbers come from, read by ``table``. ``cmd`` None keeps a recorded command."""
    canon = resolved[run]
    for res in resolved.values():
        if res.run != run:
            continue
        row = res.row
        path = child_path(out / "rows", f"{row.name}.json")
        rec = {"row": row.name, "table": row.table, "label": row.label, "run": run, "flags": row.flags,
               "train_argv": canon.argv}
        if cmd is not None:
            rec["command"] = cmd
        elif path.is_file():  # keep the command of the invocation that trained it
            with contextlib.suppress(OSError, ValueError):
                old = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(old, dict) and isinstance(old.get("command"), list) and old.get("run") == run:
                    rec["command"] = old["command"]
        write_json(path, rec)


# --------------------------------------------------------------------------------------------------------------
# table


@dataclasses.dataclass
class Result:
    """Our numbers for one run: ``values[d][m]``, ``n`` = samples of the split; or ``error``."""

    values: dict[str, dict[str, float]] | None = None
    n: int | None = None
    error: str = ""


def row_run_dir(runs: Path, row: Row) -> Path:
    """The run directory of a row: as recorded by ``train`` in RUNS/rows/<row>.json, else RUNS/<row>."""
    rec_path = child_path(runs / "rows", f"{row.name}.json")
    if rec_path.is_file():
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BadInputError(rec_path, "json", f"not readable ({' '.join(str(exc).split())[:120]})") from exc
        run = rec.get("run") if isinstance(rec, dict) else None
        return child_path(runs, check_keyid(run, rec_path, "run"))
    return child_path(runs, row.name)


def read_threshold_metrics(path: Path) -> tuple[dict[str, dict[str, float]], int | None]:
    """``metrics.json`` of evaluate.py -> the threshold protocol's t2m/m2t numbers and n (BadInputError if
    anything is missing or not a finite number)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadInputError(path, "json", f"not readable ({' '.join(str(exc).split())[:120]})") from exc
    proto = data.get("threshold") if isinstance(data, dict) else None
    if not isinstance(proto, dict):
        raise BadInputError(path, "threshold", "no results of the threshold protocol")
    values: dict[str, dict[str, float]] = {}
    for d in DIRECTIONS:
        task = proto.get(d)
        if not isinstance(task, dict):
            raise BadInputError(path, f"threshold.{d}", "missing")
        values[d] = {}
        for m in METRICS:
            v = task.get(m)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BadInputError(path, f"threshold.{d}.{m}", f"expected a finite number, got {v!r}")
            values[d][m] = float(v)
    n = proto.get("n")
    return values, (int(n) if isinstance(n, int) and not isinstance(n, bool) else None)


def existing_eval(out_dir: Path, checkpoint: Path, shards: Path, split: str, threshold: float) -> Result | None:
    """The numbers of an earlier evaluation in ``out_dir`` when it evaluated this checkpoint (and it has not
    changed since), shard set, split and threshold; else None."""
    metrics, info_path = out_dir / "metrics.json", out_dir / "eval_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        same = (isinstance(info, dict) and info.get("split") == split
                and isinstance(info.get("threshold"), (int, float))
                and abs(float(info["threshold"]) - threshold) < 1e-9
                and Path(str(info.get("checkpoint"))).resolve() == checkpoint.resolve()
                and Path(str(info.get("shards"))).resolve() == shards.resolve()
                and metrics.stat().st_mtime >= checkpoint.stat().st_mtime)
        if not same:
            return None
        values, n = read_threshold_metrics(metrics)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return Result(values, n)


def cmd_table(args: argparse.Namespace, passthrough: list[str]) -> int:
    data_path = Path(args.data)
    tables = load_data(data_path)
    selected = select_rows(tables, args.table, args.rows, data_path)
    split = check_keyid(args.split, None, "--split")
    if not 0.0 <= args.threshold <= 1.0:
        raise SetupError(f"--threshold must be in [0, 1] (TMR's score (cos + 1) / 2), got {args.threshold}")
    shards, runs = Path(args.shards), Path(args.runs)
    if not (shards / f"{split}.json").is_file():
        raise SetupError(f"{shards / (split + '.json')}: not found; --shards needs a shard set with the "
                         f"'{split}' split (build it with build-shards)")
    if not runs.is_dir():
        raise SetupError(f"{runs}: --runs directory not found (train the rows first: "
                         f"python scripts/paper_ablations.py train --shards {shards} --out {runs})")
    import lavimo.evaluation.cli as evaluate_script

    base_tail = ["--split", split, "--protocol", "threshold", "--threshold", repr(float(args.threshold)),
                 "--tasks", "t2m", "m2t"]
    extra = list(passthrough)
    if args.device:
        extra += ["--device", args.device]
    if "--no-progress" not in extra:
        extra.append("--no-progress")
    probe = _parse_quietly(evaluate_script.build_parser().parse_args,
                           ["--run", "R", "--shards", str(shards), *base_tail, "--out", "O", *extra],
                           "evaluate.py flags (after --)")
    moved = [f for f, ok in (("--run", probe.run == "R"), ("--shards", probe.shards == str(shards)),
                             ("--split", probe.split == split), ("--protocol", probe.protocol == ["threshold"]),
                             ("--tasks", probe.tasks == ["t2m", "m2t"]), ("--out", probe.out == "O"),
                             ("--threshold", probe.threshold == float(args.threshold)),
                             ("--checkpoint", probe.checkpoint is None), ("--from-sims", probe.from_sims is None))
             if not ok]
    if moved:
        raise SetupError(f"evaluate.py flags (after --): {', '.join(moved)} may not be given there (this script "
                         "sets them)")

    results: dict[Path, Result] = {}
    run_of: dict[str, Path] = {}
    runs_in_order: list[Path] = []
    for row in selected:
        try:
            run_dir = row_run_dir(runs, row)
        except BadInputError as exc:
            run_dir = child_path(runs, row.name)
            results.setdefault(run_dir, Result(error=str(exc)))
        run_of[row.name] = run_dir
        if run_dir not in runs_in_order:
            runs_in_order.append(run_dir)
    n = len(runs_in_order)
    for i, run_dir in enumerate(runs_in_order, 1):
        head = f"[{i}/{n}] {run_dir.name}"
        if run_dir in results:  # a bad record
            print(f"{head}: FAILED: {results[run_dir].error}", file=sys.stderr, flush=True)
            continue
        try:
            checkpoint = evaluate_script.resolve_checkpoint(run_dir, None)
        except FileNotFoundError:
            results[run_dir] = Result(error=f"{run_dir}: no checkpoint (not trained yet: run the train command)")
            print(f"{head}: FAILED: {results[run_dir].error}", file=sys.stderr, flush=True)
            continue
        eval_dir = child_path(run_dir / "eval", f"table-{split}")
        note = _training_note(run_dir)
        prev = None if args.force else existing_eval(eval_dir, checkpoint, shards, split, float(args.threshold))
        if prev is not None:
            results[run_dir] = prev
            print(f"{head}: skipped, metrics exist ({_rel(eval_dir / 'metrics.json')}){note}", file=sys.stderr,
                  flush=True)
            continue
        argv = ["--run", str(run_dir), "--shards", str(shards), *base_tail, "--out", str(eval_dir), *extra]
        if args.dry_run:
            print(f"{head}: would evaluate {checkpoint.name}{note}\n  {shlex.join(tool_command(EVALUATE_PY, argv))}",
                  file=sys.stderr, flush=True)
            results[run_dir] = Result(error="dry run")
            continue
        print(f"{head}: evaluating {_rel(checkpoint)} on {split}{note}", file=sys.stderr, flush=True)
        log_path = child_path(runs / "logs", f"{run_dir.name}-eval-{split}.log")
        t0 = time.perf_counter()
        rc = run_tool(EVALUATE_PY, argv, log_path, args.in_process)
        if rc != 0:
            results[run_dir] = Result(error=f"evaluate.py exit {rc}: {error_line(log_path)} (log: {_rel(log_path)})")
            print(f"{head}: FAILED, {results[run_dir].error}", file=sys.stderr, flush=True)
            continue
        try:
            values, n_samples = read_threshold_metrics(eval_dir / "metrics.json")
        except BadInputError as exc:
            results[run_dir] = Result(error=str(exc))
            print(f"{head}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        results[run_dir] = Result(values, n_samples)
        print(f"{head}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    if args.dry_run:
        print(f"dry run: {n} run(s), nothing was evaluated", file=sys.stderr)
        return EXIT_OK

    by_row = {name: results[d] for name, d in run_of.items()}
    render = render_latex if args.format == "latex" else render_markdown
    text = render(tables, selected, by_row, {r: run_of[r].name for r in run_of}, data_path=data_path,
                  split=split, threshold=float(args.threshold), show_paper=not args.no_paper)
    print(text, end="", flush=True)
    if args.output:
        write_text(args.output, text)
        print(f"table written to {args.output}", file=sys.stderr)
    missing = [r.name for r in selected if by_row[r.name].values is None]
    if missing:
        print(f"table: no numbers for {', '.join(missing)}", file=sys.stderr)
    return EXIT_FAILED if missing else EXIT_OK


def _training_note(run_dir: Path) -> str:
    """`` (training incomplete: epoch 3/400)`` when the run's last checkpoint is before its last epoch."""
    try:
        from lavimo.model.checkpoint import read_checkpoint_metadata
        from lavimo.training.config import load_run_config

        epochs = load_run_config(run_dir / "config.json").train.epochs
        extra = read_checkpoint_metadata(run_dir / "checkpoints" / "last.safetensors")["extra"]
        epoch = int(extra.get("epoch", 0))
    except (OSError, ValueError, TypeError, KeyError):
        return ""
    return f" (training incomplete: epoch {epoch}/{epochs})" if epoch < epochs else ""


# --------------------------------------------------------------------------------------------------------------
# rendering


def _fmt(v: float | None, missing: str) -> str:
    return missing if v is None else f"{v:.2f}"


def _table_blocks(tables: dict[str, Table], selected: list[Row]) -> list[tuple[Table, list[Row]]]:
    keep = {id(r) for r in selected}
    return [(t, [r for r in t.rows if id(r) in keep]) for t in tables.values() if any(id(r) in keep for r in t.rows)]


def _notes(blocks, results: dict[str, Result], data_path: Path, show_paper: bool,
           missing: str = MISSING) -> list[tuple[str, str]]:
    """(symbol, meaning) of every mark the tables use, each said once."""
    rows = [r for _, rs in blocks for r in rs]
    notes = []
    if any(r.mapping_is_ours for r in rows):
        notes.append(("*", f"the row -> flags mapping is ours (a guess, not stated in this repository); correct it "
                           f"in {data_path}"))
    if any(t.values_are_ours for t, _ in blocks):
        notes.append(("sweeps", f"the sweep values and the paper table numbers are ours, not checked against the "
                                f"paper ({data_path})"))
    if show_paper and any(v is None for r in rows for d in DIRECTIONS for v in r.paper[d].values()):
        notes.append((missing, f"paper value not filled in: enter the numbers of arXiv 2403.00691 in {data_path} "
                               "(each row's \"paper\")"))
    if any(results[r.name].values is None for r in rows):
        notes.append((NO_RESULT, "no result for this row (see the messages above)"))
    return notes


def _title(table: Table) -> str:
    return table.title + (f" (paper: {table.paper_table} of arXiv 2403.00691)" if table.paper_table else "")


def _protocol_line(rows: list[Row], results: dict[str, Result], split: str, threshold: float) -> str:
    ns = sorted({results[r.name].n for r in rows if results[r.name].n is not None})
    n = f", N = {ns[0]}" if len(ns) == 1 else (f", N = {'/'.join(map(str, ns))}" if ns else "")
    return (f"Text↔motion retrieval, TMR's \"all with threshold\" protocol (threshold {threshold:g}), split "
            f"{split}{n}; R@k in %, MedR = median rank.")


def _label(row: Row, run_names: dict[str, str]) -> str:
    run = run_names[row.name]
    return row.label + ("" if run == row.name else f" (run: {run})")


def render_markdown(tables: dict[str, Table], selected: list[Row], results: dict[str, Result],
                    run_names: dict[str, str], *, data_path: Path, split: str, threshold: float,
                    show_paper: bool = True) -> str:
    """The paper's layout as Markdown: one table per selected table; per row a line of ours and (with
    ``show_paper``) a line of the paper's numbers under it, ``—`` where the data file has none."""
    blocks = _table_blocks(tables, selected)
    cols = [f"{DIRECTION_NAMES[d]} {m}" for d in DIRECTIONS for m in METRICS]
    lines: list[str] = []
    for table, rows in blocks:
        lines += [f"### {_title(table)}", "", _protocol_line(rows, results, split, threshold), "",
                  "| Row | Setting | | " + " | ".join(cols) + " |",
                  "|---|---|---|" + "---:|" * len(cols)]
        for r in rows:
            res = results[r.name]
            name = r.name + ("*" if r.mapping_is_ours else "")
            label = _label(r, run_names)
            ours = [_fmt(res.values[d][m] if res.values else None, NO_RESULT) for d in DIRECTIONS for m in METRICS]
            lines.append(f"| {_md(name)} | {_md(label)} | ours | " + " | ".join(ours) + " |")
            if show_paper:
                paper = [_fmt(r.paper[d][m], MISSING) for d in DIRECTIONS for m in METRICS]
                lines.append("| | | paper | " + " | ".join(paper) + " |")
        lines.append("")
    lines += [f"- `{sym}` {text}" for sym, text in _notes(blocks, results, data_path, show_paper)]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _tex(text: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "↔": r"$\leftrightarrow$"}
    return "".join(repl.get(c, c) for c in text)


def render_latex(tables: dict[str, Table], selected: list[Row], results: dict[str, Result],
                 run_names: dict[str, str], *, data_path: Path, split: str, threshold: float,
                 show_paper: bool = True) -> str:
    """The same table as LaTeX ``tabular`` environments (``---`` for a missing paper value); notes as comments."""
    blocks = _table_blocks(tables, selected)
    out: list[str] = []
    for table, rows in blocks:
        out += [f"% {_title(table)}", f"% {_protocol_line(rows, results, split, threshold)}",
                r"\begin{tabular}{lll" + "r" * 2 * len(METRICS) + "}", r"\hline",
                r"Row & Setting & & \multicolumn{4}{c}{Text $\rightarrow$ Motion} & "
                r"\multicolumn{4}{c}{Motion $\rightarrow$ Text} \\",
                " & & & " + " & ".join(_tex(m) for m in METRICS * 2) + r" \\", r"\hline"]
        for r in rows:
            res = results[r.name]
            ours = [_fmt(res.values[d][m] if res.values else None, NO_RESULT) for d in DIRECTIONS for m in METRICS]
            name = _tex(r.name) + ("$^*$" if r.mapping_is_ours else "")
            out.append(f"{name} & {_tex(_label(r, run_names))} & ours & " + " & ".join(ours) + r" \\")
            if show_paper:
                paper = [_fmt(r.paper[d][m], "---") for d in DIRECTIONS for m in METRICS]
                out.append(" & & paper & " + " & ".join(paper) + r" \\")
        out += [r"\hline", r"\end{tabular}", ""]
    out += [f"% {sym}: {text}" for sym, text in _notes(blocks, results, data_path, show_paper, "---")]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="paper_ablations.py", description="Train the LAVIMO paper's ablation rows and print their table.",
        epilog="Arguments after -- go to every train.py (train) or evaluate.py (table) command.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--shards", required=True, help="shard set directory (build-shards output)")
        sp.add_argument("--data", default=str(DEFAULT_DATA), help="rows file (JSON; default: %(default)s)")
        sp.add_argument("--table", default=None,
                        help="table(s) of the rows file, comma separated, or 'all' (default: table2; every table "
                             "when only --rows is given)")
        sp.add_argument("--rows", default=None, help="only these rows, comma separated (e.g. ours,row5)")
        sp.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"], help="passed to the tool")
        sp.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
        sp.add_argument("--in-process", action="store_true",
                        help="call the tool's main() in this process instead of a subprocess (faster start; a "
                             "hard crash of one row, e.g. out of memory, then ends the whole command)")
        sp.add_argument("--log-level", default="WARNING")

    t = sub.add_parser("train", help="train every selected row (skips complete runs, resumes unfinished ones)",
                       epilog="Arguments after -- are added to every train.py command (e.g. -- --threads 1).")
    common(t)
    t.add_argument("--out", default="runs/ablations", help="directory of the runs (default: %(default)s)")
    t.add_argument("--preset", default="paper", help="preset (paper, demo, tiny or a JSON file)")
    t.add_argument("--epochs", type=int, default=None, help="epochs of every row (default: the preset's)")
    t.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="config field for every row, repeatable; wins over a row's own flags")
    t.add_argument("--random-init", action="store_true", help="random backbones (no pretrained weights needed)")
    t.add_argument("--launcher", default=None, metavar="CMD",
                   help="run train.py with this instead of this Python, e.g. 'torchrun --nproc_per_node=4'")

    e = sub.add_parser("table", help="evaluate every selected row's run and print the table",
                       epilog="Arguments after -- are added to every evaluate.py command (e.g. -- --batch-size 32).")
    common(e)
    e.add_argument("--runs", default="runs/ablations", help="directory of the runs (train's --out)")
    e.add_argument("--split", default="test", help="split to evaluate (default: %(default)s)")
    e.add_argument("--threshold", type=float, default=0.8, help="threshold of the protocol (default: 0.8)")
    e.add_argument("--format", choices=["md", "latex"], default="md")
    e.add_argument("--output", default=None, help="also write the table to this file")
    e.add_argument("--no-paper", action="store_true", help="leave out the paper's lines")
    e.add_argument("--force", action="store_true", help="re-evaluate even when the metrics exist")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_SETUP
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(levelname)s %(name)s: %(message)s")
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # noqa: ARG001
        raise Interrupted()

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, on_term)
    try:
        return (cmd_train if args.command == "train" else cmd_table)(args, passthrough)
    except (SetupError, BadInputError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return EXIT_SETUP
    except OSError as exc:  # a log, record or table file that cannot be written (disk full, permissions)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{exc.strerror or exc}", file=sys.stderr, flush=True)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue (complete rows are skipped, unfinished runs "
              "resume)", file=sys.stderr, flush=True)
        return EXIT_FAILED
    finally:
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
