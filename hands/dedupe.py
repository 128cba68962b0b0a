"""Exactly-once hands: a call's result remembered by its call id, so a repeat gets it instead of a second run.

A hand service runs each call of a non-idempotent hand once per (tenant, session, hand, call id): a repeat of a
finished call is answered with the stored result (kept ``dedupe_ttl``, default 1 h), and a repeat of a call
still running waits for it. The run itself no longer belongs to the RPC that started it: if its caller goes
away (a brain that crashed, a cancelled call), it runs on to its end so that the caller's repeat (a woken
session's re-issued call) gets its result. A run that ends without a result (the hand raised, timed out)
is forgotten, and a repeat runs it again. Idempotent hands opt out: they run every time, cancelled with
their call.

Where results live is a DedupeStore: ``memory`` (one process) or ``redis://...`` (every replica of a hand
service shares it; a replica that dies mid-run loses its claim after a lease, and a repeat runs the call).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Protocol

import grpc
import structlog

from hands import metadata as md
from hands.v1 import hands_pb2

log = structlog.get_logger("hands.dedupe")

#: How long a finished call's result is kept for a repeat (seconds).
DEFAULT_TTL = 3600.0
#: How long a claim on a running call outlives a replica that stops renewing it (crash, SIGKILL).
DEFAULT_LEASE = 30.0
#: How often a repeat of a call running on another replica looks for its result.
POLL_SECONDS = 0.05


class DedupeStoreUnavailable(Exception):
    """The dedupe store could not be reached: a non-idempotent call is refused rather than risk a second run."""


class Claim(enum.Enum):
    CLAIMED = "claimed"  # nobody ran this call yet: the caller runs it now
    RUNNING = "running"  # another replica is running it


class DedupeStore(Protocol):
    """Where finished calls' results and claims on running calls live."""

    async def claim(self, key: str, owner: str, lease: float) -> Claim | bytes:
        """Claim key for owner's run, or say it is RUNNING elsewhere, or return the stored result."""
        ...

    async def renew(self, key: str, owner: str, lease: float) -> None:
        """Keep owner's claim alive while the call runs."""
        ...

    async def finish(self, key: str, owner: str, result: bytes, ttl: float) -> None:
        """Store the result of owner's run for ttl seconds (its claim ends)."""
        ...

    async def forget(self, key: str, owner: str) -> None:
        """End owner's claim without a result: a repeat runs the call again."""
        ...

    async def close(self) -> None: ...


class MemoryDedupeStore:
    """Results in a dict: exactly-once for one hand process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        # key -> ("running", owner, expiry) or ("done", result, expiry)
        self._entries: dict[str, tuple[str, str | bytes, float]] = {}
        self._swept = clock()

    async def claim(self, key: str, owner: str, lease: float) -> Claim | bytes:
        now = self._clock()
        self._sweep(now)
        entry = self._entries.get(key)
        if entry is not None and entry[2] > now:
            return entry[1] if entry[0] == "done" else Claim.RUNNING  # type: ignore[return-value]
        self._entries[key] = ("running", owner, now + lease)
        return Claim.CLAIMED

    async def renew(self, key: str, owner: str, lease: float) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[:2] == ("running", owner):
            self._entries[key] = ("running", owner, self._clock() + lease)

    async def finish(self, key: str, owner: str, result: bytes, ttl: float) -> None:
        self._entries[key] = ("done", result, self._clock() + ttl)

    async def forget(self, key: str, owner: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[:2] == ("running", owner):
            del self._entries[key]

    def _sweep(self, now: float) -> None:
        if now - self._swept < 60:
            return
        self._swept = now
        for key in [key for key, (_, _, expiry) in self._entries.items() if expiry <= now]:
            del self._entries[key]

    async def close(self) -> None:
        pass


# A value is b"R" + owner while a replica runs the call, b"D" + the serialized response once it finished.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if v then return v end
redis.call('SET', KEYS[1], 'R' .. ARGV[1], 'PX', ARGV[2])
return false
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == 'R' .. ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_FORGET = """
if redis.call('GET', KEYS[1]) == 'R' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisDedupeStore:
    """Results in Redis, shared by every replica of a hand service."""

    def __init__(self, client, prefix: str = "brainhands:dedupe"):
        self._redis = client
        self._prefix = prefix
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._forget = client.register_script(_FORGET)

    @classmethod
    def from_url(cls, url: str, prefix: str = "brainhands:dedupe") -> RedisDedupeStore:
        import redis.asyncio as aioredis

        return cls(aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), prefix)

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def claim(self, key: str, owner: str, lease: float) -> Claim | bytes:
        value = await self._do(self._claim(keys=[self._key(key)], args=[owner, _ms(lease)]))
        if value is None:
            return Claim.CLAIMED
        return bytes(value[1:]) if value[:1] == b"D" else Claim.RUNNING

    async def renew(self, key: str, owner: str, lease: float) -> None:
        await self._do(self._renew(keys=[self._key(key)], args=[owner, _ms(lease)]))

    async def finish(self, key: str, owner: str, result: bytes, ttl: float) -> None:
        await self._do(self._redis.set(self._key(key), b"D" + result, px=_ms(ttl)))

    async def forget(self, key: str, owner: str) -> None:
        await self._do(self._forget(keys=[self._key(key)], args=[owner]))

    async def _do(self, pending):
        from redis.exceptions import RedisError

        try:
            return await pending
        except (RedisError, OSError) as exc:
            raise DedupeStoreUnavailable(f"dedupe store (redis) is unreachable: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(spec: str | None) -> DedupeStore:
    """``memory`` (or empty) -> MemoryDedupeStore; ``redis://...`` -> RedisDedupeStore."""
    if not spec or spec == "memory":
        return MemoryDedupeStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisDedupeStore.from_url(spec)
    raise ValueError(f"dedupe store: expected 'memory' or a redis:// URL, got {spec!r}")


def once(store: str, ttl: float) -> Once | None:
    """A hand service's Once, from its dedupe_store and dedupe_ttl (None when ttl is 0: every call runs)."""
    return Once(open_store(store), ttl=ttl) if ttl > 0 else None


Execute = Callable[[], Awaitable[hands_pb2.ExecuteResponse]]


class Once:
    """Runs each call once per key, whoever repeats it, and answers repeats with its result."""

    def __init__(self, store: DedupeStore, *, ttl: float = DEFAULT_TTL, lease: float = DEFAULT_LEASE):
        self.store = store
        self.ttl = ttl
        self.lease = lease
        self._owner = uuid.uuid4().hex  # this process, in claims other replicas see
        self._local: dict[str, asyncio.Task] = {}

    async def call(self, key: str, execute: Execute) -> hands_pb2.ExecuteResponse:
        """The call's response: stored, awaited from the run in progress, or from running execute() now."""
        task = self._local.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._once(key, execute))
            self._local[key] = task
            task.add_done_callback(lambda done: self._local.pop(key, None) if self._local.get(key) is done else None)
        # Shielded: the caller may go away (its RPC cancelled) and the run still ends and is stored.
        return await asyncio.shield(task)

    async def run(self, the_hand, request, context, run) -> hands_pb2.ExecuteResponse:
        """HandServicer's hook: run(the_hand, request, context) once per (tenant, session, hand, call id)."""
        meta = md.as_dict(context.invocation_metadata())
        call_id = request.call_id or meta.get(md.CALL_ID, "")
        if the_hand.idempotent or not call_id:
            return await run(the_hand, request, context)
        # The tenant the gateway vouches for is part of the key: one tenant cannot read another's result
        # by sending the same call id. So is the session: a model's call ids are unique within a session only.
        session_id = request.session_id or meta.get(md.SESSION_ID, "")
        key = f"{meta.get(md.TENANT, '')}/{session_id}/{the_hand.name}/{call_id}"
        try:
            try:
                return await self.call(key, lambda: run(the_hand, request, context))
            except grpc.aio.AbortError:
                if context.code() is not None:
                    raise  # this caller's own run ended with a status
                # The run this repeat waited for (another caller's) ended with a status and was forgotten:
                # run the call for this caller, as any repeat of a failed call would.
                return await self.call(key, lambda: run(the_hand, request, context))
        except DedupeStoreUnavailable as exc:
            log.error("dedupe store down; refusing a non-idempotent call", hand=the_hand.name, error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; the call was not run")
            raise

    async def _once(self, key: str, execute: Execute) -> hands_pb2.ExecuteResponse:
        while True:
            state = await self.store.claim(key, self._owner, self.lease)
            if isinstance(state, bytes):
                log.info("call answered from its stored result", dedupe_key=key)
                return hands_pb2.ExecuteResponse.FromString(state)
            if state is Claim.CLAIMED:
                break
            await asyncio.sleep(POLL_SECONDS)  # running on another replica: its result, or its lease ends
        renewer = asyncio.get_running_loop().create_task(self._renew_forever(key))
        try:
            response = await execute()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.store.forget(key, self._owner)
            raise
        finally:
            renewer.cancel()
        try:
            await self.store.finish(key, self._owner, response.SerializeToString(), self.ttl)
        except Exception as exc:  # the caller still gets its answer; a repeat would run the call again
            log.warning("dedupe store did not take a call's result", dedupe_key=key, error=str(exc))
        return response

    async def _renew_forever(self, key: str) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.store.renew(key, self._owner, self.lease)
            except Exception as exc:
                log.warning("dedupe claim not renewed", dedupe_key=key, error=str(exc))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
