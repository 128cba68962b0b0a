"""Brain processes for the reliability tests: `brainhands run` / `sessions wake` with scripted models."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.system.gateway_stack import ROOT, Stack


class BrainProc:
    """`brainhands run` or `sessions wake` as a real process; stdout (JSON events) and stderr go to files."""

    def __init__(self, stack: Stack, name: str, argv: list[str]):
        self.out, self.err = stack.tmp / f"{name}.out", stack.tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "brainhands", *argv], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, env=stack._env({}), cwd=ROOT)
        stack.procs.append(self)  # killed in the stack's teardown

    def events(self) -> list[dict]:
        out = []
        for line in self.out.read_text().splitlines():
            try:  # the last line may be half written
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def session_id(self) -> str | None:
        return next((e["session_id"] for e in self.events() if e.get("type") == "session_started"), None)

    def result(self) -> dict | None:
        return next((e for e in self.events() if e.get("type") == "result"), None)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def script(tmp: Path, tag: str, turns: int, fan_out: int, pause: float) -> Path:
    """`turns` turns of `fan_out` `tally` calls with call ids unique to this session, then an answer."""
    steps = [
        {"content": [{"type": "tool_use", "id": f"toolu_{tag}_{t}_{i}", "name": "tally", "input": {"pause": pause}}
                     for i in range(fan_out)], "stop_reason": "tool_use"}
        for t in range(turns)
    ]
    path = tmp / f"script-{tag}.json"
    path.write_text(json.dumps([*steps, {"text": f"done {tag}"}]))
    return path


async def wait_exit(procs: list[BrainProc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(p.proc.poll() is None for p in procs):
        assert time.monotonic() < deadline, f"brains still running after {timeout}s"
        await asyncio.sleep(0.1)


async def all_past_first_turn(brains, store, fan_out: int) -> bool:
    """Every brain is alive, has a session, and its log has at least fan_out finished calls."""
    for b in brains:
        sid = b.session_id()
        if sid is None or b.proc.poll() is not None:
            return False
        if sum(e.type == "tool_call_finished" for e in await store.events(sid)) < fan_out:
            return False
    return True
