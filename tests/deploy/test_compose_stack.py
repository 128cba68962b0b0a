"""deploy/compose.yaml run with podman: a session through the brain service survives a gateway and a hand crashing."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import grpc
import pytest

from brain.v1 import brain_pb2, brain_pb2_grpc
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply, tool_results
from hands import HandClient
from tests.deploy import podman as pm

pytestmark = [pytest.mark.container, pytest.mark.system]

API_KEY = "compose-test-key"
WORKER_KEY = "compose-test-worker-key"
BRAIN_KEY = "compose-test-brain-key"
BRAIN_AUTH = (("authorization", f"Bearer {BRAIN_KEY}"),)  # the brain service's tenants (deploy/brain.yaml)
WORKER_MODEL = "scripted-worker"
FILES = 6  # fs_write calls, quick
SLOW = 4  # llm_worker calls, each long enough the first time to be cut by the crashes
SLOW_SECONDS = 8


def first_turn() -> dict:
    writes = [{"id": f"toolu_write_{i}", "name": "fs_write",
               "input": {"path": f"parts/part-{i}.txt", "content": f"part {i} of {FILES}\n"}} for i in range(FILES)]
    slow = [{"id": f"toolu_slow_{i}", "name": "llm_worker", "input": {"task": f"Check part {i}."}} for i in range(SLOW)]
    return tool_reply([*writes, *slow], text="Writing the parts and having workers check them in parallel.")


class Orchestrator:
    """The models, answering over the Messages API from the host.

    The brain's model fans out, then redoes what failed until nothing has. A retry turn waits until
    the test says the crashed containers are back (`resume`), as a model slower than a restart would;
    a session whose calls keep failing ends after three retry turns. The workers' model (the llm
    hand's) is slow the first time it sees a task, so those calls are in flight when the crashes come.
    """

    def __init__(self):
        self.resume = threading.Event()
        self.retried: list[str] = []
        self.worker_tasks: list[str] = []

    def __call__(self, body: dict) -> dict:
        if body.get("model") == WORKER_MODEL:
            return self.worker(body)
        assistant = [m for m in body["messages"] if m["role"] == "assistant"]
        if not assistant:
            return first_turn()
        last_calls = {b["id"]: b for b in assistant[-1]["content"] if b.get("type") == "tool_use"}
        failed = [last_calls[r["tool_use_id"]] for r in tool_results(body) if r.get("is_error")]
        if not failed:
            return text_reply(f"All {FILES} parts are written and {SLOW} were checked.")
        if len(assistant) > 3:
            return text_reply("Gave up: calls kept failing.")
        self.resume.wait(timeout=240)
        again = [{"id": f"{call['id']}_r{len(assistant)}", "name": call["name"], "input": call["input"]} for call in failed]
        self.retried.extend(call["id"] for call in again)
        return tool_reply(again, text="Some calls failed while the stack restarted; doing them again.")

    def worker(self, body: dict) -> dict:
        task = json.dumps(body["messages"][0]["content"])
        part = next((i for i in range(SLOW) if f"Check part {i}." in task), None)
        if part is None:  # the test's own probe
            return text_reply("ready")
        first = task not in self.worker_tasks
        self.worker_tasks.append(task)
        if first:
            time.sleep(SLOW_SECONDS)
        return text_reply(f"checked {part}")


@pytest.fixture
def model_api():
    # On all addresses: the brain container reaches the host at host.containers.internal.
    api = ScriptedMessagesAPI(host="0.0.0.0", responder=Orchestrator()).start()
    yield api
    api.responder.resume.set()
    api.stop()


@pytest.fixture
def stack(compose_images, model_api, container_timings, request):
    port = model_api.base_url.rsplit(":", 1)[1]
    compose = pm.ComposeStack(
        compose_images,
        env={"BRAINHANDS_API_KEY": API_KEY, "BRAINHANDS_WORKER_API_KEY": WORKER_KEY, "BRAINHANDS_BRAIN_KEY": BRAIN_KEY, "POSTGRES_PASSWORD": "compose-test",
             "BRAINHANDS_WORKER_MODEL": WORKER_MODEL},
        overrides={service: {"environment": {
            "ANTHROPIC_API_KEY": "scripted-model-key",
            "ANTHROPIC_BASE_URL": f"http://host.containers.internal:{port}",
        }} for service in ("brain", "hands-llm")},
    )
    try:
        with container_timings.step("compose stack up (networks, volumes, 8 containers, all healthy)"):
            compose.up()
        failures = request.session.testsfailed
        yield compose
        if request.session.testsfailed > failures:  # pragma: no cover - shown only when the test failed
            print(compose.dump_logs())
    finally:
        with container_timings.step("compose stack down"):
            compose.down()


def calls_through(gateway: pm.Container, session_id: str) -> int:
    return sum(1 for line in gateway.log_lines() if line.get("event") == "call" and line.get("session_id") == session_id)


async def wait_until(check, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout:g} s")
        await asyncio.sleep(0.5)


async def workers_answer_through(address: str) -> bool:
    async with HandClient(address, api_key=API_KEY) as client:
        try:
            result = await client.execute("llm_worker", {"task": "Say you are ready."}, timeout=20)
        except grpc.aio.AioRpcError:
            return False
    return not result.is_error and result.output == "ready"


async def routes_the_session_hands(address: str) -> bool:
    """The gateway has health-checked the backends the session uses (a container is healthy before that)."""
    async with HandClient(address, api_key=API_KEY) as client:
        try:
            specs = await client.describe(timeout=10)
        except grpc.aio.AioRpcError:
            return False
    return {"fs_write", "fs_read", "llm_worker"} <= {s.name for s in specs}


async def test_a_session_finishes_with_nothing_lost_when_a_gateway_and_a_hand_crash(stack, model_api):
    gateways = stack.containers["gateway"]
    llm = stack.containers["hands-llm"][0]
    brain = stack.containers["brain"][0]
    assert len(gateways) == 2
    for gateway in gateways:  # only crashes may cut calls: start once both gateways route every hand used
        await wait_until(lambda g=gateway: routes_the_session_hands(g.address(50051)), f"{gateway.name} routes the hands")

    channel = grpc.aio.insecure_channel(brain.address(50061))
    stub = brain_pb2_grpc.BrainServiceStub(channel)
    async with channel:
        run = stub.Run(brain_pb2.RunRequest(task="Write the parts and check them."), timeout=600, metadata=BRAIN_AUTH)
        events: list[brain_pb2.SessionEvent] = []
        async for event in run:
            events.append(event)
            started = {json.loads(e.data_json)["call_id"] for e in events if e.type == "tool_call_started"}
            finished = {json.loads(e.data_json)["call_id"] for e in events if e.type == "tool_call_finished"}
            # Every write done, every worker still running: now crash the gateway carrying them and the llm hand.
            if len(started) == FILES + SLOW and {f"toolu_write_{i}" for i in range(FILES)} <= finished:
                break
        assert not finished & {f"toolu_slow_{i}" for i in range(SLOW)}, "the workers ended before the crashes"
        session_id = events[0].session_id
        by_calls = await asyncio.to_thread(lambda: sorted(gateways, key=lambda g: calls_through(g, session_id)))
        used, other = by_calls[-1], by_calls[0]
        assert await asyncio.to_thread(calls_through, used, session_id) > 0, "no gateway logged the session's calls"
        await asyncio.to_thread(llm.crash)
        await asyncio.to_thread(used.crash)

        async def back(container: pm.Container) -> bool:
            return await asyncio.to_thread(lambda: container.restarts() >= 1 and container.healthy())

        await wait_until(lambda: back(llm), "the crashed llm hand restarted and healthy")
        await wait_until(lambda: back(used), "the crashed gateway restarted and healthy")
        for gateway in gateways:  # each gateway routes to the restarted hand again
            await wait_until(lambda g=gateway: workers_answer_through(g.address(50051)), f"llm_worker through {gateway.name}")
        model_api.responder.resume.set()
        events += [event async for event in run]

        got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=session_id), timeout=30, metadata=BRAIN_AUTH)
        stored = [e async for e in stub.Wake(brain_pb2.WakeRequest(session_id=session_id, after_seq=0), timeout=60, metadata=BRAIN_AUTH)]

    data = [json.loads(e.data_json) for e in events]
    # The session ended the way the model meant it to, and the log has every event, with no gap.
    assert events[-1].type == "session_finished", [e.type for e in events]
    assert data[-1]["result"] == f"All {FILES} parts are written and {SLOW} were checked."
    assert got.session.status == brain_pb2.SESSION_STATUS_FINISHED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [(e.seq, e.type, e.data_json) for e in stored] == [(e.seq, e.type, e.data_json) for e in events]

    # Every call that started has exactly one result; the crashes cut only the workers that were running,
    # and each of those was done again and succeeded.
    started = [d["call_id"] for e, d in zip(events, data, strict=True) if e.type == "tool_call_started"]
    results = {d["call_id"]: d for e, d in zip(events, data, strict=True) if e.type == "tool_call_finished"}
    assert sorted(started) == sorted(results) and len(started) == len(set(started))
    failed = {cid for cid, r in results.items() if r["is_error"]}
    assert failed, "no call was cut by the crashes"
    assert failed <= {f"toolu_slow_{i}" for i in range(SLOW)} | set(model_api.responder.retried), failed
    not_crashes = {cid: results[cid]["output"] for cid in failed if results[cid]["status"] != "UNAVAILABLE"}
    assert not not_crashes, not_crashes
    for i in range(SLOW):
        outputs = [r["output"] for cid, r in results.items() if cid.startswith(f"toolu_slow_{i}") and not r["is_error"]]
        assert outputs == [f"checked {i}"], (i, outputs)

    # The brain kept driving (no restart), the crashed containers came back, and every write is there.
    assert await asyncio.to_thread(brain.restarts) == 0
    async with HandClient(other.address(50051), api_key=API_KEY) as client:
        for i in range(FILES):
            read = await client.execute("fs_read", {"path": f"parts/part-{i}.txt"}, timeout=30)
            assert not read.is_error and f"part {i} of {FILES}" in read.output, read.output
