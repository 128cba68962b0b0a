"""The README's "From Python" snippet runs as written: its own local stack, the real SDK, the default store."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from brain import open_store
from brainhands.scripted_api import text_reply

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BRAINHANDS_"))}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    return env


async def sessions_in(tmp_path: Path):
    store = await open_store(str(tmp_path / "state" / "brainhands" / "sessions.db"))
    try:
        return await store.list_sessions()
    finally:
        await store.close()


def test_the_from_python_snippet_runs_as_written(tmp_path, messages_api):
    messages_api.script(text_reply("README.md says hello."))
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("hello\n")
    (project / "summarize.py").write_text(readme_snippet())
    env = {**user_env(tmp_path), "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": messages_api.base_url}
    proc = subprocess.run([sys.executable, "summarize.py"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text, facts = proc.stdout.splitlines()[-2:]
    assert text == "README.md says hello." and facts.endswith("finished False")
    [session] = asyncio.run(sessions_in(tmp_path))
    assert session.status == "finished" and session.id.startswith(facts.split()[0])


def test_without_a_key_the_snippet_says_so_and_leaves_no_session_running(tmp_path):
    (tmp_path / "summarize.py").write_text(readme_snippet())
    proc = subprocess.run([sys.executable, "summarize.py"], cwd=tmp_path, env=user_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "brain.model.ModelError: ANTHROPIC_API_KEY is not set: export it (or ANTHROPIC_AUTH_TOKEN) before starting the brain")
    assert "TypeError" not in proc.stderr  # not the SDK's own
    assert [s for s in asyncio.run(sessions_in(tmp_path)) if s.status == "running"] == []
