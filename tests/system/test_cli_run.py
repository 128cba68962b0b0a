"""`brainhands run` on the embedded local stack, Ctrl-C and wake, sessions show/cancel, and each mistake's one line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

from brain.sessions import open_store

pytestmark = pytest.mark.system

STACK_LINE = re.compile(r"^local stack: gateway (?P<gateway>\S+) \((?P<hands>[\w, ]+)\) · workspace (?P<workspace>.+?) · logs (?P<logs>.+)$")


@pytest.fixture
def env(tmp_path):
    """The environment of a person without any brainhands settings; state (logs, default store) under tmp_path."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BRAINHANDS_", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH"))}
    return {**clean, "XDG_STATE_HOME": str(tmp_path / "state"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
async def spawn(env):
    """Start `python -m brainhands ARGS` (stdout and stderr piped); every process is killed at teardown."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str, cwd: str | os.PathLike | None = None, extra_env: dict | None = None):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "brainhands", *args, cwd=cwd, env={**env, **(extra_env or {})},
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def brainhands(spawn, *args, timeout: float = 180, **kw) -> tuple[int, str, str]:
    proc = await spawn(*args, **kw)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def script(tmp_path: Path, steps: list) -> str:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(steps))
    return f"scripted:{path}"


def descendants(pid: int) -> set[int]:
    """Every process below pid, from /proc/<pid>/task/*/children (no psutil)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_with_env(key: str, value: str) -> list[int]:
    """Processes whose environment has key=value: the local stack's services carry the workspace they serve."""
    needle = f"{key}={value}".encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (proc / "environ").read_bytes() and alive(int(proc.name)):
                    found.append(int(proc.name))
    return found


def refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        try:
            s.connect((host, int(port)))
        except ConnectionRefusedError:
            return True
    return False


def stack_addresses(stderr: str) -> list[str]:
    """The gateway's address from the stack line, the hands' from the gateway config in its log folder."""
    match = next(m for m in map(STACK_LINE.match, stderr.splitlines()) if m)
    assert {"fs", "sandbox", "llm"} <= set(match["hands"].split(", ")), match["hands"]
    config = yaml.safe_load((Path(match["logs"]) / "gateway.yaml").read_text())
    backends = [b for route in config["routes"] for b in route["backends"]]
    assert len(backends) == len(match["hands"].split(", "))
    return [match["gateway"], *backends]


def assert_one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- a run on the embedded stack ---------------------------------------------------------------------


async def test_run_without_a_gateway_starts_a_local_stack_runs_the_task_and_stops_it(spawn, tmp_path):
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("alpha\nbeta\n")
    model = script(tmp_path, [
        {"tool_calls": [
            ["fs_read", {"path": "notes.txt"}],
            ["fs_write", {"path": "out/summary.md", "content": "# Summary\nTODO\n"}],
            ["sandbox_shell", {"command": "echo $((6 * 7))"}],
        ]},
        {"tool_calls": [["fs_edit", {"path": "out/summary.md", "old": "TODO", "new": "two notes: alpha, beta"}]]},
        {"text": "Wrote out/summary.md."},
    ])
    db = tmp_path / "sessions.db"
    code, out, err = await brainhands(spawn, "run", "Summarize the notes", "--model", model, "--sessions", str(db),
                                      "--workspace", str(workspace))
    assert code == 0, err
    assert out == "Wrote out/summary.md.\n"
    assert (workspace / "out" / "summary.md").read_text() == "# Summary\ntwo notes: alpha, beta\n"
    # stderr is not a terminal here: one plain line per event, after the line about the stack.
    assert err.splitlines()[0].startswith("local stack: gateway 127.0.0.1:")
    assert "  fs_write ok" in err and "  sandbox_shell ok" in err and "  fs_edit ok" in err
    assert re.search(r"^session finished in .*: 3 turns, 4 calls \(0 failed\)", err, re.M), err
    assert "Traceback" not in err
    # The stack is gone: no process serves this workspace, every port it used is closed.
    assert processes_with_env("BRAINHANDS_WORKSPACE", str(workspace)) == []
    assert all(refused(a) for a in stack_addresses(err))
    # Its logs are where the line said.
    line = STACK_LINE.match(err.splitlines()[0])
    assert line["workspace"] == str(workspace)
    assert {"fs.log", "sandbox.log", "llm.log", "gateway.log"} <= {p.name for p in Path(line["logs"]).iterdir()}

    store = await open_store(str(db))
    try:
        [info] = await store.list_sessions()
        assert info.status == "finished" and info.task == "Summarize the notes"
        output = next(e.data["output"] for e in await store.events(info.id) if e.data.get("name") == "sandbox_shell"
                      and e.type == "tool_call_finished")
        assert "42" in output
    finally:
        await store.close()


async def test_ctrl_c_mid_task_leaves_no_process_and_says_how_to_resume_and_wake_finishes_it(spawn, tmp_path):
    workspace = tmp_path / "project"
    workspace.mkdir()
    model = script(tmp_path, [
        {"tool_calls": [["fs_write", {"path": "c.txt", "content": "one\n"}],
                        ["sandbox_shell", {"command": "sleep 30", "timeout": 3}]]},
        {"tool_calls": [["fs_edit", {"path": "c.txt", "old": "one", "new": "two"}]]},
        {"text": "Done after the slow call."},
    ])
    db = tmp_path / "sessions.db"
    proc = await spawn("run", "Write c.txt, then wait", "--model", model, "--sessions", str(db), "--workspace", str(workspace),
                       "--json", cwd=tmp_path)
    session_id = None
    async with asyncio.timeout(120):  # the stack starts first: four Python processes
        while True:
            line = await proc.stdout.readline()
            assert line, (await proc.stderr.read()).decode()
            event = json.loads(line)
            if event["type"] == "tool_call_started" and event["data"]["name"] == "sandbox_shell":
                session_id = event["session_id"]
                break
    below = descendants(proc.pid)
    assert len(below) >= 4  # gateway, fs, sandbox, llm (and the sandboxed sleep under its hand)

    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    err = err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    hint = f"brainhands sessions wake {session_id} --sessions {db} --workspace {workspace}"
    assert err.splitlines()[-1] == f"brainhands: interrupted; resume with: {hint}"
    # Everything it started is gone (the sandboxed command too, within a bound: it dies with its sandbox).
    deadline = time.monotonic() + 10
    while [p for p in below if alive(p)] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert [p for p in below if alive(p)] == []
    assert all(refused(a) for a in stack_addresses(err))
    assert processes_with_env("BRAINHANDS_WORKSPACE", str(workspace)) == []

    store = await open_store(str(db))
    try:
        info = await store.get_session(session_id)
        assert info.status == "running" and info.lease_owner is None  # resumable at once: the lease was released
    finally:
        await store.close()

    # The hint works as printed: the unfinished call is re-issued (it times out in the sandbox), then the rest runs.
    argv = shlex.split(hint)
    code, out, err = await brainhands(spawn, *argv[1:], cwd=tmp_path)
    assert code == 0, err
    assert out == "Done after the slow call.\n"
    assert (workspace / "c.txt").read_text() == "two\n"
    assert "sandbox_shell started (attempt 2)" in err


# --- sessions show and cancel ------------------------------------------------------------------------


async def _stale_session(db: Path, *, lease_owner: str | None, ttl: float) -> str:
    """A running session as a stopped brain leaves it: a start, a turn, one call started and never finished."""
    store = await open_store(str(db))
    try:
        sid = await store.create_session("Count the files", {"max_turns": 20})
        await store.append(sid, 1, "session_started", {"task": "Count the files", "config": {"max_turns": 20},
                                                       "system": "s", "tools": [], "model": "scripted"})
        await store.append(sid, 2, "model_response", {
            "content": [{"type": "tool_use", "id": "t1", "name": "fs_list", "input": {"path": "."}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}})
        await store.append(sid, 3, "tool_call_started", {"call_id": "t1", "name": "fs_list", "input": {"path": "."}, "attempt": 1})
        if lease_owner:
            assert await store.acquire_lease(sid, lease_owner, ttl)
        return sid
    finally:
        await store.close()


async def test_sessions_show_cancel_and_the_timeline_of_a_stopped_session(spawn, tmp_path):
    db = tmp_path / "s.db"
    sid = await _stale_session(db, lease_owner="host:1234:dead", ttl=0.001)  # its brain is gone, its lease expired
    store = await open_store(str(db))
    try:
        child = await store.create_session("Count the files in src/", {}, parent_id=sid)
    finally:
        await store.close()

    code, out, err = await brainhands(spawn, "sessions", "show", sid, "--sessions", str(db))
    assert code == 0, err
    assert "running" in out.splitlines()[0] and "Count the files" in out
    assert "fs_list" in out and "started, no result" in out
    assert "brainhands sessions wake" in out  # no brain drives it: say how to continue
    # The sub-agent's session is drawn under the call that was running when it began.
    assert re.search(rf"└── sub-agent {child[:12]} · running · Count the files in src/$", out, re.M), out

    page = tmp_path / "timeline.html"
    code, out, err = await brainhands(spawn, "sessions", "show", sid, "--sessions", str(db), "--html", str(page))
    assert code == 0, err
    assert out == f"{page}\n"
    assert page.read_text().startswith("<!doctype html>") and sid in page.read_text()

    code, out, err = await brainhands(spawn, "sessions", "cancel", sid, "--sessions", str(db))
    assert code == 0, err
    assert out == f"session {sid}: cancelled\n"
    code, out, err = await brainhands(spawn, "sessions", "show", sid, "--sessions", str(db))
    assert "cancelled" in out.splitlines()[0] and "cancelled with `brainhands sessions cancel`" in out

    code, out, err = await brainhands(spawn, "sessions", "cancel", sid, "--sessions", str(db))
    assert code == 0 and out == f"session {sid} is not running (cancelled); nothing to cancel\n"


async def test_cancel_refuses_a_session_another_brain_drives_and_names_it(spawn, tmp_path):
    db = tmp_path / "s.db"
    sid = await _stale_session(db, lease_owner="otherhost:77:abcd", ttl=600)
    code, out, err = await brainhands(spawn, "sessions", "cancel", sid, "--sessions", str(db))
    assert code == 1 and out == ""
    line = assert_one_line(err)
    assert f"session {sid} is being driven by otherhost:77:abcd" in line and "--brain ADDR" in line and "Ctrl-C" in line
    store = await open_store(str(db))
    try:
        assert (await store.get_session(sid)).status == "running"
    finally:
        await store.close()


async def test_cancel_through_a_brain_service(spawn, tmp_path):
    from brain.service import BrainServiceConfig, start_brain_service

    db = tmp_path / "s.db"
    sid = await _stale_session(db, lease_owner=None, ttl=0)
    store = await open_store(str(db))
    model = script(tmp_path, [{"text": "unused"}])
    running = await start_brain_service(BrainServiceConfig(gateway="127.0.0.1:1", port=0, model=model), store=store)
    try:
        code, out, err = await brainhands(spawn, "sessions", "cancel", sid, "--brain", f"127.0.0.1:{running.port}")
        assert code == 0, err
        assert out == f"session {sid}: cancelled\n"
        assert (await store.get_session(sid)).status == "cancelled"
    finally:
        await running.drain(0)
        await store.close()


# --- mistakes: one line each, before anything starts -------------------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "Summarize README.md"],
     "brainhands: ANTHROPIC_API_KEY is not set: export it, or try `brainhands demo` which needs no key"),
    (["run", "x", "--model", "MODEL", "--gateway", "127.0.0.1:1"],
     "brainhands: cannot reach the gateway at 127.0.0.1:1 (connection refused): is the gateway running there?"),
    (["run", "x", "--model", "MODEL", "--sessions", "mysql://db/x"], "brainhands: sessions URL 'mysql://db/x'"),
    (["run", "x", "--model", "MODEL", "--workspace", "/nonexistent/dir"], "brainhands: --workspace /nonexistent/dir: not a directory"),
    (["run", "x", "--model", "MODEL", "--gateway", "127.0.0.1:1", "--workspace", "."], "brainhands: --workspace is for the local stack"),
    (["sessions", "show", "0" * 32], "brainhands: no session 00000000000000000000000000000000 in "),
    (["sessions", "show", "0" * 32, "--html", "t.html"], "brainhands: no session 0000"),
    (["sessions", "wake", "0" * 32], "brainhands: no session 0000"),
    (["sessions", "cancel", "0" * 32], "brainhands: no session 0000"),
    (["sessions", "list", "--sessions", "postgres://nobody@127.0.0.1:1/x"], "brainhands: cannot connect to PostgreSQL at 127.0.0.1:1"),
    (["sessions", "cancel", "0" * 32, "--brain", "127.0.0.1:1"], "brainhands: cannot reach the brain service at 127.0.0.1:1"),
])
async def test_each_mistake_is_one_line_and_a_non_zero_exit(args, expected, spawn, tmp_path):
    model = script(tmp_path, [{"text": "unused"}])
    args = [model if a == "MODEL" else a for a in args]
    if "--sessions" not in args and args[0] == "sessions" or args[:1] == ["run"] and "--sessions" not in args:
        args += ["--sessions", str(tmp_path / "s.db")]
        await (await open_store(str(tmp_path / "s.db"))).close()  # a store without the session (a missing one is its own line)
    code, out, err = await brainhands(spawn, *args, cwd=tmp_path)
    assert code != 0 and out == ""
    assert assert_one_line(err).startswith(expected), err
    # Nothing was started: no local stack logs.
    assert not (tmp_path / "state" / "brainhands" / "logs").exists()


async def test_run_with_a_session_workspace_works_on_a_copy_runs_its_tests_there_and_diffs_it(spawn, tmp_path, work_root):
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (workspace / "test_calc.py").write_text(
        "import unittest\nfrom calc import add\n\n\nclass T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n")
    model = script(tmp_path, [
        {"tool_calls": [["fs_edit", {"path": "calc.py", "old": "a - b", "new": "a + b"}]]},
        {"tool_calls": [["sandbox_shell", {"command": "python3 -m unittest 2>&1"}]]},
        {"tool_calls": [["workspace_diff", {}]]},
        {"text": "Fixed add."},
    ])
    db = tmp_path / "sessions.db"
    # State under a directory the sandbox's run uids can pass through (it runs as root here; tmp_path is 0700).
    code, out, err = await brainhands(spawn, "run", "Fix add", "--model", model, "--sessions", str(db),
                                      "--workspace", str(workspace), "--session-workspace",
                                      extra_env={"XDG_STATE_HOME": str(work_root)})
    assert code == 0, err
    assert out == "Fixed add.\n"
    assert f"session workspaces under {work_root / 'brainhands' / 'workspaces'}, copied from {workspace}" in err
    assert (workspace / "calc.py").read_text().endswith("a - b\n")  # the source is untouched
    store = await open_store(str(db))
    try:
        [info] = await store.list_sessions()
        outputs = {e.data["name"]: e.data["output"] for e in await store.events(info.id)
                   if e.type == "tool_call_finished"}
    finally:
        await store.close()
    assert "Ran 1 test" in outputs["sandbox_shell"] and "OK" in outputs["sandbox_shell"]
    assert "-    return a - b\n+    return a + b" in outputs["workspace_diff"]
    [tenant] = (work_root / "brainhands" / "workspaces").iterdir()
    assert (tenant / info.id / "tree" / "calc.py").read_text().endswith("a + b\n")
    code, shown, err = await brainhands(spawn, "sessions", "show", info.id, "--sessions", str(db),
                                        extra_env={"XDG_STATE_HOME": str(work_root)})
    assert code == 0, err
    assert f"workspace: {tenant / info.id / 'tree'} · 1 file(s) changed" in shown
    assert f"workspace from {workspace}" in " ".join(shown.split())  # recorded in its session_started
    # The change, kept as a patch that applies to the source.
    code, patch, err = await brainhands(spawn, "sessions", "export", info.id[:8], "--patch", "--sessions", str(db),
                                        extra_env={"XDG_STATE_HOME": str(work_root)})
    assert code == 0, err
    assert patch == outputs["workspace_diff"]
    applied = await asyncio.create_subprocess_exec("patch", "-p1", cwd=workspace, stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    said, _ = await applied.communicate(patch.encode())
    assert applied.returncode == 0, said
    assert (workspace / "calc.py").read_text().endswith("a + b\n")


async def test_a_woken_session_works_in_the_workspace_it_started_with_without_repeating_the_flags(spawn, tmp_path,
                                                                                                    work_root):
    workspace = tmp_path / "project"
    workspace.mkdir()
    (workspace / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    db = tmp_path / "s.db"
    store = await open_store(str(db))
    try:  # a run with --session-workspace --worker-workspaces whose brain stopped with an fs_read started
        config = {"max_turns": 20, "workspace": str(workspace), "worker_workspaces": True}
        sid = await store.create_session("Read calc", config)
        await store.append(sid, 1, "session_started", {
            "task": "Read calc", "config": config, "system": "s", "tools": [], "model": "scripted"})
        await store.append(sid, 2, "model_response", {
            "content": [{"type": "tool_use", "id": "t1", "name": "fs_read", "input": {"path": "calc.py"}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 10, "output_tokens": 5}})
        await store.append(sid, 3, "tool_call_started", {"call_id": "t1", "name": "fs_read",
                                                         "input": {"path": "calc.py"}, "attempt": 1})
    finally:
        await store.close()
    model = script(tmp_path, [{"text": "unused: the log has the first reply"}, {"text": "read it"}])
    code, out, err = await brainhands(spawn, "sessions", "wake", sid, "--model", model, "--sessions", str(db),
                                      cwd=tmp_path, extra_env={"XDG_STATE_HOME": str(work_root)})
    assert code == 0, err
    assert f"session workspaces under {work_root / 'brainhands' / 'workspaces'}, copied from {workspace}" in err, err
    store = await open_store(str(db))
    try:
        [read] = [e.data for e in await store.events(sid) if e.type == "tool_call_finished"]
    finally:
        await store.close()
    assert not read["is_error"] and "return a + b" in read["output"], read
    [tenant] = (work_root / "brainhands" / "workspaces").iterdir()
    assert (tenant / sid / "tree" / "calc.py").is_file()
