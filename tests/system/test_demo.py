"""brainhands demo as a user runs it: one command, no key, no network — and nothing left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def _processes_with(env_entry: bytes) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if env_entry in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_demo_changes_every_file_in_workers_branches_merges_them_runs_the_tests_and_leaves_nothing_running(tmp_path):
    target = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BRAINHANDS_"))}
    env["ANTHROPIC_BASE_URL"] = "http://127.0.0.1:9"  # anything that tried the real API would fail here
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # the default session store, as `run` and `sessions` use it
    proc = subprocess.run(
        ["brainhands", "demo", "--dir", str(target), "--think-time", "0.05"],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "scripted" in proc.stderr and "export ANTHROPIC_API_KEY" in proc.stderr

    workspace = target / "workspace"
    original = ROOT / "brainhands" / "demo_workspace"
    users = sorted(p.relative_to(original) for p in original.rglob("*.py") if "utcnow" in p.read_text())
    assert len(users) == 5
    for rel in users:
        text = (workspace / rel).read_text()
        assert "utcnow" not in text, rel
        assert "datetime.now(timezone.utc)" in text, rel
        assert any(line.startswith("from datetime import") and "timezone" in line for line in text.splitlines()), rel
    untouched = original / "ledger" / "money.py"
    assert (workspace / "ledger" / "money.py").read_text() == untouched.read_text()
    for line in proc.stdout.splitlines():
        if line.startswith("- ledger/"):
            assert "replaced" in line
    assert sum(1 for line in proc.stdout.splitlines() if line.startswith("- ledger/")) == 5

    # One worker per file, each on its own branch of the session's workspace; merged, then tested in the sandbox.
    # The project's tests fail on the original files (naive datetimes), so "passed" is the merged change's.
    assert "Merge: merged 5 of 5:" in proc.stdout, proc.stdout
    assert "Tests (python3 -m unittest discover -s tests, in the sandbox): passed (6 tests)." in proc.stdout, proc.stdout
    assert "tests passed (6 tests)" in proc.stderr, proc.stderr[-2000:]
    before = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", "tests"], capture_output=True,
                            text=True, cwd=original, timeout=60, env={**env, "PYTHONDONTWRITEBYTECODE": "1"})
    assert before.returncode == 1 and "FAILED" in before.stderr, before.stderr

    # The edited project still imports and its own test passes.
    check = subprocess.run(
        [sys.executable, "-c", "import ledger.accounts, ledger.audit, ledger.export, ledger.scheduler, "
         "ledger.sessions as s; assert not s.open_session('a').expired(); print('ok')"],
        capture_output=True, text=True, cwd=workspace, timeout=60,
    )
    assert check.stdout.strip() == "ok", check.stderr

    timeline = (target / "timeline.html").read_text()
    assert timeline.count('data-hand="llm_worker"') == 5
    # The session is in the default store, so `sessions list` finds it, and the short id printed works.
    listed = subprocess.run(["brainhands", "sessions", "list"], capture_output=True, text=True, timeout=60, env=env,
                            cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout, (listed.stderr, proc.stderr[-600:])
    [line] = listed.stdout.splitlines()
    assert "finished" in line and "utcnow" in line
    [short] = [w for line in proc.stderr.splitlines() if "brainhands sessions show" in line for w in line.split()[-1:]]
    assert len(short) < 32 and line.startswith(short)
    shown = subprocess.run(["brainhands", "sessions", "show", short], capture_output=True, text=True, timeout=60,
                           env=env, cwd=tmp_path)
    assert shown.returncode == 0 and "finished" in shown.stdout, shown.stderr
    # The session's change is the five files, as a patch.
    patch = subprocess.run(["brainhands", "sessions", "export", short, "--patch"], capture_output=True, text=True,
                           timeout=60, env=env, cwd=tmp_path)
    assert patch.returncode == 0, patch.stderr
    assert sorted(line.split()[-1][2:] for line in patch.stdout.splitlines() if line.startswith("diff --git ")) == \
        sorted(str(rel) for rel in users)
    # The demo's folder keeps itself out of git.
    ignored = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], capture_output=True,
                             text=True, cwd=tmp_path, timeout=60) if subprocess.run(
        ["git", "init", "-q", str(tmp_path)], timeout=60).returncode == 0 else None
    assert ignored is not None and "demo/" not in ignored.stdout

    assert _processes_with(f"BRAINHANDS_WORKSPACE={workspace}".encode()) == []


def test_demo_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = subprocess.run(["brainhands", "demo", "--dir", str(mine)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"brainhands: {mine} exists and is not a previous demo; choose another place with --dir"
    assert (mine / "notes.txt").read_text() == "keep me"
