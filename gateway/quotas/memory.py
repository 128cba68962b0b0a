"""The in-process quota store: exact for one gateway replica, the embedded default."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from gateway.quotas import (
    CONCURRENCY_RETRY_SECONDS,
    DEFAULT_LEASE_SECONDS,
    Decision,
    Lease,
    RuleUsage,
    Violation,
    bucket_seconds,
    oldest_counted_bucket,
    wait_until_freed,
)
from gateway.tenants import QuotaRule


class MemoryQuotaStore:
    """Counters in dicts. admit() never awaits, so on one event loop each decision is atomic."""

    def __init__(self, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, clock: Callable[[], float] = time.time):
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)
        # Concurrency slots and token reservations: -> lease id -> (tokens, expiry); tokens is 1 for a slot.
        self._held: dict[tuple[str, str], dict[str, tuple[int, float]]] = {}
        self._windows: dict[tuple[str, str], dict[int, int]] = {}  # -> bucket index -> calls or tokens

    async def admit(
        self, rules: Sequence[QuotaRule], lease_id: str, reserve: Mapping[str, int] | None = None
    ) -> Decision:
        now = self._clock()
        reserve = reserve or {}
        violations = [v for v in (self._check(rule, now, reserve.get(rule.id, 0)) for rule in rules) if v is not None]
        if violations:
            return Decision(admitted=False, violations=tuple(violations))
        leases = []
        for rule in rules:
            key = (rule.tenant, rule.id)
            if rule.kind == "rate":
                tokens = self._bucket_tokens(rule, now)
                self._buckets[key] = (tokens - 1, now)
            elif rule.kind == "concurrency":
                self._held.setdefault(key, {})[lease_id] = (1, now + self.lease_seconds)
                leases.append(Lease(rule, lease_id))
            elif rule.kind == "calls":
                self._add(rule, now, 1)
            elif reserve.get(rule.id, 0) > 0:
                self._held.setdefault(key, {})[lease_id] = (reserve[rule.id], now + self.lease_seconds)
                leases.append(Lease(rule, lease_id, reserve[rule.id]))
        return Decision(admitted=True, leases=tuple(leases))

    def _check(self, rule: QuotaRule, now: float, reserving: int) -> Violation | None:
        if rule.kind == "rate":
            tokens = self._bucket_tokens(rule, now)
            if tokens >= 1:
                return None
            return Violation(rule, (1 - tokens) * rule.window / rule.limit)
        if rule.kind == "concurrency":
            if len(self._live(rule, now)) < rule.limit:
                return None
            return Violation(rule, CONCURRENCY_RETRY_SECONDS)
        buckets = self._counted(rule, now)
        used = sum(amount for _, amount in buckets)
        if rule.kind == "tokens" and reserving > 0:
            excess = used + sum(tokens for tokens, _ in self._live(rule, now).values()) + reserving - rule.limit
        else:
            excess = used + 1 - rule.limit
        if excess <= 0:
            return None
        wait = wait_until_freed(rule, buckets, excess, now)
        # Not enough slides out on its own: calls in flight must settle their reservations first.
        return Violation(rule, CONCURRENCY_RETRY_SECONDS if wait is None else max(wait, CONCURRENCY_RETRY_SECONDS))

    def _bucket_tokens(self, rule: QuotaRule, now: float) -> float:
        tokens, at = self._buckets.get((rule.tenant, rule.id), (float(rule.burst), now))
        return min(float(rule.burst), tokens + max(0.0, now - at) * rule.limit / rule.window)

    def _live(self, rule: QuotaRule, now: float) -> dict[str, tuple[int, float]]:
        held = self._held.get((rule.tenant, rule.id), {})
        for lease_id in [lease_id for lease_id, (_, expiry) in held.items() if expiry <= now]:
            del held[lease_id]  # a holder that stopped renewing is gone
        return held

    def _counted(self, rule: QuotaRule, now: float) -> list[tuple[int, int]]:
        """The window's buckets still counted, oldest first; older ones are dropped."""
        window = self._windows.get((rule.tenant, rule.id), {})
        oldest = oldest_counted_bucket(rule, now)
        for index in [index for index in window if index < oldest]:
            del window[index]
        return sorted(window.items())

    def _add(self, rule: QuotaRule, now: float, amount: int) -> None:
        window = self._windows.setdefault((rule.tenant, rule.id), {})
        index = int(now // bucket_seconds(rule))
        window[index] = window.get(index, 0) + amount

    async def renew(self, leases: Sequence[Lease]) -> None:
        expiry = self._clock() + self.lease_seconds
        for lease in leases:
            held = self._held.get((lease.rule.tenant, lease.rule.id), {})
            if lease.id in held:
                held[lease.id] = (held[lease.id][0], expiry)

    async def release(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            self._held.get((lease.rule.tenant, lease.rule.id), {}).pop(lease.id, None)

    async def charge_tokens(self, rules: Sequence[QuotaRule], tokens: int, leases: Sequence[Lease] = ()) -> None:
        await self.release([lease for lease in leases if lease.tokens > 0])
        if tokens <= 0:
            return
        now = self._clock()
        for rule in rules:
            if rule.kind == "tokens":
                self._add(rule, now, tokens)

    async def usage(self, rules: Sequence[QuotaRule]) -> list[RuleUsage]:
        now = self._clock()
        out = []
        for rule in rules:
            if rule.kind == "rate":
                tokens = self._bucket_tokens(rule, now)
                spent = rule.burst - tokens
                out.append(RuleUsage(rule, spent, rule.burst, spent * rule.window / rule.limit))
            elif rule.kind == "concurrency":
                out.append(RuleUsage(rule, len(self._live(rule, now)), rule.limit, 0.0))
            else:
                buckets = self._counted(rule, now)
                used = sum(amount for _, amount in buckets)
                resets = (buckets[-1][0] + 1) * bucket_seconds(rule) + rule.window - now if buckets else 0.0
                out.append(RuleUsage(rule, used, rule.limit, max(0.0, resets)))
        return out

    async def close(self) -> None:
        pass
