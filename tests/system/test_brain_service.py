"""`brainhands serve brain` as a real process with a scripted model: streams, cancel, restart and wake, CLI errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from brain.v1 import brain_pb2, brain_pb2_grpc
from tests.procs import ROOT, start_service

pytestmark = pytest.mark.system

#: Environment the brain must not pick up from the machine running the tests.
SCRUBBED = ("BRAINHANDS_GATEWAY", "BRAINHANDS_SESSIONS", "BRAINHANDS_MODEL", "BRAINHANDS_API_KEY", "ANTHROPIC_API_KEY")


@pytest.fixture
def processes():
    started = []

    def _start(args, **kwargs):
        service = start_service(args, **kwargs)
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop()


@pytest.fixture
def hands(processes):
    return processes(["serve", "hand", "tests.system.gateway_hands", "--port", "0"], env={"GW_TEST_REPLICA": "hands-1"})


@pytest.fixture
def serve_brain(processes, hands, tmp_path):
    """`brain = serve_brain(steps)`: a brain process on port 0 with a scripted model, the test hands and a SQLite log."""

    def _start(steps, sessions=None):
        script = tmp_path / f"script-{len(list(tmp_path.glob('script-*')))}.json"
        script.write_text(json.dumps({"steps": steps}))
        env = {k: "" for k in SCRUBBED}
        args = ["serve", "brain", "--port", "0", "--gateway", hands.address,
                "--sessions", str(sessions or tmp_path / "sessions.db"), "--model", f"scripted:{script}"]
        return processes(args, env=env, ready_event="serving brain")

    return _start


def stub_for(address):
    channel = grpc.aio.insecure_channel(address)
    return channel, brain_pb2_grpc.BrainServiceStub(channel)


async def read_until(call, stop, timeout=20.0):
    events = []

    async def go():
        async for event in call:
            events.append(event)
            if stop(events):
                return

    await asyncio.wait_for(go(), timeout)
    return events


async def test_run_streams_a_session_from_a_brain_process(serve_brain):
    brain = serve_brain([
        {"tool_calls": [["whoami", {}], ["tally", {"pause": 0.01}]]},
        {"text": "Both ran on hands-1."},
    ])
    channel, stub = stub_for(brain.address)
    async with channel:
        events = [e async for e in stub.Run(brain_pb2.RunRequest(task="Ask twice who answers."), timeout=30)]
        got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=events[0].session_id), timeout=10)
    assert [e.seq for e in events] == list(range(1, 9))
    assert [e.type for e in events][:2] == ["session_started", "model_response"]
    assert [e.type for e in events][-2:] == ["model_response", "session_finished"]
    outputs = sorted(json.loads(e.data_json)["output"] for e in events if e.type == "tool_call_finished")
    assert outputs == ["hands-1", "hands-1"]
    assert json.loads(events[-1].data_json)["result"] == "Both ran on hands-1."
    assert got.session.status == brain_pb2.SESSION_STATUS_FINISHED and got.outcome.result == "Both ran on hands-1."


async def test_cancel_stops_a_running_session_in_a_brain_process(serve_brain):
    brain = serve_brain([{"tool_calls": [["slow", {"seconds": 120}], ["slow", {"seconds": 120}]]}, {"text": "never"}])
    channel, stub = stub_for(brain.address)
    async with channel:
        run = stub.Run(brain_pb2.RunRequest(task="Wait a long time, twice."), timeout=60)
        seen = await read_until(run, lambda ev: sum(e.type == "tool_call_started" for e in ev) == 2)
        response = await stub.Cancel(brain_pb2.CancelRequest(session_id=seen[0].session_id, reason="too slow"), timeout=20)
        rest = [e async for e in run]
    assert response.session.status == brain_pb2.SESSION_STATUS_CANCELLED
    assert [e.type for e in rest] == ["session_cancelled"]
    assert json.loads(rest[0].data_json)["reason"] == "too slow"
    brain.signal(signal.SIGTERM)
    assert await asyncio.to_thread(brain.proc.wait, 20) == 0


async def test_a_session_interrupted_by_sigterm_is_finished_by_the_next_brain(serve_brain, tmp_path):
    steps = [{"tool_calls": [["slow", {"seconds": 0.5}]]}, {"text": "Finished after a restart."}]
    first = serve_brain(steps)
    channel, stub = stub_for(first.address)
    async with channel:
        run = stub.Run(brain_pb2.RunRequest(task="Outlive your brain."), timeout=60)
        seen = await read_until(run, lambda ev: ev[-1].type == "tool_call_started")
        first.signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [e async for e in run]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await asyncio.to_thread(first.proc.wait, 20) == 0

    second = serve_brain(steps)
    channel, stub = stub_for(second.address)
    sid = seen[0].session_id
    async with channel:
        rest = [e async for e in stub.Wake(brain_pb2.WakeRequest(session_id=sid, after_seq=seen[-1].seq), timeout=60)]
    # The interrupted call is issued again with its call id, then the session ends.
    assert [e.type for e in rest] == ["tool_call_started", "tool_call_finished", "model_response", "session_finished"]
    assert json.loads(rest[0].data_json)["call_id"] == json.loads(seen[-1].data_json)["call_id"]
    assert json.loads(rest[-1].data_json)["result"] == "Finished after a restart."


def run_cli(*args, env=None):
    full_env = {**os.environ, **{k: "" for k in SCRUBBED}, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), full_env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "brainhands", *args], capture_output=True, text=True, env=full_env,
                          cwd=ROOT, timeout=60)


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "scripted:x.json"], "brainhands: gateway: required; pass --gateway ADDR or set BRAINHANDS_GATEWAY"),
    (["--gateway", "127.0.0.1:1", "--sessions", "mysql://db/x", "--model", "scripted:x.json"],
     "brainhands: sessions URL 'mysql://db/x': use a file path, sqlite:///PATH or postgresql://..."),
    (["--gateway", "127.0.0.1:1", "--model", "claude-x-1"],
     "brainhands: model claude-x-1 needs ANTHROPIC_API_KEY; set it, or pass --model scripted:PATH to run offline"),
])
def test_a_misconfigured_brain_says_what_is_wrong_in_one_line(args, message, tmp_path):
    result = run_cli("serve", "brain", "--port", "0", *args, env={"BRAINHANDS_SESSIONS": str(tmp_path / "s.db")})
    assert result.returncode == 2
    assert result.stderr.strip() == message


async def test_a_run_names_its_workspace_to_every_call_and_a_bad_one_is_refused(serve_brain):
    brain = serve_brain([{"tool_calls": [["show_call", {}]]}, {"text": "seen"}])
    channel, stub = stub_for(brain.address)
    async with channel:
        events = [e async for e in stub.Run(brain_pb2.RunRequest(
            task="Show the call.", workspace="/srv/projects/ledger", worker_workspaces=True), timeout=30)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in stub.Run(brain_pb2.RunRequest(task="x", workspace="projects/ledger"), timeout=30):
                pass
    [shown] = [json.loads(json.loads(e.data_json)["output"]) for e in events if e.type == "tool_call_finished"]
    assert shown["metadata"]["x-brainhands-workspace"] == "/srv/projects/ledger"
    assert shown["metadata"]["x-brainhands-worker-workspaces"] == "branch"
    started = json.loads(events[0].data_json)
    assert started["config"]["workspace"] == "/srv/projects/ledger" and started["config"]["worker_workspaces"]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "workspace: expected an absolute directory or a git URL, got 'projects/ledger'"
