"""The session log: a SessionStore protocol, its records and errors, and open_store(url) to pick one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Terminal event types and the session status each one sets.
TERMINAL_STATUS = {
    "session_finished": "finished",
    "session_failed": "failed",
    "session_cancelled": "cancelled",
}
#: The tenant of sessions started without one: a brain service with no tenants configured, and every session
#: written before sessions had tenants (the stores' migrations give existing rows this one).
DEFAULT_TENANT = "local"
#: Every event type that changes a session's status (a listing's status column), and the status it sets.
EVENT_STATUS = {
    **TERMINAL_STATUS,
    "session_waiting": "waiting",  # waiting for a person's approval: no brain holds it
    "session_resumed": "running",
}
STATUSES = ("running", "waiting", "finished", "failed", "cancelled")


class SessionStoreError(Exception):
    """Base class of the store's errors."""


class SessionNotFound(SessionStoreError):
    """No session has this id."""


class AmbiguousSessionId(SessionStoreError):
    """A short id that more than one session starts with."""

    def __init__(self, prefix: str, candidates: list[str]):
        self.prefix, self.candidates = prefix, candidates
        more = "" if len(candidates) < 10 else ", …"
        super().__init__(f"session id {prefix} is ambiguous: it starts {', '.join(candidates)}{more}; give more of it")


class SeqConflict(SessionStoreError):
    """The seq is taken or not the next one: another writer drives this session."""


class StoreUnavailable(SessionStoreError):
    """The store could not be reached (down, restarting, connection lost): the same call may succeed later.

    For a write, whether it was committed is unknown: the connection may have died after the commit.
    """


@dataclass(frozen=True)
class Event:
    """One entry of a session's append-only log."""

    session_id: str
    seq: int
    type: str
    data: dict[str, Any]
    ts: float  # wall-clock seconds since the epoch, when the store accepted the event

    def as_dict(self) -> dict[str, Any]:
        return {"session_id": self.session_id, "seq": self.seq, "type": self.type, "ts": self.ts, "data": self.data}


@dataclass(frozen=True)
class SessionInfo:
    """What a listing shows about a session."""

    id: str
    task: str
    status: str
    created_at: float
    updated_at: float
    last_seq: int = 0
    parent_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    tenant: str = DEFAULT_TENANT  # who started it: only that tenant sees it through BrainService

    @classmethod
    def from_row(cls, row) -> SessionInfo:
        """From a store's row: id, task, status, created_at, updated_at, last_seq, parent_id, config JSON, lease owner,
        expiry, tenant."""
        return cls(
            id=row[0], task=row[1], status=row[2], created_at=row[3], updated_at=row[4], last_seq=row[5],
            parent_id=row[6], config=json.loads(row[7]), lease_owner=row[8], lease_expires_at=row[9],
            tenant=row[10],
        )


@runtime_checkable
class SessionStore(Protocol):
    """A durable, append-only event log per session, plus a lease so one brain drives a session at a time.

    Contract (tests/brain/test_session_store_contract.py runs it against every implementation):
    - append(session_id, seq, ...) accepts only seq == last seq + 1 (the first is 1); anything else
      raises SeqConflict, so two writers of one session cannot both succeed. append_many is the same
      for a batch, written at once (one commit), so a fan-out costs one write, not one per event.
    - an append of a terminal event type (TERMINAL_STATUS) sets the session's status in the same
      transaction; an accepted event survives a crash of the writing process.
    - acquire_lease succeeds when the lease is free, expired, or already the caller's.
    """

    async def create_session(
        self, task: str, config: dict[str, Any], parent_id: str | None = None, tenant: str = DEFAULT_TENANT
    ) -> str: ...

    async def append(self, session_id: str, seq: int, type: str, data: dict[str, Any]) -> Event: ...

    async def append_many(self, session_id: str, seq: int, items: list[tuple[str, dict[str, Any]]]) -> list[Event]:
        """Append items (type, data) with seqs seq, seq + 1, ... in one transaction: all of them or none."""
        ...

    async def events(self, session_id: str, after_seq: int = 0) -> list[Event]: ...

    async def get_session(self, session_id: str) -> SessionInfo | None: ...

    async def list_sessions(
        self, limit: int = 50, status: str | None = None, tenant: str | None = None
    ) -> list[SessionInfo]: ...

    async def ids_with_prefix(self, prefix: str, limit: int = 10) -> list[str]:
        """Session ids that start with prefix, in id order, at most limit."""
        ...

    async def orphaned_sessions(self, limit: int = 10) -> list[SessionInfo]:
        """Running top-level sessions that have events and whose lease is free or expired: no brain drives them.

        Least recently updated first, at most limit. Only candidates: a brain takes one with acquire_lease, which is
        atomic, so of several brains adopting the same orphan one gets it. Nested sessions (parent_id set) are left
        out: the worker agent hand that ran one answers its caller's call, not an adopter.
        """
        ...

    async def acquire_lease(self, session_id: str, owner: str, ttl: float) -> bool: ...

    async def renew_lease(self, session_id: str, owner: str, ttl: float) -> bool: ...

    async def release_lease(self, session_id: str, owner: str) -> None: ...

    async def close(self) -> None: ...


async def resolve_session_id(store: SessionStore, session_id: str) -> str:
    """The full id of a session given its id or a unique prefix of it (a short id, as listings print).

    Raises SessionNotFound when nothing matches and AmbiguousSessionId naming the candidates when several do.
    """
    session_id = session_id.strip()
    if not session_id:
        raise SessionNotFound("the session id is empty")
    if await store.get_session(session_id) is not None:
        return session_id
    matches = await store.ids_with_prefix(session_id, limit=10)
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousSessionId(session_id, matches)
    raise SessionNotFound(f"no session {session_id}")


def default_sessions_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "brainhands", "sessions.db")


async def open_store(url: str | None = None) -> SessionStore:
    """A store from a URL: a file path or sqlite:///path -> SQLite; postgresql://... -> PostgreSQL.

    sqlite:///rel/path is relative, sqlite:////abs/path absolute (the SQLAlchemy convention).
    """
    url = url or default_sessions_path()
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from brain.sessions.postgres import PostgresSessionStore
        except ModuleNotFoundError as exc:
            if exc.name != "brain.sessions.postgres":
                raise
            raise ValueError("PostgreSQL session stores are not available in this build; use a SQLite path") from None
        return await PostgresSessionStore.open(url)
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise ValueError(f"sessions URL {url!r}: write sqlite:///relative/path or sqlite:////absolute/path")
        path = path[1:]
    elif "://" in url:
        raise ValueError(f"sessions URL {url!r}: use a file path, sqlite:///PATH or postgresql://...")
    else:
        path = url
    from brain.sessions.sqlite import SqliteSessionStore

    return await SqliteSessionStore.open(path)


__all__ = [
    "DEFAULT_TENANT",
    "STATUSES",
    "AmbiguousSessionId",
    "EVENT_STATUS",
    "TERMINAL_STATUS",
    "Event",
    "SeqConflict",
    "SessionInfo",
    "SessionNotFound",
    "SessionStore",
    "SessionStoreError",
    "StoreUnavailable",
    "default_sessions_path",
    "open_store",
    "resolve_session_id",
]


def redacted_url(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    from urllib.parse import urlsplit, urlunsplit

    if "://" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
