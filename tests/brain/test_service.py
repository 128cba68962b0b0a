"""BrainService through a plain grpc.aio client: live event streams, lookups, wake, cancel, and their status codes."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest

from brain import Brain, BrainConfig, ScriptedModel
from brain.service import BrainServiceConfig, start_brain_service
from brain.v1 import brain_pb2, brain_pb2_grpc
from hands import Context, hand

FINISHED = brain_pb2.SESSION_STATUS_FINISHED
RUNNING = brain_pb2.SESSION_STATUS_RUNNING
CANCELLED = brain_pb2.SESSION_STATUS_CANCELLED


@dataclass
class HandLog:
    """What the slow hands saw: calls that entered, calls that were cancelled, and a gate to release them."""

    entered: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    runs: Counter = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def note(self, bucket: list[str], call_id: str) -> None:
        async with self.changed:
            bucket.append(call_id)
            self.changed.notify_all()

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)


@pytest.fixture
def hand_log():
    return HandLog()


@pytest.fixture
async def hands_address(hand_service, hand_log):
    @hand(description="Echo the text back.")
    async def echo(text: str) -> str:
        return f"echo: {text}"

    @hand(description="Work until released; records being cancelled.", idempotent=True)  # cancelled with its call
    async def slow(item: int, ctx: Context) -> str:
        hand_log.runs[ctx.call_id] += 1
        await hand_log.note(hand_log.entered, ctx.call_id)
        try:
            await hand_log.release.wait()
        except asyncio.CancelledError:
            await asyncio.shield(hand_log.note(hand_log.cancelled, ctx.call_id))
            raise
        return f"item {item} done"

    @hand(description="Hangs the first time a call id is seen; answers when the same call is issued again.", idempotent=True)
    async def hangs_once(ctx: Context) -> str:
        hand_log.runs[ctx.call_id] += 1
        await hand_log.note(hand_log.entered, ctx.call_id)
        if hand_log.runs[ctx.call_id] == 1:
            await asyncio.Event().wait()
        return f"recovered {ctx.call_id}"

    running = await hand_service([echo, slow, hangs_once])
    return running.address


@pytest.fixture
async def brain_service(hands_address, store):
    """`stub = await brain_service(model)`: a BrainService on port 0 over the test hands and a SQLite store."""
    started, channels = [], []

    async def _start(model, **limits):
        config = BrainServiceConfig(gateway=hands_address, port=0, limits=BrainConfig(**{"call_timeout": 10.0, **limits}))
        running = await start_brain_service(config, model=model, store=store)
        started.append(running)
        channel = grpc.aio.insecure_channel(running.address)
        channels.append(channel)
        return brain_pb2_grpc.BrainServiceStub(channel)

    yield _start
    for channel in channels:
        await channel.close()
    for running in started:
        await running.drain(0)


async def read_all(call) -> list[brain_pb2.SessionEvent]:
    return [event async for event in call]


async def read_until(call, stop, timeout: float = 10.0) -> list[brain_pb2.SessionEvent]:
    """Events from a stream until stop(events) holds."""
    events = []

    async def go():
        async for event in call:
            events.append(event)
            if stop(events):
                return

    await asyncio.wait_for(go(), timeout)
    return events


def types(events) -> list[str]:
    return [e.type for e in events]


def data(event) -> dict:
    return json.loads(event.data_json)


async def test_run_streams_every_event_in_order_to_a_plain_grpc_client(brain_service, store):
    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": t}] for t in ("a", "b", "c")]},
        {"text": "Echoed a, b and c."},
    ])
    stub = await brain_service(model)
    events = await read_all(stub.Run(brain_pb2.RunRequest(task="Echo three letters."), timeout=30))

    sid = events[0].session_id
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.session_id for e in events} == {sid}
    assert types(events)[:2] == ["session_started", "model_response"]
    assert sorted(types(events)[2:8]) == ["tool_call_finished"] * 3 + ["tool_call_started"] * 3
    assert types(events)[8:] == ["model_response", "session_finished"]
    assert data(events[0])["task"] == "Echo three letters."
    assert data(events[-1])["result"] == "Echoed a, b and c."
    outputs = sorted(data(e)["output"] for e in events if e.type == "tool_call_finished")
    assert outputs == ["echo: a", "echo: b", "echo: c"]
    # What the stream showed is the log, event for event.
    logged = await store.events(sid)
    assert [(e.seq, e.type, e.data) for e in logged] == [(e.seq, e.type, data(e)) for e in events]
    assert all(abs(e.timestamp.ToNanoseconds() / 1e9 - x.ts) < 1e-3 for e, x in zip(events, logged, strict=True))


async def test_get_session_and_list_sessions_show_a_finished_run(brain_service):
    stub = await brain_service(ScriptedModel([{"text": "Forty-two."}]))
    events = await read_all(stub.Run(brain_pb2.RunRequest(task="The answer?"), timeout=30))
    sid = events[0].session_id

    got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=sid))
    assert got.session.status == FINISHED and got.session.task == "The answer?"
    short = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=sid[:8]))  # a short id, as listings print
    assert short.session.session_id == sid
    assert got.session.last_seq == events[-1].seq and got.session.lease_owner == ""
    assert got.outcome.result == "Forty-two." and not got.outcome.cut_short
    assert json.loads(got.outcome.totals_json)["turns"] == 1

    listed = await stub.ListSessions(brain_pb2.ListSessionsRequest())
    assert [s.session_id for s in listed.sessions] == [sid]
    assert listed.sessions[0].status == FINISHED
    running = await stub.ListSessions(brain_pb2.ListSessionsRequest(status=RUNNING))
    assert list(running.sessions) == []


async def test_run_request_limits_and_model_apply_to_the_session(brain_service):
    model = ScriptedModel([{"tool_calls": [["echo", {"text": "again"}]], "repeat": True}])
    stub = await brain_service(model)
    request = brain_pb2.RunRequest(task="Loop.", limits=brain_pb2.RunLimits(max_turns=2, max_parallel=3))
    request.limits.call_timeout.FromSeconds(7)
    events = await read_all(stub.Run(request, timeout=30))
    assert data(events[0])["config"]["max_turns"] == 2
    assert data(events[0])["config"]["call_timeout"] == 7.0
    assert "limit_reached" in types(events)
    end = data(events[-1])
    assert events[-1].type == "session_finished" and end["cut_short"] and end["reason"] == "max_turns"


async def test_bad_requests_and_unknown_sessions_get_their_status_codes(brain_service):
    stub = await brain_service(ScriptedModel([{"text": "unused"}]))

    async def code_of(call_or_coro):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if hasattr(call_or_coro, "__aiter__"):
                await read_all(call_or_coro)
            else:
                await call_or_coro
        return err.value.code(), err.value.details()

    INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    assert await code_of(stub.Run(brain_pb2.RunRequest(task="   "))) == (INVALID, "task: must not be empty")
    code, details = await code_of(stub.Run(brain_pb2.RunRequest(task="x", limits=brain_pb2.RunLimits(max_turns=-1))))
    assert code == INVALID and "limits.max_turns" in details
    code, details = await code_of(stub.Run(brain_pb2.RunRequest(task="x", model="scripted:/etc/passwd")))
    assert code == INVALID and "scripted models are chosen when the brain service starts" in details
    code, _ = await code_of(stub.ListSessions(brain_pb2.ListSessionsRequest(page_size=5000)))
    assert code == INVALID
    for call in (
        stub.GetSession(brain_pb2.GetSessionRequest(session_id="nope")),
        stub.Wake(brain_pb2.WakeRequest(session_id="nope")),
        stub.Cancel(brain_pb2.CancelRequest(session_id="nope")),
    ):
        assert await code_of(call) == (NOT_FOUND, "no session 'nope'")
    assert (await code_of(stub.GetSession(brain_pb2.GetSessionRequest())))[0] == INVALID


async def test_run_against_an_unreachable_gateway_is_unavailable(store, tmp_path):
    config = BrainServiceConfig(gateway="127.0.0.1:1", port=0, limits=BrainConfig(describe_timeout=2.0))
    running = await start_brain_service(config, model=ScriptedModel([{"text": "x"}]), store=store)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await read_all(brain_pb2_grpc.BrainServiceStub(channel).Run(brain_pb2.RunRequest(task="hi"), timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot list the hands at 127.0.0.1:1" in err.value.details()
    finally:
        await running.drain(0)


async def test_wake_of_a_finished_session_streams_its_end_or_nothing_new(brain_service):
    stub = await brain_service(ScriptedModel([{"text": "Done."}]))
    events = await read_all(stub.Run(brain_pb2.RunRequest(task="Quick one."), timeout=30))
    sid, last = events[0].session_id, events[-1].seq

    assert await read_all(stub.Wake(brain_pb2.WakeRequest(session_id=sid, after_seq=last), timeout=10)) == []
    replay = await read_all(stub.Wake(brain_pb2.WakeRequest(session_id=sid), timeout=10))
    assert replay == events
    tail = await read_all(stub.Wake(brain_pb2.WakeRequest(session_id=sid, after_seq=last - 1), timeout=10))
    assert types(tail) == ["session_finished"]


async def test_cancel_during_a_fan_out_cancels_the_hand_calls_and_ends_the_log(brain_service, hand_log, store):
    model = ScriptedModel([{"tool_calls": [["slow", {"item": i}] for i in range(3)]}, {"text": "never reached"}])
    stub = await brain_service(model)
    run = stub.Run(brain_pb2.RunRequest(task="Three slow things."), timeout=30)
    seen = await read_until(run, lambda ev: types(ev).count("tool_call_started") == 3)
    await hand_log.wait_for(lambda: len(hand_log.entered) == 3)  # every call is inside its hand
    sid = seen[0].session_id

    cancelled = await stub.Cancel(brain_pb2.CancelRequest(session_id=sid, reason="the user changed their mind"), timeout=10)
    assert cancelled.session.status == CANCELLED and cancelled.session.lease_owner == ""

    rest = await asyncio.wait_for(read_all(run), 10)
    assert rest[-1].type == "session_cancelled"
    assert data(rest[-1])["reason"] == "the user changed their mind"
    assert "tool_call_finished" not in types(rest)
    assert [e.seq for e in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
    assert await run.code() == grpc.StatusCode.OK
    # The hands saw their gRPC calls cancelled.
    await hand_log.wait_for(lambda: len(hand_log.cancelled) == 3)
    assert sorted(hand_log.cancelled) == sorted(hand_log.entered)
    assert (await store.events(sid))[-1].type == "session_cancelled"
    got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=sid))
    assert got.session.status == CANCELLED and got.outcome.reason == "the user changed their mind"
    # Cancelling again changes nothing.
    again = await stub.Cancel(brain_pb2.CancelRequest(session_id=sid), timeout=10)
    assert again.session.status == CANCELLED and again.session.last_seq == got.session.last_seq


async def test_a_client_that_leaves_run_can_follow_the_session_again_with_wake(brain_service, hand_log):
    model = ScriptedModel([{"tool_calls": [["slow", {"item": 1}]]}, {"text": "Slow thing done."}])
    stub = await brain_service(model)
    run = stub.Run(brain_pb2.RunRequest(task="One slow thing."), timeout=30)
    seen = await read_until(run, lambda ev: "tool_call_started" in types(ev))
    run.cancel()  # the client goes away; the session is the brain's and goes on
    sid = seen[0].session_id
    await hand_log.wait_for(lambda: len(hand_log.entered) == 1)

    wake = stub.Wake(brain_pb2.WakeRequest(session_id=sid, after_seq=seen[-1].seq), timeout=30)
    hand_log.release.set()
    rest = await read_all(wake)
    assert types(rest) == ["tool_call_finished", "model_response", "session_finished"]
    assert [e.seq for e in rest] == list(range(seen[-1].seq + 1, seen[-1].seq + 4))
    assert data(rest[-1])["result"] == "Slow thing done."
    assert hand_log.cancelled == []


async def interrupted_session(hands_address, store, hand_log, model) -> str:
    """A session whose brain stopped mid-call without an end in its log, as after a crash."""
    brain = Brain(target=hands_address, model=model, store=store, config=BrainConfig(call_timeout=10.0))
    task = asyncio.create_task(brain.run("Recover me."))
    await hand_log.wait_for(lambda: len(hand_log.entered) == 1)
    task.cancel()  # not Brain.cancel: the session stays running in the log
    with pytest.raises(asyncio.CancelledError):
        await task
    await brain.close()
    [info] = await store.list_sessions()
    assert info.status == "running"
    return info.id


async def test_wake_continues_a_session_no_brain_drives(brain_service, hands_address, store, hand_log):
    model = ScriptedModel([{"tool_calls": [["hangs_once", {}]]}, {"text": "Recovered."}])
    sid = await interrupted_session(hands_address, store, hand_log, model)
    stub = await brain_service(model)

    events = await read_all(stub.Wake(brain_pb2.WakeRequest(session_id=sid), timeout=30))
    assert types(events) == [
        "session_started", "model_response", "tool_call_started",  # from the log
        "tool_call_started", "tool_call_finished", "model_response", "session_finished",  # driven here
    ]
    assert [e.seq for e in events] == list(range(1, 8))
    assert data(events[4])["output"] == "recovered toolu_s000_000"
    assert hand_log.runs == {"toolu_s000_000": 2}  # re-issued once, with the same call id


async def test_cancel_of_a_session_no_brain_drives_ends_its_log(brain_service, hands_address, store, hand_log):
    model = ScriptedModel([{"tool_calls": [["hangs_once", {}]]}, {"text": "unused"}])
    sid = await interrupted_session(hands_address, store, hand_log, model)
    stub = await brain_service(model)
    response = await stub.Cancel(brain_pb2.CancelRequest(session_id=sid), timeout=10)
    assert response.session.status == CANCELLED
    last = (await store.events(sid))[-1]
    assert last.type == "session_cancelled" and last.data["reason"] == "cancelled through the BrainService API"
    assert hand_log.runs == {"toolu_s000_000": 1}  # nothing was re-run to cancel it


async def test_a_session_another_brain_holds_is_failed_precondition_naming_it(brain_service, store):
    stub = await brain_service(ScriptedModel([{"text": "unused"}]))
    sid = await store.create_session("held elsewhere", {})
    await store.append(sid, 1, "session_started", {"task": "held elsewhere", "system": "s", "tools": [], "config": {}})
    assert await store.acquire_lease(sid, "other-host:4242:abcd", ttl=60)

    for call in (stub.Wake(brain_pb2.WakeRequest(session_id=sid)), stub.Cancel(brain_pb2.CancelRequest(session_id=sid))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if hasattr(call, "__aiter__"):
                await read_all(call)
            else:
                await call
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "driven by brain other-host:4242:abcd" in err.value.details()
    got = await stub.GetSession(brain_pb2.GetSessionRequest(session_id=sid))
    assert got.session.status == RUNNING and got.session.lease_owner == "other-host:4242:abcd"
    assert (await store.events(sid))[-1].seq == 1  # nothing was written


async def test_draining_the_service_leaves_its_sessions_wakeable(hands_address, store, hand_log):
    model = ScriptedModel([{"tool_calls": [["slow", {"item": 1}]]}, {"text": "Finished elsewhere."}])
    config = BrainServiceConfig(gateway=hands_address, port=0, limits=BrainConfig(call_timeout=10.0))
    first = await start_brain_service(config, model=model, store=store)
    async with grpc.aio.insecure_channel(first.address) as channel:
        run = brain_pb2_grpc.BrainServiceStub(channel).Run(brain_pb2.RunRequest(task="Survive a restart."), timeout=30)
        seen = await read_until(run, lambda ev: "tool_call_started" in types(ev))
        await hand_log.wait_for(lambda: len(hand_log.entered) == 1)
        await first.drain(5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(run)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Wake it" in err.value.details()
    sid = seen[0].session_id
    assert (await store.get_session(sid)).status == "running"

    hand_log.release.set()
    second = await start_brain_service(config, model=model, store=store)
    try:
        async with grpc.aio.insecure_channel(second.address) as channel:
            rest = await read_all(brain_pb2_grpc.BrainServiceStub(channel).Wake(
                brain_pb2.WakeRequest(session_id=sid, after_seq=seen[-1].seq), timeout=30))
    finally:
        await second.drain(0)
    assert rest[-1].type == "session_finished" and data(rest[-1])["result"] == "Finished elsewhere."
