"""`brainhands run` and `brainhands sessions` as a person meets them: results on stdout, one clear line on errors."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from hands import hand

pytestmark = pytest.mark.system


async def brainhands(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brainhands", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "BRAINHANDS_LOG_FORMAT": "json"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def target(hand_service):
    @hand(description="Reverse a text.")
    async def reverse(text: str) -> str:
        return text[::-1]

    running = await hand_service([reverse])
    return f"127.0.0.1:{running.port}"


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "script.json"
    path.write_text(json.dumps([
        {"tool_calls": [["reverse", {"text": "olleh"}]]},
        {"text": "The reversed text is hello."},
    ]))
    return str(path)


async def test_run_prints_the_result_on_stdout_and_events_on_stderr(target, script, tmp_path):
    db = str(tmp_path / "s.db")
    code, out, err = await brainhands("run", "Reverse olleh.", "--gateway", target, "--model", f"scripted:{script}", "--sessions", db)
    assert code == 0, err
    assert out == "The reversed text is hello.\n"
    # stderr is not a terminal: one plain line per event (the live tree is for terminals).
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert lines[0].startswith("session ") and lines[0].endswith(" started: Reverse olleh.")
    assert lines[1].startswith("turn 1: tool_use, 1 tool call")
    assert lines[2] == "  reverse started: olleh"
    assert lines[3].startswith("  reverse ok ")
    assert lines[4].startswith("turn 2: end_turn")
    assert lines[5].startswith("session finished in ") and "2 turns, 1 calls (0 failed)" in lines[5]
    session_id = lines[0].split()[1]

    code, out, _ = await brainhands("sessions", "list", "--sessions", db)
    assert code == 0 and session_id in out and "finished" in out and "Reverse olleh." in out


async def test_run_json_puts_events_and_the_result_on_stdout(target, script, tmp_path):
    code, out, err = await brainhands(
        "run", "Reverse olleh.", "--gateway", target, "--model", f"scripted:{script}", "--sessions", str(tmp_path / "s.db"), "--json"
    )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["type"] == "session_started"
    assert lines[-1] == {**lines[-1], "type": "result", "status": "finished", "text": "The reversed text is hello.", "cut_short": False}


@pytest.mark.parametrize(("args", "message"), [
    (["run", "x", "--model", "scripted:/nonexistent.json", "--gateway", "127.0.0.1:9"], "cannot read model script"),
    (["run", "x", "--model", "claude-sonnet-5-5", "--gateway", "127.0.0.1:9"], "ANTHROPIC_API_KEY"),
    (["run", "x", "--max-parallel", "0", "--gateway", "127.0.0.1:9"], "max_parallel"),
    (["run", "x", "--model", "scripted:SCRIPT", "--gateway", "127.0.0.1:9"], "is the gateway running there?"),
    (["sessions", "wake", "0" * 32, "--model", "scripted:SCRIPT", "--gateway", "127.0.0.1:9"], "no session"),
])
async def test_mistakes_end_with_one_clear_line(args, message, script, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    args = [a.replace("SCRIPT", script) for a in args] + ["--sessions", str(tmp_path / "s.db")]
    code, out, err = await brainhands(*args)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if not line.startswith("{")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
