"""Keeps bench/ from rotting: `python -m bench --smoke` (the smallest size of every benchmark) runs end to end.

It asserts that each benchmark ran and wrote its tables, never how fast anything was.
"""

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


def _nginx() -> bool:
    return bool(shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not shutil.which("h2load"):
        if IN_CI:
            pytest.fail("h2load is missing under CI: .ci/run must install nghttp2-client")
        pytest.skip("h2load (Debian nghttp2-client) is not installed: the gateway benchmark needs it")
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), (out / "REPORT.md").read_text()


def test_every_benchmark_writes_its_section_with_a_summary(smoke):
    _, results, report = smoke
    keys = [s["key"] for s in results["sections"]]
    assert keys == ["gateway", "fanout", "brain", "quotas", "sessions", "memory", "brain-memory"]
    for section in results["sections"]:
        assert section["tables"] and all(t["rows"] for t in section["tables"]), section["key"]
        assert f"## {section['title']}" in report
    summaries = [s for s in results["sections"] if s["summary"]]
    assert len(summaries) == 5
    assert report.index("## Summary") < report.index("## 1. Gateway overhead")


def test_every_call_of_the_gateway_benchmark_was_answered(smoke):
    _, results, _ = smoke
    rows = next(s for s in results["sections"] if s["key"] == "gateway")["data"]["rows"]
    paths = {r["path"] for r in rows}
    assert {"direct", "gateway", "grpc.aio floor", "gateway+quotas(memory)"} <= paths
    assert all(r["calls"] > 0 and r["failed"] == 0 for r in rows), rows


def test_nginx_is_measured_as_the_peer(smoke):
    if not _nginx():
        if IN_CI:
            pytest.fail("nginx is missing under CI: .ci/run must install it")
        pytest.skip("nginx is not installed (Debian package nginx): the peer row is left out")
    _, results, report = smoke
    rows = next(s for s in results["sections"] if s["key"] == "gateway")["data"]["rows"]
    # The peer, not the thing under test: nginx answered (a stray failed request of its own, seen once in 813 at
    # the end of a timed run on a busy machine, is its figure to report, not ours to refuse).
    assert any(r["path"] == "nginx" and r["calls"] > 0 and r["failed"] <= r["calls"] // 100 for r in rows), rows
    assert "x nginx" in report


def test_two_replicas_admit_exactly_the_limit_when_redis_is_there(smoke):
    _, results, _ = smoke
    quotas = next(s for s in results["sections"] if s["key"] == "quotas")
    if quotas["data"]["exact"] is None:
        if IN_CI:
            pytest.fail("Redis is missing under CI: .ci/run must start it")
        pytest.skip("Redis did not answer: the replica contention run was left out")
    assert quotas["data"]["exact"] is True


def test_the_latency_plot_is_written_when_matplotlib_is_installed(smoke):
    out, _, report = smoke
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib is not installed (pip install -e '.[bench]'): the plot is left out")
    assert (out / "latency.png").stat().st_size > 1000
    assert "](latency.png)" in report


def test_the_workspace_benchmark_writes_its_first_call_figures(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", "workspaces", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [section] = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert section["key"] == "workspaces" and "first fs call makes its empty workspace" in section["summary"]
    [table] = section["tables"]
    assert len(table["rows"]) == 7 and any("first call" in row[0] for row in table["rows"])
