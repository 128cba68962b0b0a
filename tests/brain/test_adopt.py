"""Brains that adopt orphans (--adopt): two adopting brains on one PostgreSQL store never drive one session, waiting
sessions and live ones are left alone, tenants kept; the service's own loop is bounded, logged and counted."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from structlog.testing import capture_logs

from brain import BrainConfig, ScriptedModel
from brain.adopt import Adopter
from brain.events import SessionState
from brain.metrics import BrainMetrics
from brain.service import BrainServiceConfig, BrainServicer, start_brain_service
from brain.sessions import SessionStore
from hands import Context, HandClient, hand
from tests.pg_schema import postgres_store
from tests.procs import poll
from tests.session_log import SessionLog

CALLS = 2  # unfinished calls per orphan
MODEL = ScriptedModel([{"tool_calls": [["act", {}]]}, {"text": "Adopted and done.", "repeat": True}])


@pytest.fixture
async def pg_store(tmp_path, request):
    store = await postgres_store(tmp_path, request)
    yield store
    await store.close()


@pytest.fixture
async def acting(hand_service):
    """A hand counting its runs per call_id (idempotent: no dedupe hides a second run); held while `hold` is clear."""
    runs: Counter = Counter()
    hold = asyncio.Event()
    hold.set()
    in_flight: set[str] = set()
    peak = [0]

    @hand(description="Act, counting each run.", idempotent=True)
    async def act(ctx: Context) -> str:
        runs[ctx.call_id] += 1
        in_flight.add(ctx.session_id)
        peak[0] = max(peak[0], len(in_flight))
        try:
            await hold.wait()
        finally:
            in_flight.discard(ctx.session_id)
        return f"acted {ctx.call_id}"

    running = await hand_service([act])
    return running.address, runs, hold, peak


async def orphan(store: SessionStore, *, tenant: str = "local", holder: str | None = "dead-brain", task: str = "Act.") -> str:
    """A session a brain left mid fan-out: its calls started and not finished, its lease (if any) about to run out."""
    sid = await store.create_session(task, {}, tenant=tenant)
    calls = [(f"toolu_{uuid.uuid4().hex[:12]}", "act", {}) for _ in range(CALLS)]
    log = SessionLog(sid).start(task, model="scripted").model(calls)
    for call_id, _, _ in calls:
        log.started(call_id, "act")
    if holder is not None:
        assert await store.acquire_lease(sid, holder, ttl=0.05)
    await store.append_many(sid, 1, [(e.type, e.data) for e in log.events])
    return sid


async def waiting(store: SessionStore) -> str:
    """A session whose one call waits for a person's approval: no lease, status waiting."""
    sid = await store.create_session("Write a file.", {})
    log = SessionLog(sid).start("Write a file.", model="scripted").model([("toolu_w", "act", {})])
    log.approval("toolu_w", "act").waiting("toolu_w")
    await store.append_many(sid, 1, [(e.type, e.data) for e in log.events])
    return sid


async def _no_lease_held(store: SessionStore, sids: list[str]) -> None:
    async def expired():
        return not [o for o in sids if o not in {i.id for i in await store.orphaned_sessions(limit=100)}]

    await poll(expired, "the dead brain's leases to run out", timeout=10)


def _servicer(store: SessionStore, address: str, **config) -> BrainServicer:
    config = BrainServiceConfig(gateway=address, port=0, limits=BrainConfig(call_timeout=10.0), **config)
    return BrainServicer(config=config, store=store, hands=HandClient(address), model=MODEL)


async def test_two_brains_adopting_at_once_on_postgres_each_orphan_is_driven_by_one(pg_store, acting):
    address, runs, _, _ = acting
    orphans = [await orphan(pg_store, tenant="acme" if i % 2 else "local") for i in range(8)]
    asked = await waiting(pg_store)
    held = await orphan(pg_store, holder=None)
    assert await pg_store.acquire_lease(held, "a-live-brain", ttl=60)  # its brain is alive: not an orphan
    await _no_lease_held(pg_store, orphans)
    brains = [_servicer(pg_store, address, adopt_max=len(orphans)) for _ in range(2)]
    try:
        # Both look at the same moment, twice: every orphan is a candidate for both.
        got = [sum(pair, []) for pair in zip(*[await asyncio.gather(*(b.adopter.scan() for b in brains)) for _ in range(2)],
                                             strict=True)]
        assert sorted(got[0] + got[1]) == sorted(orphans), got
        assert not set(got[0]) & set(got[1]), "both brains adopted the same session"

        async def all_ended():
            return {(await pg_store.get_session(s)).status for s in orphans} == {"finished"}

        await poll(all_ended, "the adopted sessions to finish", timeout=30)
    finally:
        for b in brains:
            await b.close()
            await b.hands.close()
    for sid in orphans:
        events = await pg_store.events(sid)
        state = SessionState.from_events(sid, events)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert state.outcome.result == "Adopted and done."
        # One re-issued start per call, by the one brain that drove it.
        starts = Counter(e.data["call_id"] for e in events if e.type == "tool_call_started")
        assert sorted(starts.values()) == [2] * CALLS
    assert len(runs) == CALLS * len(orphans) and set(runs.values()) == {1}, f"runs per call: {dict(runs)}"
    # Adopted under their own tenant; the waiting and the live-held sessions untouched.
    assert [(await pg_store.get_session(s)).tenant for s in orphans] == ["acme" if i % 2 else "local" for i in range(8)]
    assert (await pg_store.get_session(asked)).status == "waiting"
    assert [e.type for e in await pg_store.events(asked)][-1] == "session_waiting"
    assert (await pg_store.get_session(held)).lease_owner == "a-live-brain"
    assert (await pg_store.get_session(held)).last_seq == 2 + CALLS


async def test_an_adopting_brain_service_drives_at_most_adopt_max_logs_each_adoption_and_counts_it(store, acting):
    address, runs, hold, peak = acting
    hold.clear()
    orphans = [await orphan(store) for _ in range(5)]
    left = await orphan(store, holder=None)  # a brain that stopped cleanly released it: no holder known
    await _no_lease_held(store, orphans)
    metrics = BrainMetrics()
    config = BrainServiceConfig(gateway=address, port=0, limits=BrainConfig(call_timeout=10.0),
                                adopt=True, adopt_interval=0.05, adopt_max=2)
    with capture_logs() as logs:
        running = await start_brain_service(config, model=MODEL, store=store, metrics=metrics)
        try:
            async def two_in_flight():
                return len(runs) == 2 * CALLS

            await poll(two_in_flight, "two adopted sessions' calls to run")
            await asyncio.sleep(0.3)  # six looks later: still only the two (the others wait for a free slot)
            assert len(runs) == 2 * CALLS
            hold.set()

            async def all_ended():
                return {(await store.get_session(s)).status for s in [*orphans, left]} == {"finished"}

            await poll(all_ended, "every orphan to finish", timeout=30)
        finally:
            await running.drain(0)
    assert peak[0] == 2, "more adopted sessions ran at once than adopt_max"
    adoptions = [e for e in logs if e["event"] == "adopting session"]
    assert sorted(e["session_id"] for e in adoptions) == sorted([*orphans, left])
    assert {e["session_id"]: e["previous_holder"] for e in adoptions} == {**dict.fromkeys(orphans, "dead-brain"), left: None}
    assert metrics.adopted.labels("orphan")._value.get() == 6
    assert metrics.adopted.labels("wake")._value.get() == 0
    assert set(runs.values()) == {1}


async def test_a_session_whose_adopted_drive_fails_is_tried_again_later_each_time_twice_as_late(store):
    sid = await orphan(store, holder=None)
    tries: list[float] = []

    async def fails(session_id, events):  # as a drive that ends on a store outage: the session left running
        tries.append(asyncio.get_running_loop().time())
        await store.release_lease(session_id, "brain-b")
        return RuntimeError("the store went away")

    adopter = Adopter(store, "brain-b", fails, interval=0.1, most=1)
    assert await adopter.scan() == [sid]
    await poll(lambda: _true(not adopter.adopted), "the failed drive to end")
    assert await adopter.scan() == [], "tried again at once"
    await poll(adopter.scan, "the second try", timeout=5)
    await poll(lambda: _true(not adopter.adopted), "the failed drive to end")
    assert await adopter.scan() == []
    await poll(adopter.scan, "the third try", timeout=5)
    await poll(lambda: _true(not adopter.adopted), "the failed drive to end")
    assert len(tries) == 3 and tries[2] - tries[1] >= 0.19 and tries[1] - tries[0] >= 0.09


async def _true(value: bool) -> bool:
    return value


async def test_an_orphan_that_had_asked_for_approval_is_adopted_into_waiting_and_its_call_does_not_run(store, acting):
    address, runs, _, _ = acting
    # Its brain died after logging the request and before the session went waiting.
    sid = await store.create_session("Write a file.", {})
    log = SessionLog(sid).start("Write a file.", model="scripted").model([("toolu_w", "act", {})]).approval("toolu_w", "act")
    await store.append_many(sid, 1, [(e.type, e.data) for e in log.events])
    brain = _servicer(store, address)
    try:
        assert await brain.adopter.scan() == [sid]
        await poll(lambda: _true(not brain.adopter.adopted), "the adopted drive to let the waiting session go")
        info = await store.get_session(sid)
        assert (info.status, info.lease_owner) == ("waiting", None)
        assert [e.type for e in await store.events(sid)][-1] == "session_waiting"
        assert await brain.adopter.scan() == [], "a session waiting for a person was adopted"
    finally:
        await brain.close()
        await brain.hands.close()
    assert not runs, "a call waiting for approval ran"


async def test_an_orphan_a_wake_takes_up_here_while_it_is_being_claimed_is_left_to_that_wake(store):
    sid = await orphan(store, holder=None)
    looks: list[str] = []

    def driving(session_id: str) -> bool:  # not yet when listed; by the time the claim is taken, a Wake drives it
        looks.append(session_id)
        return len(looks) > 1

    async def wake(session_id, events):
        raise AssertionError("the session was driven twice in one process")

    adopter = Adopter(store, "brain-b", wake, interval=1.0, most=1, driving=driving)
    assert await adopter.scan() == []
    # The lease is the process's, and the Wake's drive needs it: the adopter must not have let it go.
    assert (await store.get_session(sid)).lease_owner == "brain-b"
