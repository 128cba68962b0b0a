"""Quota stores: the QuotaStore protocol, its decisions, and how to open the memory or Redis store."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.tenants import QuotaRule

log = structlog.get_logger("gateway.quotas")

#: How long a concurrency slot outlives its holder when the holder stops renewing it (crash, SIGKILL).
DEFAULT_LEASE_SECONDS = 30.0

#: A concurrency slot frees when some call ends, which nobody can predict: suggest a short retry.
CONCURRENCY_RETRY_SECONDS = 0.1


class QuotaStoreUnavailable(Exception):
    """The quota store could not be reached or did not answer in time."""


@dataclass(frozen=True)
class Lease:
    """A concurrency slot held by one call; released when the call ends, expires if not renewed."""

    rule: QuotaRule
    id: str


@dataclass(frozen=True)
class Violation:
    """One rule that denied a call, and the time until it would admit it."""

    rule: QuotaRule
    retry_after: float  # seconds


@dataclass(frozen=True)
class Decision:
    """The outcome of admit(): all matching rules admitted the call (and leases were taken), or none did."""

    admitted: bool
    leases: tuple[Lease, ...] = ()
    violations: tuple[Violation, ...] = ()

    @property
    def retry_after(self) -> float:
        """Seconds until every denying rule would admit the call (the longest wait wins)."""
        return max((v.retry_after for v in self.violations), default=0.0)

    @property
    def rule(self) -> QuotaRule | None:
        """The rule that denied the call the longest."""
        if not self.violations:
            return None
        return max(self.violations, key=lambda v: v.retry_after).rule

    @property
    def retry_after_ms(self) -> int:
        return math.ceil(self.retry_after * 1000)


@dataclass(frozen=True)
class RuleUsage:
    """Where one rule stands now."""

    rule: QuotaRule
    used: float  # calls/tokens used this window; slots in flight; bucket tokens spent (burst - available)
    limit: int  # the rule's limit (burst for rate)
    resets_in: float  # seconds until the window ends (calls/tokens) or the bucket is full (rate); 0 otherwise


ADMITTED = Decision(admitted=True)


class QuotaStore(Protocol):
    """Where quota counters live. Every admission decision is atomic across all the rules of a call."""

    lease_seconds: float

    async def admit(self, rules: Sequence[QuotaRule], lease_id: str) -> Decision:
        """Admit a call if every rule admits it, consuming from all of them; else consume nothing.

        Concurrency rules take a slot named lease_id that the caller must renew() while the
        call runs and release() after it.
        """
        ...

    async def renew(self, leases: Sequence[Lease]) -> None:
        """Push the expiry of held slots lease_seconds into the future."""
        ...

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give held slots back."""
        ...

    async def charge_tokens(self, rules: Sequence[QuotaRule], tokens: int) -> None:
        """Charge LLM tokens spent by a finished call to its token rules (other kinds are ignored)."""
        ...

    async def usage(self, rules: Sequence[QuotaRule]) -> list[RuleUsage]:
        """Where each rule stands, without consuming anything."""
        ...

    async def close(self) -> None: ...


def open_store(
    spec: str | None, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, prefix: str = "brainhands:quota"
) -> QuotaStore:
    """``memory`` (or empty) -> MemoryQuotaStore; ``redis://...`` / ``rediss://...`` -> RedisQuotaStore."""
    if not spec or spec == "memory":
        from gateway.quotas.memory import MemoryQuotaStore

        return MemoryQuotaStore(lease_seconds=lease_seconds)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from gateway.quotas.redis import RedisQuotaStore

        return RedisQuotaStore.from_url(spec, lease_seconds=lease_seconds, prefix=prefix)
    raise ValueError(f"quota_store: expected 'memory' or a redis:// URL, got {spec!r}")


@contextlib.asynccontextmanager
async def holding(store: QuotaStore, leases: Sequence[Lease]) -> AsyncIterator[None]:
    """Keep leases alive while the body runs, then release them (even on cancellation)."""
    if not leases:
        yield
        return

    async def renew_forever() -> None:
        while True:
            await asyncio.sleep(store.lease_seconds / 3)
            try:
                await store.renew(leases)
            except QuotaStoreUnavailable as exc:
                # Keep trying: the slot survives until its lease ends, which gives the store time to return.
                log.warning("quota_lease_renew_failed", error=str(exc))

    renewer = asyncio.create_task(renew_forever())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        try:
            # Shielded so a cancelled call still gives its slot back instead of holding it for a whole lease.
            await asyncio.shield(store.release(leases))
        except QuotaStoreUnavailable as exc:
            log.warning("quota_lease_release_failed", error=str(exc), lease_seconds=store.lease_seconds)
