#!/usr/bin/env python
"""The paper's ablation (Table 2 and the λ_recon / ε sweeps of Tables 3-4) run for real on the embedded synthetic
corpus, on CPU, with several seeds: per row the mean and spread over seeds beside the paper's number, and a verdict
per claim of the paper. A benchmark with its own command (hours of CPU), not a CI test; docs/paper.md holds its
result.

    python scripts/ablation_synthetic.py [--out runs/ablation-synthetic] [--seeds 0,1] [--jobs 2] [--epochs 4]
        [--motions 1200] [--test-fraction 0.25]

Stages (each skipped once its stamp ``OUT/.done-<stage>`` exists; rerun to continue after a stop or a failure):
``corpus`` (synth-amass), ``render`` (render-amass, 64x64 at 10 fps), ``shards`` (build-shards), then one
``scripts/paper_ablations.py all`` per seed (``--jobs`` of them at once, each train.py on one thread; its runs in
``OUT/runs/seed-K/``, resumable per row), then ``OUT/ablation.{md,json}``: the tables over seeds and the verdicts.

The task is made harder than the demo's so that the rows can differ: 1,200 motions with a 25 % test split (300 test
motions, about ten per action, told apart only by count, side, speed, direction or amplitude) and TMR's "all"
protocol (exact pairs): the paper's "all with threshold" protocol counts every caption of the same action as
correct on templated captions and saturates. Exit status: 0 all done, 1 some row or stage failed (the others ran),
2 usage or set-up error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lavimo") is None:  # the checkout is the package: installed, not put on sys.path
    print("lavimo is not installed: run `pip install -e .` in the checkout (or make venv)", file=sys.stderr)
    sys.exit(2)

from lavimo.core.atomic import write_json, write_text  # noqa: E402
from lavimo.core.errors import SetupError, print_error  # noqa: E402
from lavimo.core.process import run_stoppable  # noqa: E402
from lavimo.core.stop import StopSignals  # noqa: E402

PROG = "ablation_synthetic.py"
RUNNER = REPO / "scripts" / "paper_ablations.py"
TABLES = "table2,table3,table4"
#: the run settings every row shares (the demo preset, shortened for CPU; docs/paper.md says why)
ROW_SETTINGS = ["--preset", "demo", "--protocol", "all", "--device", "cpu", "--set", "backbone_lr_scale=0.1",
                "--set", "num_frames=8",
                "--set", "lr_decay_start_epoch={half}", "--set", "eval_every={half}", "--set", "checkpoint_every={half}"]
#: the paper's claims: (claim, row with the component, row without it), compared on text->motion R@1
CLAIMS = [("adding video helps (Row2 vs TMR)", "row2", "tmr"),
          ("an unfrozen text backbone helps (Row3 vs Row2)", "row3", "row2"),
          ("LAVIMO's negative filtering beats TMR's (Ours vs Row3)", "ours", "row3"),
          ("LAVIMO's negative filtering beats soft labels (Ours vs Row4)", "ours", "row4"),
          ("motion reconstruction is essential (Ours vs Row5)", "ours", "row5"),
          ("fusion in the reconstruction helps (Ours vs Row6)", "ours", "row6")]
CLAIM_METRIC = "t2m_R1"


def stage_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The corpus stages' commands (the demo's tools, at the ablation's size)."""
    out, bin_ = Path(args.out), Path(sys.executable).parent
    corpus = out / "corpus"
    return {
        "corpus": [str(bin_ / "synth-amass"), "--out", str(corpus), "--motions", str(args.motions), "--seed", "0",
                   "--test-fraction", str(args.test_fraction), "--val-fraction", "0.06"],
        "render": [str(bin_ / "render-amass"), "--amass", str(corpus / "amass"), "--annotations",
                   str(corpus / "annotations.json"), "--avatars", str(REPO / "assets"), "--lights", "4",
                   "--out", str(out / "videos"), "--size", "64", "--fps", "10", "--workers", str(args.jobs)],
        "shards": [str(bin_ / "build-shards"), "--annotations", str(corpus / "annotations.json"), "--amass",
                   str(corpus / "amass"), "--videos", str(out / "videos"), "--out", str(out / "shards"),
                   "--frame-size", "64", "--workers", str(args.jobs)],
    }


def seed_command(args: argparse.Namespace, seed: int) -> list[str]:
    """One seed's ``paper_ablations.py all``: every row of Tables 2-4 trained, evaluated and tabulated."""
    half = str(max(1, args.epochs // 2))
    return [sys.executable, str(RUNNER), "all", "--shards", str(Path(args.out) / "shards"), "--out",
            str(Path(args.out) / "runs" / f"seed-{seed}"), "--tables", TABLES, "--epochs", str(args.epochs),
            *[s.replace("{half}", half) for s in ROW_SETTINGS], "--", "--seed", str(seed), "--threads", "1",
            "--workers", "1"]


def run_stages(args: argparse.Namespace, stop: StopSignals, times: dict[str, float]) -> int:
    """The corpus stages then the seeds; 0, or 1 when a stage or a seed's runner failed."""
    out = Path(args.out)
    for name, cmd in stage_commands(args).items():
        stamp = out / f".done-{name}"
        if stamp.is_file():
            print(f"== {name}: already complete ({stamp})", flush=True)
            continue
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"{name}.log", "a", encoding="utf-8") as log:
            rc = run_stoppable(cmd, stop, stdout=log, stderr=log)
        if stop():
            raise KeyboardInterrupt
        if rc not in (0, 1):  # 1: some clips failed, the others are there (counted in the stage's report)
            print(f"== {name}: FAILED, exit {rc} (log: {out / f'{name}.log'})", file=sys.stderr)
            return 1
        times[name] = round(time.perf_counter() - t0, 1)
        write_text(stamp, time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return run_seeds(args, stop, times)


def run_seeds(args: argparse.Namespace, stop: StopSignals, times: dict[str, float]) -> int:
    """Every seed's runner, ``--jobs`` at once (threads, each waiting on its child); 1 when one failed."""
    out, pending, lock, codes = Path(args.out), list(args.seeds), threading.Lock(), {}

    def worker() -> None:
        while not stop():
            with lock:
                if not pending:
                    return
                seed = pending.pop(0)
            print(f"== seed {seed}: {' '.join(seed_command(args, seed))}", flush=True)
            t0 = time.perf_counter()
            with open(out / f"seed-{seed}.log", "a", encoding="utf-8") as log:
                codes[seed] = run_stoppable(seed_command(args, seed), stop, kill_after_s=60, stdout=log, stderr=log)
            times[f"seed {seed}"] = round(time.perf_counter() - t0, 1)
            print(f"== seed {seed}: exit {codes[seed]} in {times[f'seed {seed}']:.0f} s", flush=True)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)
    if stop():
        raise KeyboardInterrupt
    return 1 if any(codes.values()) else 0


# ---------------------------------------------------------------------------------------------- the summary
def seed_tables(out: Path, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """Each seed's ``paper_tables.json`` (written by the runner's table step), by seed; absent seeds left out."""
    found = {}
    for seed in seeds:
        path = out / "runs" / f"seed-{seed}" / "tables" / "paper_tables.json"
        if path.is_file():
            found[seed] = json.loads(path.read_text(encoding="utf-8"))
    return found


def summarise(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per table and row: each column's values over seeds, their mean and half-range, and the paper's number."""
    tables: dict[str, Any] = {}
    for seed, data in sorted(per_seed.items()):
        for name, t in data["tables"].items():
            tab = tables.setdefault(name, {"caption": t["caption"], "columns": t["columns"], "rows": {}})
            for r in t["rows"]:
                row = tab["rows"].setdefault(r["row"], {"label": r["label"], "paper": r["paper"], "seeds": {}})
                row["seeds"][seed] = r["ours"]
    for tab in tables.values():
        for row in tab["rows"].values():
            row["mean"], row["spread"] = {}, {}
            for c in tab["columns"]:
                vals = [v[c] for v in row["seeds"].values() if v.get(c) is not None]
                row["mean"][c] = round(statistics.fmean(vals), 2) if vals else None
                row["spread"][c] = round((max(vals) - min(vals)) / 2, 2) if vals else None
    return tables


def verdicts(tables: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim: our effect (mean difference on text->motion R@1) against the seeds' spread and the paper's
    effect. "cannot tell" when |effect| <= the two rows' half-ranges added (their seed intervals overlap)."""
    rows, out = tables.get("table2", {}).get("rows", {}), []
    for claim, with_, without in CLAIMS:
        a, b = rows.get(with_), rows.get(without)
        if not a or not b or a["mean"].get(CLAIM_METRIC) is None or b["mean"].get(CLAIM_METRIC) is None:
            out.append({"claim": claim, "verdict": "not run"})
            continue
        ours = a["mean"][CLAIM_METRIC] - b["mean"][CLAIM_METRIC]
        noise = a["spread"][CLAIM_METRIC] + b["spread"][CLAIM_METRIC]
        paper = a["paper"][CLAIM_METRIC] - b["paper"][CLAIM_METRIC]
        verdict = "cannot tell" if abs(ours) <= noise else ("agrees" if ours * paper > 0 else "disagrees")
        out.append({"claim": claim, "ours": round(ours, 2), "noise": round(noise, 2), "paper": round(paper, 2),
                    "verdict": verdict})
    return out


def render_markdown(tables: dict[str, Any], claims: list[dict[str, Any]], seeds: list[int], times: dict) -> str:
    """The tables (mean ± half-range over seeds, the paper's number in brackets) and the verdicts."""
    lines = []
    for tab in tables.values():
        cols = tab["columns"]
        lines += [f"**{tab['caption']}** Ours: mean ± half-range over seeds {', '.join(map(str, seeds))}; "
                  "[paper].", "", "| Row | " + " | ".join(c.replace("_", " ") for c in cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        for row in tab["rows"].values():
            cells = ["—" if row["mean"][c] is None else
                     f"{row['mean'][c]:.2f} ± {row['spread'][c]:.2f} [{row['paper'][c]:g}]" for c in cols]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| Claim of the paper | Δ ours (T→M R@1) | seed noise | Δ paper | Verdict |", "|---|---:|---:|---:|---|"]
    for c in claims:
        if c["verdict"] == "not run":
            lines.append(f"| {c['claim']} | — | — | — | not run |")
        else:
            lines.append(f"| {c['claim']} | {c['ours']:+.2f} | {c['noise']:.2f} | {c['paper']:+.2f} | "
                         f"{c['verdict']} |")
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablation-synthetic", help="output directory (default: %(default)s)")
    p.add_argument("--seeds", default="0,1", help="training seeds, comma separated (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="seeds run at once, one CPU thread each (default: 2)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per row (default: %(default)s)")
    p.add_argument("--motions", type=int, default=1200, help="synthetic motions (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="test split (default: %(default)s)")
    p.add_argument("--summary-only", action="store_true", help="only write OUT/ablation.{md,json} from the runs")
    args = p.parse_args(argv)
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        if not args.seeds or args.jobs < 1 or args.epochs < 1 or args.motions < 40:
            raise ValueError
    except ValueError:
        return print_error(PROG, SetupError("--seeds: comma-separated integers; --jobs/--epochs >= 1, --motions "
                                            ">= 40"), 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "wall_times.json"
    times = json.loads(times_path.read_text(encoding="utf-8")) if times_path.is_file() else {}
    rc = 0
    if not args.summary_only:
        try:
            with StopSignals(prog=PROG, on_first="stopping the running stage").installed() as stop:
                rc = run_stages(args, stop, times)
        except KeyboardInterrupt:
            print(f"{PROG}: stopped; rerun the same command to continue", file=sys.stderr)
            return 1
        finally:
            write_json(times_path, times)
    tables = summarise(seed_tables(out, args.seeds))
    claims = verdicts(tables)
    write_json(out / "ablation.json", {"seeds": args.seeds, "tables": tables, "claims": claims, "wall_s": times})
    text = render_markdown(tables, claims, args.seeds, times)
    write_text(out / "ablation.md", text)
    print(text)
    return rc


if __name__ == "__main__":
    sys.exit(main())
