"""Keeps the tracing cost figure working: `python -m bench --smoke --only tracing` writes its three paths side by side."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services import IN_CI

ROOT = Path(__file__).resolve().parents[2]


def test_the_tracing_figure_measures_off_baseline_and_on_side_by_side(tmp_path):
    if not shutil.which("h2load"):
        if IN_CI:
            pytest.fail("h2load is missing under CI: .ci/run must install nghttp2-client")
        pytest.skip("h2load (Debian nghttp2-client) is not installed")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout: the baseline revision cannot be extracted")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "tracing", "--baseline", "HEAD", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [section] = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert section["key"] == "tracing"
    rows = section["data"]["rows"]
    assert [row[0] for row in rows] == ["tracing off", "today's code (HEAD)", "tracing on (OTLP/gRPC)"]
    assert all(row[2] > 0 and row[7] == 0 for row in rows)  # calls went through, none failed
    assert section["data"]["spans_exported"] > 0  # the traced path really exported
