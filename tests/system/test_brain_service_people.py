"""BrainService Decide, Say and Watch on a real `brainhands serve brain` process, its model the real anthropic SDK
against the scripted Messages API."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from brain.v1 import brain_pb2
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply, tool_results
from tests.system.test_brain_service import SCRUBBED, processes, read_until, stub_for  # noqa: F401 - the fixture

pytestmark = pytest.mark.system

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def api():
    with ScriptedMessagesAPI() as server:
        yield server


@pytest.fixture
def brain(processes, api, tmp_path):  # noqa: F811 - processes is the fixture imported above
    hands = processes(["serve", "hand", "tests.system.gateway_hands", "--port", "0"], env={"GW_TEST_REPLICA": "hands-1"}, timeout=90)
    env = {**{k: "" for k in SCRUBBED}, "ANTHROPIC_BASE_URL": api.base_url, "ANTHROPIC_API_KEY": "test-key"}
    return processes(["serve", "brain", "--port", "0", "--gateway", hands.address, "--sessions",
                      str(tmp_path / "sessions.db"), "--model", MODEL], env=env, ready_event="serving brain", timeout=90)


async def watch(stub, session_id, after_seq=0, timeout=60):
    call = stub.Watch(brain_pb2.WatchRequest(session_id=session_id, after_seq=after_seq), timeout=timeout)
    return [r.event async for r in call]


async def test_watch_from_seq_0_of_a_finished_session_and_from_the_middle_of_a_running_one(brain, api):
    api.script(tool_reply([("slow", {"seconds": 0.0}), ("tally", {})]), text_reply("Both done."))
    channel, stub = stub_for(brain.address)
    async with channel:
        ran = [e async for e in stub.Run(brain_pb2.RunRequest(task="Two things."), timeout=60)]
        sid = ran[0].session_id
        replay = await watch(stub, sid, 0)
        assert [(e.seq, e.type, e.data_json) for e in replay] == [(e.seq, e.type, e.data_json) for e in ran]
        assert [e.seq for e in replay] == list(range(1, len(ran) + 1)) and replay[-1].type == "session_finished"
        assert await watch(stub, sid, len(ran)) == []

        # A running session, watched from the middle while its slow call is in flight.
        api.script(tool_reply([("slow", {"seconds": 2.0}), ("tally", {})]), text_reply("Slow one done."))
        run = stub.Run(brain_pb2.RunRequest(task="A slow thing."), timeout=60)
        head = await read_until(run, lambda ev: ev[-1].type == "tool_call_started")
        second = head[0].session_id
        middle = head[-1].seq
        watched, rest = await asyncio.gather(watch(stub, second, middle), asyncio.wait_for(_drain(run), 60))
        assert [e.seq for e in watched] == list(range(middle + 1, middle + 1 + len(watched)))
        assert watched[-1].type == "session_finished"
        assert [e.seq for e in watched] == [e.seq for e in head if e.seq > middle] + [e.seq for e in rest]


async def _drain(call):
    return [e async for e in call]


async def test_decide_through_the_service_continues_a_waiting_session(brain, api):
    api.script(tool_reply([{"name": "tally", "id": "toolu_t", "input": {}}, {"name": "whoami", "id": "toolu_w", "input": {}}]),
               text_reply("Counted and asked."))
    channel, stub = stub_for(brain.address)
    async with channel:
        ran = [e async for e in stub.Run(brain_pb2.RunRequest(task="Count once.", approve=["tally"]), timeout=60)]
        sid = ran[0].session_id
        types = [e.type for e in ran]
        # The call needing no approval ran while the other waited; then the session waits, its stream ends.
        assert types[-1] == "session_waiting" and "approval_requested" in types
        finished = [json.loads(e.data_json)["name"] for e in ran if e.type == "tool_call_finished"]
        assert finished == ["whoami"]
        got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=sid), timeout=10)
        assert got.session.status == brain_pb2.SESSION_STATUS_WAITING and not got.session.lease_owner

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Decide(brain_pb2.DecideRequest(session_id=sid, call_id="toolu_w", approve=True), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Decide(brain_pb2.DecideRequest(session_id=sid, approve=False), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        decided = await stub.Decide(brain_pb2.DecideRequest(session_id=sid, approve=True), timeout=10)
        assert decided.call_id == "toolu_t"
        events = await watch(stub, sid, 0)
    assert events[-1].type == "session_finished"
    assert json.loads(events[-1].data_json)["result"] == "Counted and asked."
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sorted(r["tool_use_id"] for r in tool_results(api.bodies[-1])) == ["toolu_t", "toolu_w"]


@pytest.mark.parametrize("rpc", ["Decide", "Say", "Watch"])
async def test_people_rpcs_on_an_unknown_session_are_not_found(brain, rpc):
    channel, stub = stub_for(brain.address)
    requests = {
        "Decide": brain_pb2.DecideRequest(session_id="nope", approve=True),
        "Say": brain_pb2.SayRequest(session_id="nope", text="hello"),
        "Watch": brain_pb2.WatchRequest(session_id="nope"),
    }
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            reply = getattr(stub, rpc)(requests[rpc], timeout=10)
            if rpc == "Watch":
                _ = [r async for r in reply]
            else:
                await reply
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_say_to_an_ended_session_is_failed_precondition(brain, api):
    api.script(text_reply("Done at once."))
    channel, stub = stub_for(brain.address)
    async with channel:
        ran = [e async for e in stub.Run(brain_pb2.RunRequest(task="Nothing."), timeout=60)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Say(brain_pb2.SayRequest(session_id=ran[0].session_id, text="too late"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_run_asks_for_thinking_and_effort_and_a_bad_value_is_named(brain, api):
    api.script(text_reply("Thought it over."))
    channel, stub = stub_for(brain.address)
    async with channel:
        request = brain_pb2.RunRequest(task="Think first.", thinking="adaptive", effort="high")
        ran = [e async for e in stub.Run(request, timeout=60)]
        assert ran[-1].type == "session_finished"
        [body] = api.bodies
        assert body["thinking"] == {"type": "adaptive"} and body["output_config"] == {"effort": "high"}
        for field, value in (("thinking", "sometimes"), ("effort", "max")):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                _ = [e async for e in stub.Run(brain_pb2.RunRequest(task="t", **{field: value}), timeout=30)]
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details().startswith(f"{field}: expected ") and repr(value) in raised.value.details()
    assert len(api.bodies) == 1  # the refused runs never reached the model
