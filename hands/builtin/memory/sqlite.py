"""SqliteMemoryStore: the embedded memory, one SQLite file, keyword search by FTS5 when this SQLite has it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

from hands.builtin.memory.store import MemoryEntry, search_words

SCHEMA = """
CREATE TABLE IF NOT EXISTS memory (
    id INTEGER PRIMARY KEY,
    tenant TEXT NOT NULL,
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    UNIQUE (tenant, namespace, key)
);
"""

# An external-content FTS5 index over key and value, kept in step by triggers. porter: "deadlocks" finds
# "deadlock", as PostgreSQL's english configuration does.
FTS_SCHEMA = """
CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts USING fts5(
    key, value, content='memory', content_rowid='id', tokenize='porter unicode61'
);
CREATE TRIGGER IF NOT EXISTS memory_ai AFTER INSERT ON memory BEGIN
    INSERT INTO memory_fts (rowid, key, value) VALUES (new.id, new.key, new.value);
END;
CREATE TRIGGER IF NOT EXISTS memory_ad AFTER DELETE ON memory BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, key, value) VALUES ('delete', old.id, old.key, old.value);
END;
CREATE TRIGGER IF NOT EXISTS memory_au AFTER UPDATE ON memory BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, key, value) VALUES ('delete', old.id, old.key, old.value);
    INSERT INTO memory_fts (rowid, key, value) VALUES (new.id, new.key, new.value);
END;
"""

_COLUMNS = "namespace, key, value, session_id, updated_at"


def has_fts5() -> bool:
    """Whether this Python's SQLite was built with FTS5 (most are; some minimal builds are not)."""
    try:
        conn = sqlite3.connect(":memory:")
        try:
            conn.execute("CREATE VIRTUAL TABLE probe USING fts5(x)")
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return False
    return True


class SqliteMemoryStore:
    """MemoryStore on one SQLite file, through one connection on one worker thread (sqlite3 blocks).

    Search is FTS5 (whole words, porter stemming, ranked by bm25) when available, else a LIKE scan
    (substrings, ranked by how many words match) - fine for the few thousand entries of a team's sessions.
    """

    def __init__(self, path: str, *, fts: bool | None = None):
        self.path = path
        self.fts = has_fts5() if fts is None else fts
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-memory")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str, *, fts: bool | None = None) -> SqliteMemoryStore:
        store = cls(path, fts=fts)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")  # readers in other processes do not block a writer
        conn.executescript(SCHEMA)
        if self.fts:
            conn.executescript(FTS_SCHEMA)
        self._conn = conn

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def put(self, tenant: str, namespace: str, key: str, value: str, session_id: str = "") -> MemoryEntry:
        now = time.time()

        def write() -> None:
            self._conn.execute(
                "INSERT INTO memory (tenant, namespace, key, value, session_id, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (tenant, namespace, key) DO UPDATE SET"
                " value = excluded.value, session_id = excluded.session_id, updated_at = excluded.updated_at",
                (tenant, namespace, key, value, session_id, now),
            )

        await self._run(write)
        return MemoryEntry(namespace, key, value, session_id, now)

    async def get(self, tenant: str, namespace: str, key: str) -> MemoryEntry | None:
        def read():
            return self._conn.execute(
                f"SELECT {_COLUMNS} FROM memory WHERE tenant = ? AND namespace = ? AND key = ?",
                (tenant, namespace, key),
            ).fetchone()

        row = await self._run(read)
        return MemoryEntry(*row) if row else None

    async def keys(self, tenant: str, namespace: str, limit: int = 100) -> list[str]:
        def read():
            return self._conn.execute(
                "SELECT key FROM memory WHERE tenant = ? AND namespace = ? ORDER BY key LIMIT ?",
                (tenant, namespace, limit),
            ).fetchall()

        return [row[0] for row in await self._run(read)]

    async def search(self, tenant: str, namespace: str, query: str, limit: int = 10) -> list[MemoryEntry]:
        words = search_words(query)
        if not words:
            return []

        def read():
            if self.fts:
                # Each word quoted: FTS5 query syntax in a word (AND, NEAR, *, ^) stays a plain word.
                match = " OR ".join('"' + w.replace('"', '""') + '"' for w in words)
                return self._conn.execute(
                    f"SELECT {', '.join('m.' + c.strip() for c in _COLUMNS.split(','))} FROM memory_fts"
                    " JOIN memory m ON m.id = memory_fts.rowid"
                    " WHERE memory_fts MATCH ? AND m.tenant = ? AND m.namespace = ?"
                    " ORDER BY bm25(memory_fts), m.updated_at DESC LIMIT ?",
                    (match, tenant, namespace, limit),
                ).fetchall()
            likes = ["%" + w.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for w in words]
            hits = " + ".join("(lower(key || ' ' || value) LIKE ? ESCAPE '\\')" for _ in likes)
            return self._conn.execute(
                f"SELECT {_COLUMNS} FROM (SELECT *, {hits} AS hits FROM memory WHERE tenant = ? AND namespace = ?)"
                " WHERE hits > 0 ORDER BY hits DESC, updated_at DESC LIMIT ?",
                (*likes, tenant, namespace, limit),
            ).fetchall()

        return [MemoryEntry(*row) for row in await self._run(read)]

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._run(conn.close)
        self._executor.shutdown(wait=False)
