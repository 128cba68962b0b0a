"""PostgresSessionStore: the session log in PostgreSQL (asyncpg), shared by brains on many machines."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
import zlib
from typing import Any
from urllib.parse import urlparse

import asyncpg

from brain.sessions import (
    DEFAULT_TENANT,
    EVENT_STATUS,
    Event,
    SeqConflict,
    SessionInfo,
    SessionNotFound,
    StoreUnavailable,
)

#: Forward migrations, applied in order on open; the database records the last one it ran.
#: Add a new (version, sql) at the end; never edit one that has shipped.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS brain_sessions (
            id text PRIMARY KEY,
            parent_id text,
            task text NOT NULL,
            config text NOT NULL,
            status text NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            last_seq bigint NOT NULL DEFAULT 0,
            lease_owner text,
            lease_expires_at timestamptz
        );
        CREATE INDEX IF NOT EXISTS brain_sessions_by_created ON brain_sessions (created_at);
        CREATE INDEX IF NOT EXISTS brain_sessions_by_status ON brain_sessions (status, created_at);
        CREATE TABLE IF NOT EXISTS brain_events (
            session_id text NOT NULL REFERENCES brain_sessions (id),
            seq bigint NOT NULL,
            type text NOT NULL,
            data text NOT NULL,
            ts timestamptz NOT NULL,
            PRIMARY KEY (session_id, seq)
        );
        """,
    ),
    (
        2,
        # Sessions belong to the tenant that started them; those written before are the default tenant's.
        """
        ALTER TABLE brain_sessions ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT 'local';
        CREATE INDEX IF NOT EXISTS brain_sessions_by_tenant ON brain_sessions (tenant, created_at);
        """,
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# Concurrent first opens would race on CREATE TABLE IF NOT EXISTS (it is not atomic in PostgreSQL):
# migrations run under this transaction-scoped advisory lock.
_MIGRATION_LOCK = zlib.crc32(b"brainhands.brain.sessions.migrations")

_EPOCH = "extract(epoch FROM {})::float8"
_SELECT = (
    "SELECT id, task, status, " + _EPOCH.format("created_at") + ", " + _EPOCH.format("updated_at") + ","
    " last_seq, parent_id, config, lease_owner, " + _EPOCH.format("lease_expires_at") + ", tenant FROM brain_sessions"
)


class PostgresSessionStore:
    """SessionStore on PostgreSQL.

    Tables live in the connection's current schema, so several deployments (or test runs) can
    share one database: add ?search_path=SCHEMA to the URL (asyncpg passes unknown query
    parameters on as server settings).

    Event data is kept as JSON text, not jsonb: jsonb reorders keys and normalises numbers, and a
    woken session must rebuild exactly the conversation it had. Cast with data::jsonb to query it.

    Every timestamp, and above all the lease expiry, comes from the database clock: brains on
    different machines then agree on when a lease has run out whatever their own clocks say.
    """

    def __init__(self, pool: asyncpg.Pool, url: str):
        self._pool = pool
        self.url = url

    @classmethod
    async def open(cls, url: str, *, min_size: int = 1, max_size: int = 10) -> PostgresSessionStore:
        """Connect, create or migrate the schema, and return the store; ValueError says what to fix."""
        where = _where(url)
        try:
            pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, timeout=10, command_timeout=60)
        except ValueError as exc:
            raise ValueError(f"sessions URL for PostgreSQL {where} is not valid ({exc}): check the sessions URL") from None
        except (OSError, TimeoutError) as exc:
            raise ValueError(
                f"cannot connect to PostgreSQL at {where} ({_reason(exc)}): is it running? check the sessions URL"
            ) from None
        except asyncpg.PostgresError as exc:
            # A wrong database, role or password: the server answered, the URL is wrong.
            raise ValueError(f"PostgreSQL at {where} refused the connection ({exc}): check the sessions URL") from None
        store = cls(pool, url)
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            schema = await conn.fetchval("SELECT current_schema()")
            if schema is None:
                raise ValueError(
                    "PostgreSQL has no schema to create the session tables in: the URL's search_path names none that"
                    " exists; create it or fix the sessions URL"
                )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS brain_schema_version"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval("SELECT coalesce(max(version), 0) FROM brain_schema_version")
            if current > SCHEMA_VERSION:
                raise ValueError(
                    f"the session tables in schema {schema!r} are at version {current}, newer than this brainhands"
                    f" knows ({SCHEMA_VERSION}): upgrade brainhands"
                )
            for version, sql in MIGRATIONS:
                if version > current:
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO brain_schema_version (version) VALUES ($1)", version)

    # --- sessions -------------------------------------------------------------------------------

    async def create_session(
        self, task: str, config: dict[str, Any], parent_id: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> str:
        session_id = uuid.uuid4().hex
        async with _reachable():
            await self._pool.execute(
                "INSERT INTO brain_sessions (id, parent_id, task, config, status, created_at, updated_at, tenant)"
                " VALUES ($1, $2, $3, $4, 'running', clock_timestamp(), clock_timestamp(), $5)",
                session_id, parent_id, task, json.dumps(config), tenant,
            )
        return session_id

    async def append(self, session_id: str, seq: int, type: str, data: dict[str, Any]) -> Event:
        return (await self.append_many(session_id, seq, [(type, data)]))[0]

    async def append_many(self, session_id: str, seq: int, items: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        """Append events with seqs seq, seq + 1, ... in one transaction (one commit): all of them or none."""
        seqs = list(range(seq, seq + len(items)))
        types = [type for type, _ in items]
        payloads = [json.dumps(data, ensure_ascii=False) for _, data in items]
        statuses = [EVENT_STATUS[type] for type in types if type in EVENT_STATUS]
        status = statuses[-1] if statuses else None
        async with _reachable(), self._pool.acquire() as conn, conn.transaction():
            # The row lock makes the seq check and the insert one step: a second writer waits here,
            # then sees the new last_seq and is refused. The (session_id, seq) key backs it up.
            last = await conn.fetchval("SELECT last_seq FROM brain_sessions WHERE id = $1 FOR UPDATE", session_id)
            if last is None:
                raise SessionNotFound(f"no session {session_id!r}")
            if seq != last + 1:
                raise SeqConflict(f"session {session_id}: seq {seq} is not next (last is {last})")
            try:
                rows = await conn.fetch(
                    "INSERT INTO brain_events (session_id, seq, type, data, ts)"
                    " SELECT $1, u.seq, u.type, u.data, clock_timestamp()"
                    " FROM unnest($2::bigint[], $3::text[], $4::text[]) AS u(seq, type, data) RETURNING seq, ts",
                    session_id, seqs, types, payloads,
                )
            except asyncpg.UniqueViolationError:
                raise SeqConflict(f"session {session_id}: seq {seq} is taken") from None
            accepted_at = {r["seq"]: r["ts"] for r in rows}
            await conn.execute(
                "UPDATE brain_sessions SET last_seq = $2, updated_at = $3, status = coalesce($4, status) WHERE id = $1",
                session_id, seqs[-1], accepted_at[seqs[-1]], status,
            )
        # The commit returned, so the events are durable (synchronous_commit is on unless an operator
        # turned it off for this database).
        return [
            Event(session_id=session_id, seq=s, type=type, data=data, ts=accepted_at[s].timestamp())
            for s, (type, data) in zip(seqs, items, strict=True)
        ]

    async def events(self, session_id: str, after_seq: int = 0) -> list[Event]:
        # One statement: the session row tells "unknown session" apart from "no events yet".
        async with _reachable():
            rows = await self._pool.fetch(
                "SELECT e.seq, e.type, e.data, " + _EPOCH.format("e.ts") + " AS ts FROM brain_sessions s"
                " LEFT JOIN brain_events e ON e.session_id = s.id AND e.seq > $2"
                " WHERE s.id = $1 ORDER BY e.seq",
                session_id, after_seq,
            )
        if not rows:
            raise SessionNotFound(f"no session {session_id!r}")
        return [Event(session_id, r["seq"], r["type"], json.loads(r["data"]), r["ts"]) for r in rows if r["seq"] is not None]

    async def get_session(self, session_id: str) -> SessionInfo | None:
        row = await self._pool.fetchrow(_SELECT + " WHERE id = $1", session_id)
        return SessionInfo.from_row(row) if row else None

    async def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Session ids that start with prefix (a short id), at most limit of them."""
        rows = await self._pool.fetch(
            "SELECT id FROM brain_sessions WHERE starts_with(id, $1) ORDER BY id LIMIT $2", prefix, limit)
        return [r["id"] for r in rows]

    async def list_sessions(
        self, limit: int = 50, status: str | None = None, tenant: str | None = None
    ) -> list[SessionInfo]:
        where, args = [], [limit]
        for column, value in (("status", status), ("tenant", tenant)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY created_at DESC LIMIT $1"
        rows = await self._pool.fetch(sql, *args)
        return [SessionInfo.from_row(r) for r in rows]

    async def orphaned_sessions(self, limit: int = 10) -> list[SessionInfo]:
        # Expired by the database clock, the same one acquire_lease goes by.
        rows = await self._pool.fetch(
            _SELECT + " WHERE status = 'running' AND parent_id IS NULL AND last_seq > 0"
            " AND (lease_owner IS NULL OR lease_expires_at <= clock_timestamp()) ORDER BY updated_at LIMIT $1",
            limit,
        )
        return [SessionInfo.from_row(r) for r in rows]

    # --- leases ---------------------------------------------------------------------------------

    async def acquire_lease(self, session_id: str, owner: str, ttl: float) -> bool:
        # One conditional UPDATE: free, expired (by the database clock) or already ours -> ours.
        result = await self._pool.execute(
            "UPDATE brain_sessions SET lease_owner = $2, lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
            " WHERE id = $1 AND (lease_owner IS NULL OR lease_expires_at <= clock_timestamp() OR lease_owner = $2)",
            session_id, owner, float(ttl),
        )
        return result == "UPDATE 1"

    async def renew_lease(self, session_id: str, owner: str, ttl: float) -> bool:
        result = await self._pool.execute(
            "UPDATE brain_sessions SET lease_expires_at = clock_timestamp() + make_interval(secs => $3)"
            " WHERE id = $1 AND lease_owner = $2",
            session_id, owner, float(ttl),
        )
        return result == "UPDATE 1"

    async def release_lease(self, session_id: str, owner: str) -> None:
        await self._pool.execute(
            "UPDATE brain_sessions SET lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2",
            session_id, owner,
        )

    async def close(self) -> None:
        await self._pool.close()


#: What a server going away looks like: refused or reset connections, a connection lost mid-statement (08xxx),
#: the server shutting down or still recovering (57P01-57P03).
_GONE = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)


@contextlib.asynccontextmanager
async def _reachable():
    """Turn "the server went away" into StoreUnavailable, which the brain retries; other errors pass as they are."""
    try:
        yield
    except _GONE as exc:
        raise StoreUnavailable(f"PostgreSQL unreachable: {_reason(exc)}") from exc
    except asyncpg.InterfaceError as exc:
        # A pooled connection the server closed under us; the pool replaces it on the next acquire.
        if "closed" not in str(exc):
            raise
        raise StoreUnavailable(f"PostgreSQL connection lost: {exc}") from exc


def _where(url: str) -> str:
    """host:port/database from the URL, never its password."""
    try:
        parsed = urlparse(url)
        return f"{parsed.hostname or 'localhost'}:{parsed.port or 5432}{parsed.path or ''}"
    except ValueError:
        return "the given URL"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"unknown host: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
