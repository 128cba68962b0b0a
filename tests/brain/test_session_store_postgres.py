"""What only the PostgreSQL session store has: connection errors, schema versions, several pools on one database."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from brain.sessions import SeqConflict, open_store
from brain.sessions.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresSessionStore
from tests.pg_schema import private_schema


@pytest.fixture
async def pg_url(database_url):
    async with private_schema(database_url) as url:
        yield url


async def test_an_unreachable_server_is_one_clear_error_without_the_password():
    with pytest.raises(ValueError) as caught:
        await open_store("postgresql://brain:s3cret@127.0.0.1:1/sessions")
    message = str(caught.value)
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/sessions" in message
    assert "is it running?" in message and "check the sessions URL" in message
    assert "s3cret" not in message


async def test_a_malformed_url_is_reported_as_such():
    with pytest.raises(ValueError, match="not valid.*check the sessions URL"):
        await open_store("postgresql://postgres@127.0.0.1:notaport/test")


async def test_a_database_that_does_not_exist_is_named(database_url):
    from urllib.parse import urlparse

    missing = urlparse(database_url)._replace(path="/no_such_database_for_brainhands").geturl()
    with pytest.raises(ValueError, match="refused the connection.*no_such_database_for_brainhands"):
        await open_store(missing)


async def test_the_schema_is_created_once_and_reopening_keeps_the_data(pg_url):
    first = await open_store(pg_url)
    sid = await first.create_session("t", {})
    await first.append(sid, 1, "session_started", {"task": "t"})
    await first.close()
    # Several brains starting at once must not trip over each other creating the tables.
    stores = await asyncio.gather(*(open_store(pg_url) for _ in range(4)))
    try:
        assert all(isinstance(s, PostgresSessionStore) for s in stores)
        assert [e.data for e in await stores[0].events(sid)] == [{"task": "t"}]
        conn = await asyncpg.connect(pg_url)
        try:
            versions = await conn.fetch("SELECT version FROM brain_schema_version ORDER BY version")
            assert [tuple(v) for v in versions] == [(v,) for v, _ in MIGRATIONS]
        finally:
            await conn.close()
    finally:
        for s in stores:
            await s.close()


async def test_sessions_written_before_tenants_become_the_default_tenants(pg_url):
    conn = await asyncpg.connect(pg_url)
    try:  # the tables as the first release made them, with a session in them
        await conn.execute("CREATE TABLE brain_schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute(MIGRATIONS[0][1])
        await conn.execute("INSERT INTO brain_schema_version (version) VALUES (1)")
        await conn.execute("INSERT INTO brain_sessions (id, task, config, status, created_at, updated_at)"
                           " VALUES ('old', 'an old task', '{}', 'finished', now(), now())")
    finally:
        await conn.close()
    store = await open_store(pg_url)
    try:
        assert (await store.get_session("old")).tenant == "local"
        new = await store.create_session("a's task", {}, tenant="a")
        assert [s.id for s in await store.list_sessions(tenant="a")] == [new]
        assert [s.id for s in await store.list_sessions(tenant="local")] == ["old"]
        assert {s.id for s in await store.list_sessions()} == {"old", new}
    finally:
        await store.close()


async def test_tables_from_a_newer_brainhands_are_refused(pg_url):
    await (await open_store(pg_url)).close()
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("INSERT INTO brain_schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(ValueError, match="newer than this brainhands knows.*upgrade brainhands"):
        await open_store(pg_url)


# Key order, big integers, floats, unicode and nesting: a woken session must rebuild exactly the
# conversation it had, so both stores must give back exactly what was appended.
AWKWARD = {
    "zeta": 1,
    "alpha": [1.0, 0.1, 1e-300, 2**70, -0.0],
    "nested": {"b": True, "a": None, "": "empty key"},
    "text": "ünïcode \u2028 \x00 \"quoted\"",
}


async def test_event_data_round_trips_exactly_as_in_sqlite(pg_url, tmp_path):
    out = {}
    for name, url in (("postgres", pg_url), ("sqlite", str(tmp_path / "s.db"))):
        store = await open_store(url)
        sid = await store.create_session("t", {"z": 1, "a": 2.5})
        await store.append(sid, 1, "model_response", AWKWARD)
        [event] = await store.events(sid)
        out[name] = (json.dumps(event.data), list(event.data), (await store.get_session(sid)).config)
        await store.close()
    assert out["postgres"] == out["sqlite"] == (json.dumps(AWKWARD), list(AWKWARD), {"z": 1, "a": 2.5})


async def test_two_brains_on_separate_connections_cannot_both_append_the_same_seq(pg_url):
    a, b = await open_store(pg_url), await open_store(pg_url)
    try:
        sid = await a.create_session("t", {})
        for seq in range(1, 21):
            results = await asyncio.gather(
                a.append(sid, seq, "tool_call_finished", {"by": "a"}),
                b.append(sid, seq, "tool_call_finished", {"by": "b"}),
                return_exceptions=True,
            )
            assert sorted(type(r).__name__ for r in results) == ["Event", "SeqConflict"], results
        assert [e.seq for e in await a.events(sid)] == list(range(1, 21))
        with pytest.raises(SeqConflict):
            await b.append(sid, 20, "session_finished", {})
    finally:
        await a.close()
        await b.close()


async def test_the_lease_expiry_is_on_the_database_clock(pg_url):
    store = await open_store(pg_url)
    try:
        sid = await store.create_session("t", {})
        assert await store.acquire_lease(sid, "brain-a", ttl=30)
        info = await store.get_session(sid)
        conn = await asyncpg.connect(pg_url)
        try:
            db_now = await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())::float8")
        finally:
            await conn.close()
        assert 25 < info.lease_expires_at - db_now <= 30
    finally:
        await store.close()
