"""wake(): a session continues from its log alone; finished calls never run again; one brain at a time."""

from __future__ import annotations

import asyncio

import pytest

from brain import LeaseLost, ScriptedModel, SessionBusy, SessionNotFound
from tests.session_log import SessionLog

FAN_OUT = [
    {"tool_calls": [["echo", {"text": str(i)}] for i in range(3)] + [["hangs_once", {}] for _ in range(3)]},
    {"text": "All six answered."},
]


async def poll(predicate, what: str, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_wake_reuses_finished_calls_and_reissues_unfinished_ones(make_brain, recorder, store):
    events = []
    first = make_brain(ScriptedModel(FAN_OUT), events=events)
    run = asyncio.create_task(first.run("Six things."))

    async def three_finished_three_hanging():
        return sum(e.type == "tool_call_finished" for e in events) == 3 and recorder.in_flight == 3

    await poll(three_finished_three_hanging, "three finished calls and three hanging ones")
    run.cancel()  # the brain goes away mid fan-out
    with pytest.raises(asyncio.CancelledError):
        await run
    session_id = events[0].session_id
    assert (await store.get_session(session_id)).status == "running"

    model = ScriptedModel(FAN_OUT)
    result = await make_brain(model).wake(session_id)
    assert result.ok and result.text == "All six answered." and result.session_id == session_id
    echo_ids = [f"toolu_s000_{i:03d}" for i in range(3)]
    hang_ids = [f"toolu_s000_{i:03d}" for i in range(3, 6)]
    assert all(recorder.runs[c] == 1 for c in echo_ids), "finished calls ran again"
    assert all(recorder.runs[c] == 2 for c in hang_ids), "unfinished calls were not re-issued with their call_id"
    assert len(model.requests) == 1, "the woken brain asked the model again for a turn already in the log"
    results = model.requests[0]["messages"][-1]["content"]
    assert [r["content"] for r in results] == [f"echo: {i}" for i in range(3)] + [f"recovered {c}" for c in hang_ids]
    kinds = [e.type for e in await store.events(session_id)]
    assert kinds.count("tool_call_started") == 9 and kinds.count("tool_call_finished") == 6
    assert kinds.count("session_started") == 1 and kinds[-1] == "session_finished"


async def test_waking_a_finished_session_returns_its_result_without_work(make_brain):
    done = await make_brain(ScriptedModel([{"text": "forty-two"}])).run("Answer.")
    idle = ScriptedModel([])
    again = await make_brain(idle).wake(done.session_id)
    assert (again.status, again.text, again.session_id) == ("finished", "forty-two", done.session_id)
    assert idle.requests == []


async def test_waking_an_unknown_session_says_so(make_brain):
    with pytest.raises(SessionNotFound):
        await make_brain(ScriptedModel([])).wake("0" * 32)


async def test_a_session_held_by_another_brain_cannot_be_woken(make_brain, store):
    sid = await store.create_session("t", {})
    await SessionLog(sid).start("t").append_to(store)
    assert await store.acquire_lease(sid, "another-brain", ttl=60)
    with pytest.raises(SessionBusy, match="another-brain"):
        await make_brain(ScriptedModel([{"text": "x"}])).wake(sid)


async def test_a_brain_that_loses_its_lease_stops(make_brain, recorder, store):
    events = []
    brain = make_brain(ScriptedModel([{"tool_calls": [["stuck", {}]]}]), events=events, lease_ttl=0.3)
    run = asyncio.create_task(brain.run("Hang."))

    async def calling():
        return recorder.in_flight == 1

    await poll(calling, "the stuck call to start")
    sid = events[0].session_id
    await store.release_lease(sid, brain.owner)
    assert await store.acquire_lease(sid, "intruder", ttl=60)
    with pytest.raises(LeaseLost):
        await asyncio.wait_for(run, 10)
    assert (await store.get_session(sid)).lease_owner == "intruder"
