"""The in-process quota store: exact for one gateway replica, the embedded default."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

from gateway.quotas import (
    CONCURRENCY_RETRY_SECONDS,
    DEFAULT_LEASE_SECONDS,
    Decision,
    Lease,
    RuleUsage,
    Violation,
)
from gateway.tenants import QuotaRule


class MemoryQuotaStore:
    """Counters in dicts. admit() never awaits, so on one event loop each decision is atomic."""

    def __init__(self, *, lease_seconds: float = DEFAULT_LEASE_SECONDS, clock: Callable[[], float] = time.time):
        self.lease_seconds = lease_seconds
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}  # -> (tokens, at)
        self._slots: dict[tuple[str, str], dict[str, float]] = {}  # -> lease id -> expiry
        self._windows: dict[tuple[str, str], tuple[int, int]] = {}  # -> (window index, used)

    async def admit(self, rules: Sequence[QuotaRule], lease_id: str) -> Decision:
        now = self._clock()
        violations = [v for v in (self._check(rule, now) for rule in rules) if v is not None]
        if violations:
            return Decision(admitted=False, violations=tuple(violations))
        leases = []
        for rule in rules:
            key = (rule.tenant, rule.id)
            if rule.kind == "rate":
                tokens = self._bucket_tokens(rule, now)
                self._buckets[key] = (tokens - 1, now)
            elif rule.kind == "concurrency":
                self._slots.setdefault(key, {})[lease_id] = now + self.lease_seconds
                leases.append(Lease(rule, lease_id))
            elif rule.kind == "calls":
                index = _window_index(rule, now)
                self._windows[key] = (index, self._window_used(rule, now) + 1)
        return Decision(admitted=True, leases=tuple(leases))

    def _check(self, rule: QuotaRule, now: float) -> Violation | None:
        if rule.kind == "rate":
            tokens = self._bucket_tokens(rule, now)
            if tokens >= 1:
                return None
            return Violation(rule, (1 - tokens) * rule.window / rule.limit)
        if rule.kind == "concurrency":
            if len(self._live_slots(rule, now)) < rule.limit:
                return None
            return Violation(rule, CONCURRENCY_RETRY_SECONDS)
        # calls and tokens: a fixed window aligned to the epoch; the counter resets when it ends.
        if self._window_used(rule, now) < rule.limit:
            return None
        return Violation(rule, _window_end(rule, now) - now)

    def _bucket_tokens(self, rule: QuotaRule, now: float) -> float:
        tokens, at = self._buckets.get((rule.tenant, rule.id), (float(rule.burst), now))
        return min(float(rule.burst), tokens + max(0.0, now - at) * rule.limit / rule.window)

    def _live_slots(self, rule: QuotaRule, now: float) -> dict[str, float]:
        slots = self._slots.get((rule.tenant, rule.id), {})
        for lease_id in [lease_id for lease_id, expiry in slots.items() if expiry <= now]:
            del slots[lease_id]  # a holder that stopped renewing is gone
        return slots

    def _window_used(self, rule: QuotaRule, now: float) -> int:
        index, used = self._windows.get((rule.tenant, rule.id), (-1, 0))
        return used if index == _window_index(rule, now) else 0

    async def renew(self, leases: Sequence[Lease]) -> None:
        expiry = self._clock() + self.lease_seconds
        for lease in leases:
            slots = self._slots.get((lease.rule.tenant, lease.rule.id), {})
            if lease.id in slots:
                slots[lease.id] = expiry

    async def release(self, leases: Sequence[Lease]) -> None:
        for lease in leases:
            self._slots.get((lease.rule.tenant, lease.rule.id), {}).pop(lease.id, None)

    async def charge_tokens(self, rules: Sequence[QuotaRule], tokens: int) -> None:
        if tokens <= 0:
            return
        now = self._clock()
        for rule in rules:
            if rule.kind == "tokens":
                self._windows[(rule.tenant, rule.id)] = (
                    _window_index(rule, now),
                    self._window_used(rule, now) + tokens,
                )

    async def usage(self, rules: Sequence[QuotaRule]) -> list[RuleUsage]:
        now = self._clock()
        out = []
        for rule in rules:
            if rule.kind == "rate":
                tokens = self._bucket_tokens(rule, now)
                spent = rule.burst - tokens
                out.append(RuleUsage(rule, spent, rule.burst, spent * rule.window / rule.limit))
            elif rule.kind == "concurrency":
                out.append(RuleUsage(rule, len(self._live_slots(rule, now)), rule.limit, 0.0))
            else:
                out.append(RuleUsage(rule, self._window_used(rule, now), rule.limit, _window_end(rule, now) - now))
        return out

    async def close(self) -> None:
        pass


def _window_index(rule: QuotaRule, now: float) -> int:
    return math.floor(now / rule.window)


def _window_end(rule: QuotaRule, now: float) -> float:
    return (_window_index(rule, now) + 1) * rule.window
