"""Quota stores: the QuotaStore protocol, its decisions, and how to open the memory or Redis store."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.tenants import QuotaRule

log = structlog.get_logger("gateway.quotas")

#: How long a concurrency slot outlives its holder when the holder stops renewing it (crash, SIGKILL).
DEFAULT_LEASE_SECONDS = 30.0

#: A concurrency slot frees when some call ends, which nobody can predict: suggest a short retry.
CONCURRENCY_RETRY_SECONDS = 0.1

#: A calls/tokens window slides in this many buckets. What is counted is everything in the buckets the last
#: window-length touches, so a bucket is counted a little longer than the window (never shorter): the limit holds
#: in every window-length interval, and a denied call waits at most one bucket (window / 60) longer than exact.
WINDOW_BUCKETS = 60


class QuotaStoreUnavailable(Exception):
    """The quota store could not be reached or did not answer in time."""


@dataclass(frozen=True)
class Lease:
    """What one call holds while it runs: a concurrency slot, or a token reservation (tokens > 0).

    Released when the call ends (a reservation is settled into the real usage then); expires if not renewed,
    so a gateway that dies mid-call cannot keep either forever.
    """

    rule: QuotaRule
    id: str
    tokens: int = 0  # a token rule's reservation


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

    async def admit(
        self, rules: Sequence[QuotaRule], lease_id: str, reserve: Mapping[str, int] | None = None
    ) -> Decision:
        """Admit a call if every rule admits it, consuming from all of them; else consume nothing.

        Concurrency rules take a slot named lease_id, and token rules named in reserve (rule id ->
        tokens) a reservation of that many tokens, which the caller must renew() while the call
        runs and release() (or settle with charge_tokens) after it. A token rule admits a reserving
        call only if charged + reserved + its reservation fit the limit; a call reserving nothing,
        while the charged tokens are under the limit. calls and tokens count over a sliding window.
        """
        ...

    async def renew(self, leases: Sequence[Lease]) -> None:
        """Push the expiry of held slots lease_seconds into the future."""
        ...

    async def release(self, leases: Sequence[Lease]) -> None:
        """Give held slots back."""
        ...

    async def charge_tokens(self, rules: Sequence[QuotaRule], tokens: int, leases: Sequence[Lease] = ()) -> None:
        """Charge LLM tokens spent by a finished call to its token rules (other kinds are ignored).

        The call's reservations among leases are dropped in the same step, so the tokens are never
        counted twice nor, for an instant, not at all.
        """
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


# -- sliding windows, shared by the stores (the Redis scripts do the same in Lua) ------------------------


def bucket_seconds(rule: QuotaRule) -> float:
    return rule.window / WINDOW_BUCKETS


def oldest_counted_bucket(rule: QuotaRule, now: float) -> int:
    """Buckets from this index up are counted: every bucket the interval (now - window, now] touches."""
    return math.floor((now - rule.window) / bucket_seconds(rule))


def wait_until_freed(rule: QuotaRule, buckets: Sequence[tuple[int, int]], excess: float, now: float) -> float | None:
    """Seconds until the oldest buckets (sorted, counted) hold at least excess and slide out; None if they never do."""
    freed = 0
    for index, amount in buckets:
        freed += amount
        if freed >= excess:
            return max(0.0, (index + 1) * bucket_seconds(rule) + rule.window - now)
    return None


def reservations(rules: Sequence[QuotaRule], budget: int | None) -> dict[str, int]:
    """What a call reserves on each token rule: the tighter of its budget and the rule's reserve, at most the limit.

    budget is the call's x-brainhands-budget-tokens (None when it did not send one). A call made by a hand
    on behalf of another call passes None (only the rule's reserve applies): the outer call's reservation
    already covers the budget it hands down, and reserving it again would refuse the nested call.
    """
    out = {}
    for rule in rules:
        if rule.kind != "tokens":
            continue
        bounds = [b for b in (budget, rule.reserve or None) if b is not None]
        if bounds and min(bounds) > 0:
            out[rule.id] = min(min(bounds), rule.limit)
    return out
