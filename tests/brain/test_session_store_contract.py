"""The SessionStore contract, run against every store implementation (add a factory to STORES)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os

import pytest

from brain.sessions import SeqConflict, SessionNotFound, SessionStore, open_store
from tests.pg_schema import postgres_store


async def _sqlite(tmp_path, request):
    return await open_store(str(tmp_path / "sessions.db"))


STORES = [("sqlite", _sqlite), ("postgres", postgres_store)]


@pytest.fixture(params=[factory for _, factory in STORES], ids=[name for name, _ in STORES])
async def store(request, tmp_path):
    s = await request.param(tmp_path, request)
    yield s
    await s.close()


async def test_a_new_session_is_running_with_its_task_and_config(store: SessionStore):
    assert isinstance(store, SessionStore)
    sid = await store.create_session("count words", {"max_turns": 3})
    info = await store.get_session(sid)
    assert (info.id, info.task, info.status, info.config, info.last_seq) == (sid, "count words", "running", {"max_turns": 3}, 0)
    assert await store.get_session("nope") is None


async def test_events_come_back_in_order_with_data_and_timestamps(store):
    sid = await store.create_session("t", {})
    for seq, kind in enumerate(["session_started", "model_response", "tool_call_started"], start=1):
        await store.append(sid, seq, kind, {"n": seq, "text": "ünïcode"})
    events = await store.events(sid)
    assert [(e.seq, e.type, e.data["n"]) for e in events] == [(1, "session_started", 1), (2, "model_response", 2), (3, "tool_call_started", 3)]
    assert events[0].data["text"] == "ünïcode"
    assert all(e.ts > 1.6e9 for e in events) and events[0].ts <= events[-1].ts
    assert [e.seq for e in await store.events(sid, after_seq=2)] == [3]
    assert (await store.get_session(sid)).last_seq == 3


async def test_a_taken_or_skipped_seq_is_refused(store):
    sid = await store.create_session("t", {})
    await store.append(sid, 1, "session_started", {})
    with pytest.raises(SeqConflict):
        await store.append(sid, 1, "model_response", {"from": "a second writer"})
    with pytest.raises(SeqConflict):
        await store.append(sid, 3, "model_response", {})
    assert [e.data for e in await store.events(sid)] == [{}]


async def test_two_writers_racing_for_the_same_seq_one_wins(store):
    sid = await store.create_session("t", {})
    results = await asyncio.gather(
        *(store.append(sid, 1, "session_started", {"writer": i}) for i in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert all(isinstance(r, SeqConflict) for r in results if isinstance(r, Exception))


async def test_unknown_sessions_are_reported(store):
    with pytest.raises(SessionNotFound):
        await store.append("nope", 1, "session_started", {})
    with pytest.raises(SessionNotFound):
        await store.events("nope")


async def test_terminal_events_set_the_status_and_listing_filters_on_it(store):
    ids = [await store.create_session(f"task {i}", {}) for i in range(4)]
    for sid, kind in zip(ids[:3], ["session_finished", "session_failed", "session_cancelled"], strict=True):
        await store.append(sid, 1, "session_started", {})
        await store.append(sid, 2, kind, {})
    statuses = {s.id: s.status for s in await store.list_sessions()}
    assert statuses == {ids[0]: "finished", ids[1]: "failed", ids[2]: "cancelled", ids[3]: "running"}
    assert [s.id for s in await store.list_sessions(status="running")] == [ids[3]]
    newest_first = await store.list_sessions(limit=2)
    assert [s.id for s in newest_first] == [ids[3], ids[2]]


async def test_a_session_waiting_for_a_person_is_listed_as_waiting_until_a_brain_resumes_it(store):
    sid = await store.create_session("task", {})
    await store.append(sid, 1, "session_started", {})
    await store.append_many(sid, 2, [("approval_requested", {"call_id": "c1"}), ("session_waiting", {"calls": ["c1"]})])
    assert (await store.get_session(sid)).status == "waiting"
    assert [s.id for s in await store.list_sessions(status="waiting")] == [sid]
    await store.append(sid, 4, "approval_decided", {"call_id": "c1", "approved": True})
    assert (await store.get_session(sid)).status == "waiting"
    await store.append(sid, 5, "session_resumed", {"by": "b"})
    assert (await store.get_session(sid)).status == "running"


async def test_child_sessions_name_their_parent(store):
    parent = await store.create_session("parent", {})
    child = await store.create_session("child", {}, parent_id=parent)
    assert (await store.get_session(child)).parent_id == parent


async def test_one_lease_holder_at_a_time_until_it_expires_or_is_released(store):
    sid = await store.create_session("t", {})
    assert await store.acquire_lease(sid, "brain-a", ttl=60)
    assert not await store.acquire_lease(sid, "brain-b", ttl=60)
    assert await store.acquire_lease(sid, "brain-a", ttl=60), "the holder may re-acquire"
    assert await store.renew_lease(sid, "brain-a", ttl=60)
    assert not await store.renew_lease(sid, "brain-b", ttl=60)
    info = await store.get_session(sid)
    assert info.lease_owner == "brain-a" and info.lease_expires_at > info.created_at
    await store.release_lease(sid, "brain-b")  # not the holder: no effect
    assert not await store.acquire_lease(sid, "brain-b", ttl=60)
    await store.release_lease(sid, "brain-a")
    assert await store.acquire_lease(sid, "brain-b", ttl=60)


async def test_an_expired_lease_can_be_taken_and_its_old_holder_cannot_renew(store):
    sid = await store.create_session("t", {})
    assert await store.acquire_lease(sid, "brain-a", ttl=0.001)
    deadline = asyncio.get_running_loop().time() + 5
    while not await store.acquire_lease(sid, "brain-b", ttl=60):
        assert asyncio.get_running_loop().time() < deadline, "an expired lease was never free"
        await asyncio.sleep(0.01)
    assert not await store.renew_lease(sid, "brain-a", ttl=60)


async def test_orphaned_sessions_are_the_running_top_level_ones_no_live_lease_holds(store):
    async def session(status: str = "running", parent_id: str | None = None, events: int = 1) -> str:
        sid = await store.create_session("t", {}, parent_id=parent_id)
        for seq in range(1, events + 1):
            await store.append(sid, seq, "model_response", {})
        if status != "running":
            await store.append(sid, events + 1, {"finished": "session_finished", "waiting": "session_waiting"}[status], {})
        return sid

    older, released, expired = await session(), await session(), await session()
    held = await session()
    assert await store.acquire_lease(held, "brain-a", ttl=60)
    assert await store.acquire_lease(released, "brain-a", ttl=60)
    await store.release_lease(released, "brain-a")
    assert await store.acquire_lease(expired, "brain-a", ttl=0.001)
    await session("finished")
    await session("waiting")  # waits for a person: not an orphan
    await session(parent_id=older)  # a worker agent's session
    await session(events=0)  # just created: its brain is taking the lease
    await store.append(older, 2, "model_response", {})  # updated last: listed last
    deadline = asyncio.get_running_loop().time() + 5
    while len(orphans := await store.orphaned_sessions()) < 3:
        assert asyncio.get_running_loop().time() < deadline, f"the expired lease never counted: {orphans}"
        await asyncio.sleep(0.01)
    assert [o.id for o in orphans] == [released, expired, older]
    assert [o.id for o in await store.orphaned_sessions(limit=1)] == [released]
    assert await store.acquire_lease(released, "brain-b", ttl=60)
    assert [o.id for o in await store.orphaned_sessions()] == [expired, older]


def _append_in_child(path: str, sid: str, n: int) -> None:
    async def go():
        s = await open_store(path)
        for seq in range(1, n + 1):
            await s.append(sid, seq, "tool_call_finished", {"seq": seq})
        os._exit(0)  # no clean close: a process that dies right after its appends returned

    asyncio.run(go())


async def test_sqlite_events_survive_the_writer_dying_without_closing(tmp_path):
    path = str(tmp_path / "s.db")
    s = await open_store(path)
    sid = await s.create_session("t", {})
    child = multiprocessing.get_context("spawn").Process(target=_append_in_child, args=(path, sid, 20))
    child.start()
    await asyncio.get_running_loop().run_in_executor(None, child.join, 30)
    assert child.exitcode == 0
    assert [e.seq for e in await s.events(sid)] == list(range(1, 21))
    await s.close()


async def test_open_store_understands_paths_and_sqlite_urls(tmp_path):
    s = await open_store(f"sqlite:///{tmp_path}/x.db")
    assert s.path == f"{tmp_path}/x.db"
    await s.close()
    with pytest.raises(ValueError, match="sessions URL"):
        await open_store("mysql://x")


async def test_sessions_belong_to_a_tenant_and_list_by_it(store):
    a = await store.create_session("a's task", {}, tenant="a")
    b = await store.create_session("b's task", {}, tenant="b")
    local = await store.create_session("no tenant given", {})
    assert (await store.get_session(a)).tenant == "a"
    assert (await store.get_session(local)).tenant == "local"
    assert [s.id for s in await store.list_sessions(tenant="b")] == [b]
    assert [s.id for s in await store.list_sessions(tenant="a", status="running")] == [a]
    assert {s.id for s in await store.list_sessions()} >= {a, b, local}


async def test_a_sqlite_store_from_before_tenants_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)  # the sessions table as the first release made it, with a session in it
    conn.executescript(
        "CREATE TABLE sessions (id TEXT PRIMARY KEY, parent_id TEXT, task TEXT NOT NULL, config TEXT NOT NULL,"
        " status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO sessions VALUES ('old', NULL, 'an old task', '{}', 'finished', 1.0, 1.0, 0);"
    )
    conn.commit()
    conn.close()
    store = await open_store(str(path))
    try:
        assert (await store.get_session("old")).tenant == "local"
        new = await store.create_session("t", {}, tenant="a")
        assert [s.id for s in await store.list_sessions(tenant="a")] == [new]
        assert [s.id for s in await store.list_sessions(tenant="local")] == ["old"]
    finally:
        await store.close()


async def test_a_unique_prefix_names_a_session_and_an_ambiguous_one_names_the_candidates(store):
    from brain.sessions import AmbiguousSessionId, SessionNotFound, resolve_session_id

    ids = [await store.create_session(f"task {i}", {}) for i in range(40)]
    full = ids[0]
    assert await resolve_session_id(store, full) == full
    # the shortest prefix of the first id that no other id shares
    short = next(full[:n] for n in range(1, len(full)) if sum(i.startswith(full[:n]) for i in ids) == 1)
    assert await resolve_session_id(store, short) == full
    shared = next(i[:1] for i in ids if sum(j.startswith(i[:1]) for j in ids) > 1)
    with pytest.raises(AmbiguousSessionId) as caught:
        await resolve_session_id(store, shared)
    assert all(c.startswith(shared) for c in caught.value.candidates) and len(caught.value.candidates) > 1
    assert "ambiguous" in str(caught.value) and caught.value.candidates[0] in str(caught.value)
    with pytest.raises(SessionNotFound):
        await resolve_session_id(store, "zz-no-such")
