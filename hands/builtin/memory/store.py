"""The memory store: a small protocol over (tenant, namespace, key) -> value, and open_memory_store(url) to pick one."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: Words a search looks for: runs of letters and digits, so a query cannot inject query syntax, and
#: "fs_read" is the two words "fs" and "read", as the full-text tokenizers of both stores split it.
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
MAX_SEARCH_WORDS = 16


@dataclass(frozen=True)
class MemoryEntry:
    """One remembered value."""

    namespace: str
    key: str
    value: str
    session_id: str  # the session whose worker wrote it last ("" outside a session)
    updated_at: float  # seconds since the epoch


@runtime_checkable
class MemoryStore(Protocol):
    """Values by (tenant, namespace, key). A tenant sees only its own entries: every method takes the tenant.

    Contract (tests/memory/test_store_contract.py runs it against every implementation):
    - put overwrites the value under the same (tenant, namespace, key) and returns the stored entry;
    - get/keys/search never return an entry of another tenant or another namespace;
    - search(words) returns entries whose key or value contains any of the words (whole words, with the
      store's stemming), best matches first, at most `limit`.
    """

    async def put(self, tenant: str, namespace: str, key: str, value: str, session_id: str = "") -> MemoryEntry: ...

    async def get(self, tenant: str, namespace: str, key: str) -> MemoryEntry | None: ...

    async def keys(self, tenant: str, namespace: str, limit: int = 100) -> list[str]: ...

    async def search(self, tenant: str, namespace: str, query: str, limit: int = 10) -> list[MemoryEntry]: ...

    async def close(self) -> None: ...


def search_words(query: str) -> list[str]:
    """The distinct words of a query, lower-cased, in order (at most MAX_SEARCH_WORDS)."""
    seen: list[str] = []
    for word in _WORD.findall(query.lower()):
        if word not in seen:
            seen.append(word)
    return seen[:MAX_SEARCH_WORDS]


def default_memory_path() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "brainhands", "memory.db")


async def open_memory_store(url: str | None = None) -> MemoryStore:
    """A store from a URL: a file path (SQLite, embedded) or postgresql://... (shared by many replicas)."""
    url = url or default_memory_path()
    if url.startswith(("postgresql://", "postgres://")):
        from hands.builtin.memory.postgres import PostgresMemoryStore

        return await PostgresMemoryStore.open(url)
    if url.startswith("sqlite:///"):
        url = url[len("sqlite:///"):]
    elif "://" in url:
        raise ValueError(f"memory store URL {url!r}: use a file path, sqlite:///PATH or postgresql://...")
    from hands.builtin.memory.sqlite import SqliteMemoryStore

    return await SqliteMemoryStore.open(url)
