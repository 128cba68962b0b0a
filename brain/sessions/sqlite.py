"""SqliteSessionStore: the embedded session log, one SQLite file, stdlib sqlite3 on one worker thread."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from brain.sessions import (
    DEFAULT_TENANT,
    EVENT_STATUS,
    Event,
    SeqConflict,
    SessionInfo,
    SessionNotFound,
    SessionStoreError,
)

_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes: a damaged page, a file that is not SQLite

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    task TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    tenant TEXT NOT NULL DEFAULT 'local'
);
CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions (created_at);
CREATE TABLE IF NOT EXISTS events (
    session_id TEXT NOT NULL REFERENCES sessions (id),
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    ts REAL NOT NULL,
    PRIMARY KEY (session_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    session_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"""


class StoreCorrupt(SessionStoreError):
    """The SQLite file is damaged; the message names the file and what to do about it."""


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)
def _add_tenant_column(conn: sqlite3.Connection) -> None:
    """Migrate a store written before sessions had tenants: its sessions become the default tenant's."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(sessions)")}
    if "tenant" not in columns:
        conn.execute(f"ALTER TABLE sessions ADD COLUMN tenant TEXT NOT NULL DEFAULT '{DEFAULT_TENANT}'")
    conn.execute("CREATE INDEX IF NOT EXISTS sessions_by_tenant ON sessions (tenant, created_at)")


class SqliteSessionStore:
    """SessionStore on one SQLite file.

    WAL mode lets `sessions list` read while a brain writes. synchronous=FULL: every commit is
    fsynced, so an event the brain acted on (a hand call it started after logging it) survives a
    process crash and a machine crash alike; NORMAL would survive only the former. Sessions append
    tens of events a turn, so an fsync each is cheap next to a model call.

    All access goes through one connection on one worker thread: sqlite3 blocks, and the event loop
    must not. Several processes may share the file (busy timeout 10 s).
    """

    def __init__(self, path: str):
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-sessions")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, path: str) -> SqliteSessionStore:
        store = cls(path)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.executescript(SCHEMA)
        _add_tenant_column(conn)
        self._conn = conn

    async def _run(self, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            raise self._corrupt(str(exc)) from None

    def _corrupt(self, why: str) -> StoreCorrupt:
        path = os.path.abspath(self.path)
        return StoreCorrupt(
            f"the session store {path} is corrupt ({why}): check it with `sqlite3 {path} \"PRAGMA integrity_check\"`, "
            "then restore it from a backup or move it aside (the next run starts a new, empty store)"
        )

    async def check_integrity(self) -> None:
        """Raise StoreCorrupt if the file is damaged (PRAGMA quick_check: every page read, no index cross-check)."""

        def go():
            return [row[0] for row in self._conn.execute("PRAGMA quick_check").fetchall()]

        rows = await self._run(go)
        if rows != ["ok"]:
            problems = [line for row in rows for line in str(row).splitlines() if line.strip() and not line.startswith("***")]
            more = f", and {len(problems) - 1} more problems" if len(problems) > 1 else ""
            raise self._corrupt((problems[0][:200] if problems else "quick_check failed") + more)

    # --- sessions -------------------------------------------------------------------------------

    async def create_session(
        self, task: str, config: dict[str, Any], parent_id: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> str:
        session_id = uuid.uuid4().hex
        now = time.time()

        def go():
            self._conn.execute(
                "INSERT INTO sessions (id, parent_id, task, config, status, created_at, updated_at, tenant)"
                " VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (session_id, parent_id, task, json.dumps(config), now, now, tenant),
            )

        await self._run(go)
        return session_id

    async def append(self, session_id: str, seq: int, type: str, data: dict[str, Any]) -> Event:
        return (await self.append_many(session_id, seq, [(type, data)]))[0]

    async def append_many(self, session_id: str, seq: int, items: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        """Append events with seqs seq, seq + 1, ... in one transaction (one fsync): all of them or none."""
        rows = [(session_id, seq + i, type, json.dumps(data, ensure_ascii=False)) for i, (type, data) in enumerate(items)]
        now = time.time()
        statuses = [EVENT_STATUS[type] for type, _ in items if type in EVENT_STATUS]
        status = statuses[-1] if statuses else None
        last = seq + len(items) - 1

        def go():
            conn = self._conn
            # BEGIN IMMEDIATE takes the write lock first, so the seq check and the insert are one step
            # even when another process writes the same file.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT last_seq FROM sessions WHERE id = ?", (session_id,)).fetchone()
                if row is None:
                    raise SessionNotFound(f"no session {session_id!r}")
                if seq != row[0] + 1:
                    raise SeqConflict(f"session {session_id}: seq {seq} is not next (last is {row[0]})")
                try:
                    conn.executemany(
                        "INSERT INTO events (session_id, seq, type, data, ts) VALUES (?, ?, ?, ?, ?)",
                        [(*r, now) for r in rows],
                    )
                except sqlite3.IntegrityError:
                    raise SeqConflict(f"session {session_id}: seq {seq} is taken") from None
                conn.execute(
                    "UPDATE sessions SET last_seq = ?, updated_at = ?, status = COALESCE(?, status) WHERE id = ?",
                    (last, now, status, session_id),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(go)
        return [Event(session_id=session_id, seq=seq + i, type=type, data=data, ts=now) for i, (type, data) in enumerate(items)]

    async def events(self, session_id: str, after_seq: int = 0) -> list[Event]:
        def go():
            exists = self._conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if exists is None:
                raise SessionNotFound(f"no session {session_id!r}")
            return self._conn.execute(
                "SELECT seq, type, data, ts FROM events WHERE session_id = ? AND seq > ? ORDER BY seq",
                (session_id, after_seq),
            ).fetchall()

        rows = await self._run(go)
        return [Event(session_id, seq, type_, json.loads(data), ts) for seq, type_, data, ts in rows]

    _SELECT = (
        "SELECT s.id, s.task, s.status, s.created_at, s.updated_at, s.last_seq, s.parent_id, s.config,"
        " l.owner, l.expires_at, s.tenant FROM sessions s LEFT JOIN leases l ON l.session_id = s.id"
    )

    async def get_session(self, session_id: str) -> SessionInfo | None:
        row = await self._run(lambda: self._conn.execute(self._SELECT + " WHERE s.id = ?", (session_id,)).fetchone())
        return SessionInfo.from_row(row) if row else None

    async def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Session ids that start with prefix (a short id), at most limit of them."""
        rows = await self._run(lambda: self._conn.execute(
            "SELECT id FROM sessions WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id LIMIT ?2", (prefix, limit)).fetchall())
        return [r[0] for r in rows]

    async def list_sessions(
        self, limit: int = 50, status: str | None = None, tenant: str | None = None
    ) -> list[SessionInfo]:
        where, args = [], []
        if status is not None:
            where.append("s.status = ?")
            args.append(status)
        if tenant is not None:
            where.append("s.tenant = ?")
            args.append(tenant)
        sql = self._SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY s.created_at DESC LIMIT ?"

        def go():
            return self._conn.execute(sql, (*args, limit)).fetchall()

        return [SessionInfo.from_row(r) for r in await self._run(go)]

    async def orphaned_sessions(self, limit: int = 10) -> list[SessionInfo]:
        sql = (self._SELECT + " WHERE s.status = 'running' AND s.parent_id IS NULL AND s.last_seq > 0"
               " AND (l.expires_at IS NULL OR l.expires_at <= ?) ORDER BY s.updated_at LIMIT ?")
        rows = await self._run(lambda: self._conn.execute(sql, (time.time(), limit)).fetchall())
        return [SessionInfo.from_row(r) for r in rows]

    # --- leases ---------------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str, owner: str, ttl: float) -> bool:
        def go():
            now = time.time()
            # One statement: insert, or take over only if the lease expired or is already ours.
            cur = self._conn.execute(
                "INSERT INTO leases (session_id, owner, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
                " WHERE leases.expires_at <= ? OR leases.owner = excluded.owner",
                (session_id, owner, now + ttl, now),
            )
            return cur.rowcount == 1

        return await self._run(go)

    async def renew_lease(self, session_id: str, owner: str, ttl: float) -> bool:
        def go():
            cur = self._conn.execute(
                "UPDATE leases SET expires_at = ? WHERE session_id = ? AND owner = ?",
                (time.time() + ttl, session_id, owner),
            )
            return cur.rowcount == 1

        return await self._run(go)

    async def release_lease(self, session_id: str, owner: str) -> None:
        await self._run(
            lambda: self._conn.execute("DELETE FROM leases WHERE session_id = ? AND owner = ?", (session_id, owner))
        )

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=False)
