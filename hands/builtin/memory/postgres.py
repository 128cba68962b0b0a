"""PostgresMemoryStore: memory shared by every replica of the memory hand, on asyncpg, searched by full-text."""

from __future__ import annotations

import asyncpg

from hands.builtin.memory.store import MemoryEntry, search_words

# CREATE TABLE IF NOT EXISTS is not atomic in PostgreSQL: first opens racing each other run it under this lock.
_SCHEMA_LOCK = 0x6272_6D656D  # "brmem"
SCHEMA = """
CREATE TABLE IF NOT EXISTS brainhands_memory (
    tenant text NOT NULL,
    namespace text NOT NULL,
    key text NOT NULL,
    value text NOT NULL,
    session_id text NOT NULL DEFAULT '',
    updated_at double precision NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', key || ' ' || value)) STORED,
    PRIMARY KEY (tenant, namespace, key)
);
CREATE INDEX IF NOT EXISTS brainhands_memory_tsv ON brainhands_memory USING gin (tsv);
"""
_COLUMNS = "namespace, key, value, session_id, updated_at"


class PostgresMemoryStore:
    """MemoryStore on PostgreSQL: one table, a GIN full-text index (english stemming), ranked by ts_rank."""

    def __init__(self, pool: asyncpg.Pool):
        self._pool = pool

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresMemoryStore:
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
        except (OSError, asyncpg.PostgresError) as exc:
            raise ValueError(f"cannot connect to the memory database: {exc}") from None
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await conn.execute(SCHEMA)
        except BaseException:
            await pool.close()
            raise
        return cls(pool)

    async def put(self, tenant: str, namespace: str, key: str, value: str, session_id: str = "") -> MemoryEntry:
        row = await self._pool.fetchrow(
            "INSERT INTO brainhands_memory (tenant, namespace, key, value, session_id, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, extract(epoch FROM clock_timestamp()))"
            " ON CONFLICT (tenant, namespace, key) DO UPDATE SET"
            " value = excluded.value, session_id = excluded.session_id, updated_at = excluded.updated_at"
            f" RETURNING {_COLUMNS}",
            tenant, namespace, key, value, session_id,
        )  # fmt: skip
        return MemoryEntry(*row)

    async def get(self, tenant: str, namespace: str, key: str) -> MemoryEntry | None:
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM brainhands_memory WHERE tenant = $1 AND namespace = $2 AND key = $3",
            tenant, namespace, key,
        )  # fmt: skip
        return MemoryEntry(*row) if row else None

    async def keys(self, tenant: str, namespace: str, limit: int = 100) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT key FROM brainhands_memory WHERE tenant = $1 AND namespace = $2 ORDER BY key COLLATE \"C\" LIMIT $3",
            tenant, namespace, limit,
        )  # fmt: skip
        return [row["key"] for row in rows]

    async def search(self, tenant: str, namespace: str, query: str, limit: int = 10) -> list[MemoryEntry]:
        # websearch_to_tsquery never raises on user text; the words (letters and digits only) joined by
        # "or" make it match any of them. "or" itself is an english stop word, so dropping it loses nothing.
        words = [w for w in search_words(query) if w != "or"]
        if not words:
            return []
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM brainhands_memory, websearch_to_tsquery('english', $3) AS q"
            " WHERE tenant = $1 AND namespace = $2 AND tsv @@ q"
            " ORDER BY ts_rank(tsv, q) DESC, updated_at DESC LIMIT $4",
            tenant, namespace, " or ".join(words), limit,
        )  # fmt: skip
        return [MemoryEntry(*row) for row in rows]

    async def close(self) -> None:
        await self._pool.close()
