"""render-amass merge-reports OUT: the part reports of a job array merge into one render-report.json (sums,
joined failures, missing parts); bad reports exit 2 naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from lavimo.render.cli import main


def _part(out: Path, k: int, n: int, **kw) -> None:
    rep = {"rendered": 2, "skipped": 1, "failed": {}, "num_failed": 0, "clips": 4, "frames_rendered": 100,
           "seconds": 5.0, "frames_per_second": 20.0, "part": f"{k}/{n}", "workers": 1, "rerendered": {},
           "skipped_unverified": 0, "temp_files_removed": 0, "interrupted": None, "error": None,
           "not_attempted": [], "num_not_attempted": 0, "mirror_skipped": {}, "annotations": "ok"}
    rep.update(kw)
    (out / f"render-report-part-{k}-of-{n}.json").write_text(json.dumps(rep))


def test_merge_all_parts(tmp_path):
    for k in (1, 2, 3):
        _part(tmp_path, k, 3)
    assert main(["merge-reports", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "render-report.json").read_text())
    # a part's "clips" counts that part's clips (render-amass --part): the merged report has the whole corpus
    assert (rep["rendered"], rep["skipped"], rep["frames_rendered"], rep["clips"]) == (6, 3, 300, 12)
    assert rep["missing_parts"] == [] and sorted(rep["parts"]) == ["1/3", "2/3", "3/3"]


def test_failures_and_missing_parts_exit_1(tmp_path, capsys):
    _part(tmp_path, 1, 3, failed={"000002": "bad pose"}, num_failed=1)
    _part(tmp_path, 3, 3, not_attempted=["000009"], num_not_attempted=1, interrupted="SIGTERM")
    assert main(["merge-reports", str(tmp_path)]) == 1
    rep = json.loads((tmp_path / "render-report.json").read_text())
    assert rep["failed"] == {"000002": "bad pose"} and rep["not_attempted"] == ["000009"]
    assert rep["missing_parts"] == ["2/3"] and rep["parts"]["3/3"]["interrupted"] == "SIGTERM"
    assert "missing parts: 2/3" in capsys.readouterr().out


def test_bad_reports_exit_2(tmp_path, capsys):
    assert main(["merge-reports", str(tmp_path)]) == 2  # nothing to merge
    _part(tmp_path, 1, 2)
    _part(tmp_path, 1, 3)
    assert main(["merge-reports", str(tmp_path)]) == 2 and "different N" in capsys.readouterr().err
    (tmp_path / "render-report-part-1-of-3.json").unlink()
    (tmp_path / "render-report-part-2-of-2.json").write_text('{"part": "2/2", "rendered": "many"}')
    assert main(["merge-reports", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "render-report-part-2-of-2.json: rendered: not an integer" in err
    assert main(["merge-reports"]) == 2
