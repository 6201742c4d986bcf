"""``render-amass merge-reports OUT``: merge the per-part reports of a job array into one ``render-report.json``.

Each ``render-amass --part K/N`` writes ``OUT/render-report-part-K-of-N.json``. The merged report sums the counts
(``clips``: a part counts only its own; ``rendered``, ``skipped``, ``num_failed``, ``frames_rendered``,
``num_not_attempted``, ...), joins the per-clip dicts and lists (``failed``, ``rerendered``, ``not_attempted``,
``mirror_skipped``), lists every part's ``seconds`` / ``frames_per_second`` / ``interrupted`` / ``error`` under
``parts``, and names the parts of 1..N that have no report (``missing_parts``). Exit status: 0 every part reported
and nothing failed or was left out; 1 some clips failed / were not attempted, or parts are missing; 2 no part
report in OUT, or a report that is not a render report of one N (one line naming the file).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from lavimo.core.atomic import write_json
from lavimo.core.errors import SetupError, os_error_text, print_error

PART_REPORT = re.compile(r"^render-report-part-(\d+)-of-(\d+)\.json$")
SUMMED = ("clips", "rendered", "skipped", "num_failed", "frames_rendered", "skipped_unverified",
          "temp_files_removed", "num_not_attempted")
JOINED_DICTS = ("failed", "rerendered", "mirror_skipped")


def merge_part_reports(out: str | Path) -> dict[str, Any]:
    """The merged report of ``out``'s part reports (see the module docstring); raises SetupError.

    With parts missing, the merged counts cover only the parts found: ``clips`` is then the number of clips of
    those parts, not of the whole corpus (the absent parts are listed in ``missing_parts``)."""
    out = Path(out)
    reports: list[tuple[int, int, Path]] = []
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        m = PART_REPORT.match(p.name)
        if m and p.is_file():
            reports.append((int(m.group(1)), int(m.group(2)), p))
    if not reports:
        raise SetupError(f"{out}: no render-report-part-K-of-N.json (run render-amass --part K/N first)")
    totals = {n for _, n, _ in reports}
    if len(totals) != 1:
        raise SetupError(f"{out}: part reports of different N {sorted(totals)}; remove the stale ones")
    n = totals.pop()
    found = {k: (n, p) for k, _, p in reports}
    merged: dict[str, Any] = {k: 0 for k in SUMMED}
    merged.update({k: {} for k in JOINED_DICTS})
    merged.update(not_attempted=[], parts={}, annotations=None)
    for k, (_, path) in sorted(found.items()):
        try:
            rep = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SetupError(f"{path}: unreadable ({exc})") from exc
        if not isinstance(rep, dict) or rep.get("part") != f"{k}/{n}":
            raise SetupError(f"{path}: part: not the render report of part {k}/{n}")
        for key in SUMMED:
            value = rep.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SetupError(f"{path}: {key}: not an integer")
            merged[key] += value
        for key in JOINED_DICTS:
            value = rep.get(key) or {}
            if not isinstance(value, dict):
                raise SetupError(f"{path}: {key}: not an object")
            merged[key].update(value)
        if not isinstance(rep.get("not_attempted", []), list):
            raise SetupError(f"{path}: not_attempted: not a list")
        merged["not_attempted"] += rep.get("not_attempted", [])
        merged["parts"][f"{k}/{n}"] = {key: rep.get(key) for key in ("seconds", "frames_per_second", "workers",
                                                                    "interrupted", "error")}
        merged["annotations"] = rep.get("annotations", merged["annotations"])
    merged["failed"] = dict(sorted(merged["failed"].items()))
    merged["missing_parts"] = [f"{k}/{n}" for k in range(1, n + 1) if k not in found]
    merged["part"] = None
    merged["merged_from"] = [found[k][1].name for k in sorted(found)]
    return merged


def main(argv: list[str]) -> int:
    """``render-amass merge-reports OUT`` (argv without the subcommand)."""
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: render-amass merge-reports OUT  (OUT: the render-amass --out of the parts)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    try:
        merged = merge_part_reports(out)
    except SetupError as exc:
        return print_error("render-amass", exc)
    try:
        write_json(out / "render-report.json", merged)
    except OSError as exc:  # a full disk, permissions: one line, not a traceback
        return print_error("render-amass", f"cannot write the merged report ({os_error_text(exc)})")
    print(f"render-amass: merged {len(merged['merged_from'])} part report(s): rendered {merged['rendered']}, "
          f"skipped {merged['skipped']}, failed {merged['num_failed']}, not attempted "
          f"{merged['num_not_attempted']}; missing parts: {', '.join(merged['missing_parts']) or 'none'}; "
          f"report: {out / 'render-report.json'}")
    bad = merged["num_failed"] or merged["num_not_attempted"] or merged["missing_parts"]
    return 1 if bad else 0
