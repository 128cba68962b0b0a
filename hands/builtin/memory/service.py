"""The memory hands: memory_put, memory_get, memory_search over a MemoryStore, scoped to the caller's tenant."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

import structlog

from hands import Context, Hand, HandError, hand
from hands import metadata as md
from hands.builtin.memory.store import MemoryStore, default_memory_path, open_memory_store
from hands.config import ConfigModel, whole

log = structlog.get_logger("hands.memory")

_NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # not a character: no store can keep it as UTF-8 text
MAX_KEY_CHARS = 200
SEARCH_EXCERPT_CHARS = 2000

NamespaceArg = Annotated[
    str,
    "Leave empty for this session's memory (shared by the workers of one session). Name a namespace "
    "(letters, digits, . _ -) to share across sessions, e.g. a project name.",
]


class MemoryConfig(ConfigModel):
    """Where the memory lives and how big a value may be, read once at start-up."""

    config_name = "memory config"
    env_vars = {"store": "BRAINHANDS_MEMORY", "max_value_bytes": "BRAINHANDS_MEMORY_MAX_VALUE_BYTES"}

    store: str = ""  # a SQLite path or postgresql:// URL; "" -> the default SQLite file
    max_value_bytes: whole(1) = 64 * 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> MemoryConfig:
        """The config from BRAINHANDS_MEMORY and BRAINHANDS_MEMORY_MAX_VALUE_BYTES, the default file named."""
        config = super().from_env(environ, **overrides)
        return config if config.store else config.replace(store=default_memory_path())


def scope(ctx: Context, namespace: str) -> tuple[str, str, str]:
    """(tenant, stored namespace, words for the model) for a call, or HandError saying what is missing.

    The tenant comes only from x-brainhands-tenant, which the gateway sets from the key it authenticated
    (and drops when a caller sends it). A call that did not come through a gateway has none and is refused:
    this hand must be reachable only through the gateway (NetworkPolicy, or mTLS between gateway and hands).
    """
    tenant = ctx.metadata.get(md.TENANT, "")
    if not tenant:
        raise HandError("memory is only served through the gateway (no authenticated tenant came with this call)")
    if namespace:
        if not _NAMESPACE.match(namespace):
            raise HandError(f"namespace {namespace[:100]!r} must be letters, digits, '.', '_' or '-' (at most 100)")
        return tenant, f"ns:{namespace}", f"namespace {namespace!r}"
    if not ctx.session_id:
        raise HandError("this call belongs to no session, so there is no session memory: name a namespace")
    return tenant, f"session:{ctx.session_id}", "this session's memory"


def _check_key(key: str) -> None:
    if not key.strip():
        raise HandError("key is empty: name the entry, e.g. 'findings/auth-module'")
    if len(key) > MAX_KEY_CHARS or _CONTROL.search(key) or _LONE_SURROGATE.search(key):
        raise HandError(f"key must be at most {MAX_KEY_CHARS} valid characters with no control characters")


class _Lazy:
    """The store, opened on first use inside the serving loop (asyncpg pools belong to one loop)."""

    def __init__(self, config: MemoryConfig, store: MemoryStore | None):
        self.config = config
        self.store = store
        self._lock = asyncio.Lock()

    async def get(self) -> MemoryStore:
        if self.store is None:
            async with self._lock:
                if self.store is None:
                    try:
                        self.store = await open_memory_store(self.config.store)
                    except (ValueError, OSError) as exc:
                        raise HandError(f"the memory store is unavailable: {exc}") from None
        return self.store


def make_memory_hands(config: MemoryConfig = MemoryConfig(), store: MemoryStore | None = None) -> list[Hand]:
    """memory_put, memory_get and memory_search over one store (given, or opened from config.store on first use)."""
    lazy = _Lazy(config, store)

    @hand(
        description=(
            "Save a finding so other workers can read it: stores value under key, replacing an earlier value. "
            "By default in this session's memory; pass namespace to share across sessions. Use short, "
            "descriptive keys the orchestrator named (e.g. 'auth/risks')."
        ),
        idempotent=True,  # the same put twice leaves the same entry
    )
    async def memory_put(
        key: Annotated[str, "The entry's name, e.g. 'auth/risks'."],
        value: Annotated[str, "What to remember: facts, references, results."],
        namespace: NamespaceArg = "",
        *,
        ctx: Context,
    ) -> str:
        tenant, ns, where = scope(ctx, namespace)
        _check_key(key)
        if _LONE_SURROGATE.search(value):
            raise HandError("value holds invalid Unicode (a lone surrogate such as \\udce9); send valid UTF-8 text")
        size = len(value.encode())
        if size > config.max_value_bytes:
            raise HandError(f"value is {size} bytes; the limit is {config.max_value_bytes}: save a summary instead")
        await (await lazy.get()).put(tenant, ns, key, value, ctx.session_id)
        return f"saved {key!r} ({len(value)} characters) in {where}"

    @hand(
        description=(
            "Read what a worker saved with memory_put: the value under key. Without a key, lists the keys "
            "there are. Same namespace rules as memory_put."
        ),
        idempotent=True,
    )
    async def memory_get(
        key: Annotated[str, "The entry to read; empty to list the keys."] = "",
        namespace: NamespaceArg = "",
        *,
        ctx: Context,
    ) -> str:
        tenant, ns, where = scope(ctx, namespace)
        store = await lazy.get()
        if not key:
            keys = await store.keys(tenant, ns)
            return json.dumps(keys) if keys else f"{where} is empty"
        entry = await store.get(tenant, ns, key)
        if entry is None:
            keys = await store.keys(tenant, ns, limit=50)
            there = f"keys there: {', '.join(keys)}" if keys else f"{where} is empty"
            raise HandError(f"nothing saved under {key[:MAX_KEY_CHARS]!r} in {where}; {there}")
        return entry.value

    @hand(
        description=(
            "Find saved entries by keywords (any of the words, in keys and values), best matches first, "
            "as a JSON list of {key, value}. Same namespace rules as memory_put."
        ),
        idempotent=True,
    )
    async def memory_search(
        query: Annotated[str, "Keywords, e.g. 'deadlock scheduler'."],
        namespace: NamespaceArg = "",
        limit: Annotated[int, "Most entries to return (1-50)."] = 5,
        *,
        ctx: Context,
    ) -> str:
        tenant, ns, where = scope(ctx, namespace)
        found = await (await lazy.get()).search(tenant, ns, query, limit=max(1, min(50, limit)))
        if not found:
            return f"no entry in {where} matches {query[:200]!r}"
        return json.dumps(
            [
                {"key": e.key, "value": e.value[:SEARCH_EXCERPT_CHARS] + ("…" if len(e.value) > SEARCH_EXCERPT_CHARS else "")}
                for e in found
            ],
            ensure_ascii=False,
        )

    return [memory_put, memory_get, memory_search]


#: The port `serve hand` listens on when --port is not given.
DEFAULT_PORT = 50074


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The memory hands configured from this process's environment (BRAINHANDS_MEMORY)."""
    config = MemoryConfig.from_env()
    kind = "postgresql" if config.store.startswith(("postgresql://", "postgres://")) else "sqlite"
    log.info("memory hands configured", store=kind if kind == "postgresql" else config.store)
    return make_memory_hands(config)
