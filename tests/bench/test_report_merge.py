"""`python -m bench --only NAME` replaces NAME's section of the report in --out and keeps the others."""

from __future__ import annotations

import json

from bench import report


def test_a_run_of_some_benchmarks_keeps_the_other_sections_marked_with_their_run(tmp_path):
    old = [report.Section("gateway", "1. Gateway", "old gateway", [report.Table("t", ["a"], [[1]])]),
           report.Section("console", "7. Console", "old console")]
    meta = {"command": "python -m bench --quick", "started": "2026-11-25 21:58 UTC", "mode": "quick", "elapsed_s": 1.0,
            "load_start": "0", "load_end": "0", "machine": report.machine()}
    report.write(tmp_path, old, meta)
    new = report.Section("console", "7. Console", "new console")
    merged = report.keep_others(tmp_path, [new])
    assert [(s.key, s.summary) for s in merged] == [("console", "new console"), ("gateway", "old gateway")]
    assert merged[1].tables[0].rows == [[1]] and merged[1].run == "`python -m bench --quick` on 2026-11-25 21:58 UTC"
    report.write(tmp_path, merged, {**meta, "command": "python -m bench --only console"})
    text = (tmp_path / "REPORT.md").read_text()
    assert "new console" in text and "old console" not in text
    assert "From an earlier run: `python -m bench --quick` on 2026-11-25 21:58 UTC" in text
    kept = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert [s["run"] for s in kept] == ["", "`python -m bench --quick` on 2026-11-25 21:58 UTC"]
