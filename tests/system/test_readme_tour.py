"""The README's tour as a new user takes it: a fresh virtualenv, then every step in order, from outside the clone.

The commands are read from the README itself, so a step that changes there is tested as it is written. The only
stand-ins: the install has no network (`pip install --no-deps -e`, the dependencies come from this interpreter's
site-packages), and the API key and ANTHROPIC_BASE_URL point the real SDK at a local scripted Messages API.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from brainhands.scripted_api import ScriptedMessagesAPI, text_reply

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 180  # seconds any one command may take (the demo is the longest)


def tour_commands() -> list[str]:
    """The command lines of the tour's code blocks (indented blocks; the Python block is step 3's file), in order."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## A five-minute tour")
    tour = readme[start:readme.index("\n## ", start)]  # to the next section
    lines, fenced = [], False
    for line in tour.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("    ") and not line.startswith("     "):
            command = re.sub(r"\s{2,}#.*$", "", line.strip())
            if command and not command.startswith(("BRAINHANDS_", "brainhands serve hand hands.builtin")):
                lines.append(command)  # (the hand-deployment examples of step 4 need a /srv and fixed ports)
    return lines


def step3_hand() -> str:
    readme = (ROOT / "README.md").read_text()
    step = readme[readme.index("**3. Write a hand.**"):]
    return re.search(r"```python\n(.*?)```", step, re.S).group(1)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with this checkout installed editable, as the README's first command does (no network)."""
    where = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(where)], check=True, timeout=120)
    subprocess.run([str(where / "bin" / "pip"), "install", "-q", "--no-deps", "-e", str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    return where


def test_the_tour_works_as_written_from_outside_the_clone(venv, tmp_path):
    api = ScriptedMessagesAPI(responder=lambda body: text_reply("TODOs by theme: none found.")).start()
    home = tmp_path / "home"
    (home / "your-project").mkdir(parents=True)
    (home / "your-project" / "notes.py").write_text("# TODO: write the notes\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "BRAINHANDS_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", XDG_STATE_HOME=str(tmp_path / "state"), HOME=str(home),
               ANTHROPIC_BASE_URL=api.base_url)
    cwd = home
    background: list[subprocess.Popen] = []
    outputs: dict[str, str] = {}
    timings: list[tuple[str, float]] = []
    short_id = None

    def sh(command: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=STEP_TIMEOUT)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr, command
        return proc

    def up(command: str) -> None:
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        background.append(proc)
        deadline = time.monotonic() + STEP_TIMEOUT
        seen = []
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line or proc.poll() is None, f"`up` ended: {''.join(seen)}"
            seen.append(line)
            found = re.search(r"export BRAINHANDS_GATEWAY=(\S+)", line)
            if found:
                outputs["gateway"] = found.group(1)
                break
        out = proc.stdout
        rows = {}
        while "metrics" not in rows:
            name, address = out.readline().split()
            rows[name] = address
        outputs["metrics"] = rows["metrics"]

    try:
        # The README's first line, without its install (the virtualenv has it): step 1 of the tour.
        for command in ["brainhands demo", *tour_commands()]:
            started = time.monotonic()
            command = command.replace("sk-ant-...", "sk-ant-tour")
            if "NNNNN" in command:
                command = command.replace("127.0.0.1:NNNNN", outputs["gateway"])
            if " ID" in command:
                if "wake" in command or "cancel" in command:
                    continue  # both sessions have ended: nothing to wake or cancel
                command = command.replace(" ID", f" {short_id}")
            if command.startswith("export "):
                key, _, value = command[len("export "):].partition("=")
                env[key] = os.path.expandvars(value)
            elif command.startswith("cd "):
                cwd = cwd / command[3:]
                (cwd / "examples").mkdir(exist_ok=True)
                (cwd / "examples" / "word_count.py").write_text(step3_hand())  # step 3: the hand, written
            elif command == "brainhands up":
                up(command)
                with urllib.request.urlopen(outputs["metrics"], timeout=10) as reply:
                    assert b"brainhands_gateway" in reply.read()
            elif command.startswith("brainhands serve hand"):
                background.append(subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env,
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                                   start_new_session=True))
                deadline = time.monotonic() + STEP_TIMEOUT
                while "word_count" not in sh("brainhands hands list").stdout:
                    assert time.monotonic() < deadline, "word_count never registered"
                    time.sleep(0.5)
            else:
                proc = sh(command)
                outputs[command] = proc.stdout
                if command == "brainhands sessions list":
                    assert len(proc.stdout.splitlines()) == 2  # the demo's session and run's
                    short_id = proc.stdout.split()[0][:12]
            timings.append((command, time.monotonic() - started))
    finally:
        for proc in background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in background:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        api.stop()
    print("\n".join(f"{seconds:6.1f}s  {command}" for command, seconds in timings))
    run = next(v for k, v in outputs.items() if k.startswith("brainhands run"))
    assert run.strip() == "TODOs by theme: none found."
    assert outputs["brainhands hands call word_count '{\"text\": \"one two three\"}'"].strip() == "3"
    assert (home / "brainhands-demo" / "timeline.html").exists()
    assert (home / "your-project" / "timeline.html").exists()
