"""The MemoryStore contract, run against SQLite (FTS5 and the LIKE fallback) and PostgreSQL."""

from __future__ import annotations

import pytest

from hands.builtin.memory.sqlite import SqliteMemoryStore, has_fts5
from tests.pg_schema import create_schema, drop_schema_sync


@pytest.fixture(params=["sqlite-fts5", "sqlite-like", "postgres"])
async def store(request, tmp_path):
    if request.param == "postgres":
        from hands.builtin.memory.postgres import PostgresMemoryStore

        database_url = request.getfixturevalue("database_url")
        schema, url = await create_schema(database_url)
        request.addfinalizer(lambda: drop_schema_sync(database_url, schema))
        s = await PostgresMemoryStore.open(url)
    else:
        fts = request.param == "sqlite-fts5"
        if fts and not has_fts5():
            pytest.skip("this Python's SQLite has no FTS5")
        s = await SqliteMemoryStore.open(str(tmp_path / "memory.db"), fts=fts)
    yield s
    await s.close()


async def test_put_then_get_returns_the_value_and_who_wrote_it(store):
    saved = await store.put("acme", "session:s1", "auth/risks", "tokens never expire", session_id="s1")
    got = await store.get("acme", "session:s1", "auth/risks")
    assert got is not None
    assert (got.key, got.value, got.session_id) == ("auth/risks", "tokens never expire", "s1")
    assert got.updated_at == pytest.approx(saved.updated_at, abs=5)


async def test_put_replaces_the_value_under_the_same_key(store):
    await store.put("acme", "ns:proj", "k", "first")
    await store.put("acme", "ns:proj", "k", "second", session_id="s2")
    got = await store.get("acme", "ns:proj", "k")
    assert (got.value, got.session_id) == ("second", "s2")
    assert await store.keys("acme", "ns:proj") == ["k"]


async def test_tenants_never_see_each_other(store):
    await store.put("acme", "ns:shared", "plan", "acme's secret plan about deadlocks")
    await store.put("globex", "ns:shared", "plan", "globex plan")
    assert (await store.get("acme", "ns:shared", "plan")).value == "acme's secret plan about deadlocks"
    assert (await store.get("globex", "ns:shared", "plan")).value == "globex plan"
    assert await store.get("initech", "ns:shared", "plan") is None
    assert await store.keys("initech", "ns:shared") == []
    assert await store.search("globex", "ns:shared", "secret deadlocks") == []


async def test_namespaces_are_separate(store):
    await store.put("acme", "session:a", "finding", "in session a")
    await store.put("acme", "session:b", "other", "in session b")
    assert await store.get("acme", "session:b", "finding") is None
    assert await store.keys("acme", "session:a") == ["finding"]
    assert [e.key for e in await store.search("acme", "session:b", "session")] == ["other"]


async def test_search_finds_any_keyword_in_keys_and_values_best_first(store):
    await store.put("acme", "ns:p", "scheduler", "a deadlock between the queue lock and the db lock")
    await store.put("acme", "ns:p", "exporter", "CSV export drops the last row")
    await store.put("acme", "ns:p", "deadlock-notes", "the scheduler deadlock happens under load")
    await store.put("acme", "ns:p", "unrelated", "nothing to see here")

    found = [e.key for e in await store.search("acme", "ns:p", "deadlock scheduler")]
    assert set(found) == {"scheduler", "deadlock-notes"}
    assert [e.key for e in await store.search("acme", "ns:p", "export")] == ["exporter"]
    assert await store.search("acme", "ns:p", "kubernetes") == []
    assert len(await store.search("acme", "ns:p", "deadlock scheduler export", limit=2)) == 2


async def test_search_treats_query_syntax_as_plain_words(store):
    await store.put("acme", "ns:p", "q", 'says "AND" OR NEAR(x) * -not ^start %_ here')
    # Operators of FTS5, tsquery and LIKE in a query must neither fail nor widen the match.
    assert [e.key for e in await store.search("acme", "ns:p", 'NEAR( "here" -x* %_')] == ["q"]
    assert await store.search("acme", "ns:p", '*) ("') == []
    assert await store.search("acme", "ns:p", "% _") == []


async def test_search_sees_the_latest_value_only(store):
    await store.put("acme", "ns:p", "k", "about oranges")
    await store.put("acme", "ns:p", "k", "about apples")
    assert await store.search("acme", "ns:p", "oranges") == []
    assert [e.value for e in await store.search("acme", "ns:p", "apples")] == ["about apples"]


async def test_values_round_trip_exactly(store):
    value = "line 1\nline 2\t✓ — \"quoted\" 'single' \\ back"
    await store.put("acme", "ns:p", "exact", value)
    assert (await store.get("acme", "ns:p", "exact")).value == value
