"""Batched appends: append_many in both stores, and a fan-out's events written in a few commits, in order."""

from __future__ import annotations

import pytest

from brain import ScriptedModel
from brain.sessions import SeqConflict, SessionNotFound
from tests.brain.test_session_store_contract import STORES


@pytest.fixture(params=[factory for _, factory in STORES], ids=[name for name, _ in STORES])
async def any_store(request, tmp_path):
    s = await request.param(tmp_path, request)
    yield s
    await s.close()


async def test_append_many_writes_consecutive_events_as_one_append_each(any_store):
    store = any_store
    sid = await store.create_session("t", {})
    await store.append(sid, 1, "session_started", {"task": "t"})
    written = await store.append_many(sid, 2, [("tool_call_started", {"n": 2}), ("tool_call_started", {"n": 3, "text": "ünï"})])
    assert [(e.seq, e.type, e.data) for e in written] == [(2, "tool_call_started", {"n": 2}), (3, "tool_call_started", {"n": 3, "text": "ünï"})]
    events = await store.events(sid)
    assert [(e.seq, e.data.get("n")) for e in events] == [(1, None), (2, 2), (3, 3)]
    assert [e.ts for e in events[1:]] == [e.ts for e in written]
    assert (await store.get_session(sid)).last_seq == 3


async def test_append_many_is_all_or_nothing_when_its_first_seq_is_not_next(any_store):
    store = any_store
    sid = await store.create_session("t", {})
    await store.append(sid, 1, "session_started", {})
    for first in (1, 3):
        with pytest.raises(SeqConflict):
            await store.append_many(sid, first, [("model_response", {}), ("session_finished", {})])
    assert [e.seq for e in await store.events(sid)] == [1]
    info = await store.get_session(sid)
    assert (info.last_seq, info.status) == (1, "running")
    with pytest.raises(SessionNotFound):
        await store.append_many("nope", 1, [("session_started", {})])


async def test_a_terminal_event_in_a_batch_sets_the_status(any_store):
    store = any_store
    sid = await store.create_session("t", {})
    await store.append_many(sid, 1, [("session_started", {}), ("session_finished", {"result": "ok"})])
    assert (await store.get_session(sid)).status == "finished"


class CountingStore:
    """The real SQLite store, counting the writes the brain makes to it."""

    def __init__(self, inner):
        self._inner = inner
        self.writes: list[int] = []  # events per write

    def __getattr__(self, name):
        return getattr(self._inner, name)

    async def append(self, session_id, seq, type, data):
        self.writes.append(1)
        return await self._inner.append(session_id, seq, type, data)

    async def append_many(self, session_id, seq, items):
        self.writes.append(len(items))
        return await self._inner.append_many(session_id, seq, items)


async def test_a_fan_out_logs_its_calls_in_fewer_writes_than_events_and_in_order(hands_target, store, recorder):
    from brain import Brain, BrainConfig

    counting = CountingStore(store)
    k = 40
    recorder.gate_at = k  # every call waits until all k are in flight: they are started together
    model = ScriptedModel([{"tool_calls": [["gate", {"item": i}] for i in range(k)]}, {"text": "all done"}])
    seen = []
    brain = Brain(target=hands_target, model=model, store=counting, config=BrainConfig(max_parallel=k, max_tool_calls=k),
                  on_event=seen.append)
    try:
        result = await brain.run("fan out")
    finally:
        await brain.close()
    assert result.ok and result.text == "all done"
    assert recorder.peak == k
    events = await store.events(result.session_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.seq for e in seen] == [e.seq for e in events]  # on_event heard every event once, in log order
    started = [e.data["call_id"] for e in events if e.type == "tool_call_started"]
    finished = [e.data["call_id"] for e in events if e.type == "tool_call_finished"]
    assert sorted(started) == sorted(finished) and len(started) == k
    # Each call is logged as started before it is logged finished, and so before it ran.
    assert all(started.index(c) < k and events.index(next(e for e in events if e.type == "tool_call_finished" and e.data["call_id"] == c))
               > events.index(next(e for e in events if e.type == "tool_call_started" and e.data["call_id"] == c)) for c in started)
    assert sum(counting.writes) == len(events)
    assert len(counting.writes) < len(events) - k  # the k starts (at least) shared commits
