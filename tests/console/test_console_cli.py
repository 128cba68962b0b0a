"""`brainhands console` and `brainhands up` as a person starts them: the address they print, a past log read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx2
import pytest

from brain.v1 import brain_pb2
from brainhands.scripted_api import text_reply
from tests.console.conftest import SCRUBBED
from tests.procs import ROOT, poll

pytestmark = pytest.mark.system


async def test_console_reads_a_past_session_log_through_a_brain_of_its_own(processes, brain, scripts, runs, tmp_path):
    sid = await runs.start(scripts.add("Answer from the log.", text_reply("Read back later.")))

    async def finished() -> bool:
        return await runs.status(sid) == brain_pb2.SESSION_STATUS_FINISHED

    await poll(finished, "the session to finish")
    env = {k: "" for k in SCRUBBED}
    console = processes(["console", "--listen", "127.0.0.1:0", "--sessions", str(tmp_path / "sessions.db")], env=env,
                        ready_event="serving console")
    async with httpx2.AsyncClient(base_url=f"http://{console.address}", cookies={"brainhands_key": "any"},
                                  timeout=30) as http:
        listing = await http.get("/sessions")
        page = await http.get(f"/sessions/{sid}")
    assert listing.status_code == 200 and sid in listing.text
    assert page.status_code == 200 and "Read back later." in page.text


def test_up_serves_the_console_and_prints_its_address(tmp_path):
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"steps": [{"text": "hello"}]}))
    env = {**os.environ, **{k: "" for k in SCRUBBED}, "BRAINHANDS_MODEL": f"scripted:{script}",
           "PYTHONPATH": str(ROOT)}
    out = tmp_path / "up.out"
    with open(out, "w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "brainhands", "up", "--workspace", str(tmp_path),
                                 "--sessions", str(tmp_path / "s.db")], stdout=stdout, stderr=subprocess.DEVNULL,
                                env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        url = ""
        while not url and time.monotonic() < deadline and proc.poll() is None:
            url = next((line.split()[-1] for line in out.read_text().splitlines() if line.split()[:1] == ["console"]), "")
            time.sleep(0.2)
        assert url.startswith("http://127.0.0.1:"), out.read_text()
        page = httpx2.get(url + "sessions", timeout=30, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        signed_in = httpx2.get(url + "sessions", cookies={"brainhands_key": "k"}, timeout=30)
        assert signed_in.status_code == 200 and "Sessions" in signed_in.text
    finally:
        proc.terminate()
        proc.wait(30)
