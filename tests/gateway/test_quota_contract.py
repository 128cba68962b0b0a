"""The QuotaStore contract: the memory and the Redis store pass the same tests."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.quotas import CONCURRENCY_RETRY_SECONDS, holding
from gateway.quotas.memory import MemoryQuotaStore
from gateway.tenants import QuotaRule, hash_key, parse_tenants

LEASE = 0.6  # seconds: short, so expiry is observable in a test


def rules_of(*quotas: dict, tenant: str = "acme") -> tuple[QuotaRule, ...]:
    """Rules as the config builds them (with a tenant name unique to the test)."""
    parsed = parse_tenants([{"name": tenant, "api_keys": [hash_key(tenant)], "quotas": list(quotas)}])
    return parsed.tenants[0].quotas


@pytest.fixture(params=["memory", "redis"])
async def replicas(request):
    """Two handles on one quota store, as two gateway replicas would hold (one object for memory)."""
    if request.param == "memory":
        store = MemoryQuotaStore(lease_seconds=LEASE)
        yield store, store
        return
    from gateway.quotas.redis import RedisQuotaStore

    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}"
    stores = [RedisQuotaStore.from_url(url, lease_seconds=LEASE, prefix=prefix) for _ in range(2)]
    yield stores[0], stores[1]
    keys = [key async for key in stores[0]._redis.scan_iter(match=f"{prefix}:*")]
    if keys:
        await stores[0]._redis.delete(*keys)
    for store in stores:
        await store.close()


@pytest.fixture
def store(replicas):
    return replicas[0]


def tenant_name() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


async def admit(store, rules):
    return await store.admit(rules, uuid.uuid4().hex)


async def test_calls_window_admits_exactly_the_limit_and_says_when_the_oldest_call_slides_out(store):
    rules = rules_of({"hands": "*", "calls": "5/h"}, tenant=tenant_name())
    decisions = [await admit(store, rules) for _ in range(7)]
    assert [d.admitted for d in decisions] == [True] * 5 + [False] * 2
    denied = decisions[-1]
    assert denied.rule == rules[0]
    # The window slides: the first call leaves it an hour after it was made (plus at most one bucket, 1/60 of it).
    assert 3600 - 5 <= denied.retry_after <= 3600 + 60 + 1
    assert denied.retry_after_ms >= denied.retry_after * 1000


async def test_a_calls_window_slides_so_no_window_length_interval_admits_more_than_the_limit(store):
    window, limit = 2.0, 5
    rules = rules_of({"hands": "*", "calls": f"{limit}/2s"}, tenant=tenant_name())
    assert rules[0].window == window
    # Start just before a boundary of epoch-aligned windows: a fixed window would admit 5 more right after it.
    await asyncio.sleep((window - 0.4 - time.time() % window) % window)
    started = time.monotonic()
    assert [(await admit(store, rules)).admitted for _ in range(limit)] == [True] * limit
    denied = await admit(store, rules)
    while not denied.admitted:
        assert time.monotonic() - started < window * 5, "the window never slid on"
        retry = denied.retry_after
        await asyncio.sleep(min(retry, 0.05))
        denied = await admit(store, rules)
    # The sixth call got in only once the first five were a whole window behind it.
    assert time.monotonic() - started >= window


async def test_a_denied_call_consumes_nothing_from_the_rules_that_admitted_it(store):
    rules = rules_of({"hands": "*", "calls": "3/h", "concurrency": 1}, tenant=tenant_name())
    first = await admit(store, rules)
    assert first.admitted and len(first.leases) == 1
    second = await admit(store, rules)
    assert not second.admitted
    assert second.rule.kind == "concurrency"
    assert second.retry_after == pytest.approx(CONCURRENCY_RETRY_SECONDS)
    usage = {u.rule.kind: u.used for u in await store.usage(rules)}
    assert usage == {"calls": 1, "concurrency": 1}
    await store.release(first.leases)
    third = await admit(store, rules)
    assert third.admitted
    assert {u.rule.kind: u.used for u in await store.usage(rules)} == {"calls": 2, "concurrency": 1}


async def test_every_denying_rule_is_reported_and_the_longest_wait_wins(store):
    rules = rules_of({"hands": "*", "calls": "1/h", "concurrency": 1}, tenant=tenant_name())
    assert (await admit(store, rules)).admitted
    denied = await admit(store, rules)
    assert {v.rule.kind for v in denied.violations} == {"calls", "concurrency"}
    assert denied.rule.kind == "calls"
    assert denied.retry_after > CONCURRENCY_RETRY_SECONDS


async def test_concurrency_slots_are_shared_by_replicas_and_come_back_on_release(replicas):
    a, b = replicas
    rules = rules_of({"hands": "*", "concurrency": 2}, tenant=tenant_name())
    first, second = await admit(a, rules), await admit(b, rules)
    assert first.admitted and second.admitted
    assert not (await admit(a, rules)).admitted
    assert not (await admit(b, rules)).admitted
    await b.release(second.leases)
    assert (await admit(a, rules)).admitted


async def test_a_slot_whose_holder_stops_renewing_comes_back_after_the_lease(store):
    rules = rules_of({"hands": "*", "concurrency": 1}, tenant=tenant_name())
    held = await admit(store, rules)  # never renewed, never released: its holder "died"
    assert held.admitted
    started = time.monotonic()
    assert not (await admit(store, rules)).admitted
    while not (await admit(store, rules)).admitted:
        assert time.monotonic() - started < LEASE * 10, "the slot never came back"
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= LEASE * 0.5


async def test_a_slot_held_by_a_running_call_is_renewed_past_its_lease(store):
    rules = rules_of({"hands": "*", "concurrency": 1}, tenant=tenant_name())
    held = await admit(store, rules)
    async with holding(store, held.leases):
        await asyncio.sleep(LEASE * 2.5)  # outlive the lease several renewals over
        assert not (await admit(store, rules)).admitted
    assert (await admit(store, rules)).admitted  # released on the way out


async def test_rate_admits_one_burst_then_says_how_long_until_the_next_token(store):
    rules = rules_of({"hands": "*", "rate": "10/s", "burst": 4}, tenant=tenant_name())
    decisions = [await admit(store, rules) for _ in range(5)]
    assert [d.admitted for d in decisions] == [True] * 4 + [False]
    wait = decisions[-1].retry_after
    assert 0 < wait <= 0.1 + 1e-3  # one token refills in 1/10 s
    await asyncio.sleep(wait)
    assert (await admit(store, rules)).admitted  # the retry delay was true: admitted right then


async def test_tokens_are_charged_after_the_call_and_deny_until_the_window_ends(store):
    rules = rules_of({"hands": "llm_*", "tokens": "100/day"}, tenant=tenant_name())
    assert (await admit(store, rules)).admitted
    await store.charge_tokens(rules, 60)
    assert (await admit(store, rules)).admitted  # 60 < 100: still within budget
    await store.charge_tokens(rules, 60)
    denied = await admit(store, rules)
    assert not denied.admitted and denied.rule.kind == "tokens"
    assert 86400 - 5 <= denied.retry_after <= 86400 + 86400 / 60 + 1  # when the first 60 slide out
    [usage] = await store.usage(rules)
    assert (usage.used, usage.limit) == (120, 100)


async def test_concurrent_reserving_calls_never_charge_past_the_token_limit(replicas):
    a, b = replicas
    [rule] = rules = rules_of({"hands": "llm_*", "tokens": "1000/day"}, tenant=tenant_name())

    async def round_of_20(reserve: int, spends: int) -> int:
        """20 calls at once; each admitted one runs until all 20 were decided, then reports what it spent."""
        decided, everyone_decided = 0, asyncio.Event()

        async def call(i: int) -> bool:
            nonlocal decided
            store = a if i % 2 else b
            decision = await store.admit(rules, uuid.uuid4().hex, {rule.id: reserve})
            decided += 1
            if decided == 20:
                everyone_decided.set()
            if decision.admitted:
                async with holding(store, decision.leases):
                    await everyone_decided.wait()
                    await store.charge_tokens(rules, spends, decision.leases)
            return decision.admitted

        return sum(await asyncio.gather(*(call(i) for i in range(20))))

    assert await round_of_20(reserve=300, spends=200) == 3  # 3 x 300 reserved fit in 1000; a fourth would not
    [usage] = await a.usage(rules)
    assert usage.used == 600  # settled at what they spent, not at what they reserved
    assert await round_of_20(reserve=300, spends=300) == 1  # 600 charged + 300 reserved; another 300 would not fit
    [usage] = await a.usage(rules)
    assert usage.used == 900 <= usage.limit


async def test_a_reservation_whose_holder_stops_renewing_comes_back_after_the_lease(store):
    [rule] = rules = rules_of({"hands": "*", "tokens": "1000/day"}, tenant=tenant_name())
    held = await store.admit(rules, uuid.uuid4().hex, {rule.id: 1000})  # its gateway "died": never settled
    assert held.admitted and [lease.tokens for lease in held.leases] == [1000]
    started = time.monotonic()
    while not (await store.admit(rules, uuid.uuid4().hex, {rule.id: 1000})).admitted:
        assert time.monotonic() - started < LEASE * 10, "the dead call's reservation never came back"
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= LEASE * 0.5


async def test_a_reservation_held_by_a_running_call_is_renewed_and_a_failed_call_charges_nothing(store):
    [rule] = rules = rules_of({"hands": "*", "tokens": "1000/day"}, tenant=tenant_name())
    held = await store.admit(rules, uuid.uuid4().hex, {rule.id: 800})
    async with holding(store, held.leases):
        await asyncio.sleep(LEASE * 2.5)
        assert not (await store.admit(rules, uuid.uuid4().hex, {rule.id: 300})).admitted
    # The call ended without a result to charge: its reservation is simply given back.
    assert (await store.admit(rules, uuid.uuid4().hex, {rule.id: 1000})).admitted
    assert [u.used for u in await store.usage(rules)] == [0]


async def test_a_call_that_reserves_nothing_is_admitted_while_charged_tokens_are_under_the_limit(store):
    [rule] = rules = rules_of({"hands": "*", "tokens": "1000/day"}, tenant=tenant_name())
    assert (await store.admit(rules, uuid.uuid4().hex, {rule.id: 1000})).admitted
    assert not (await store.admit(rules, uuid.uuid4().hex, {rule.id: 1})).admitted
    assert (await admit(store, rules)).admitted  # unbudgeted: charged after, as before reservations


async def test_tenants_and_rules_do_not_share_counters(store):
    rules_a = rules_of({"hands": "*", "calls": "1/h"}, tenant=tenant_name())
    rules_b = rules_of({"hands": "*", "calls": "1/h"}, tenant=tenant_name())
    assert (await admit(store, rules_a)).admitted
    assert not (await admit(store, rules_a)).admitted
    assert (await admit(store, rules_b)).admitted


async def test_concurrent_admissions_across_replicas_never_exceed_the_limit(replicas):
    a, b = replicas
    rules = rules_of({"hands": "*", "calls": "50/h", "rate": "1000/h", "burst": 1000}, tenant=tenant_name())
    decisions = await asyncio.gather(*(admit(a if i % 2 else b, rules) for i in range(300)))
    assert sum(d.admitted for d in decisions) == 50
    usage = {u.rule.kind: u.used for u in await a.usage(rules)}
    assert usage["calls"] == 50
    assert usage["rate"] == pytest.approx(50, abs=1)  # refilled a little meanwhile; denied calls took nothing


async def test_usage_of_untouched_rules_is_zero(store):
    rules = rules_of(
        {"hands": "*", "rate": "5/s", "concurrency": 3, "calls": "9/m", "tokens": "7/h"}, tenant=tenant_name()
    )
    usage = await store.usage(rules)
    assert [(u.rule.kind, u.used, u.limit) for u in usage] == [
        ("rate", 0, 5),
        ("concurrency", 0, 3),
        ("calls", 0, 9),
        ("tokens", 0, 7),
    ]


@pytest.mark.parametrize("replicas", ["redis"], indirect=True)  # only a shared Redis outlives a gateway upgrade
async def test_counters_left_by_a_gateway_with_fixed_windows_do_not_break_admission(replicas):
    store = replicas[0]
    rules = rules_of({"hands": "*", "calls": "2/h", "tokens": "9/h"}, tenant=tenant_name())
    for rule in rules:  # what the fixed-window scripts wrote: the window index and its count
        await store._redis.hset(store.key(rule), mapping={"w": int(time.time() // 3600), "n": 1})
    assert [(await admit(store, rules)).admitted for _ in range(3)] == [True, True, False]


async def test_an_unreachable_redis_is_reported_as_the_quota_store_being_down():
    from gateway.quotas import QuotaStoreUnavailable
    from gateway.quotas.redis import RedisQuotaStore

    store = RedisQuotaStore.from_url("redis://127.0.0.1:9/0", timeout=0.5)  # port 9: nothing listens
    try:
        with pytest.raises(QuotaStoreUnavailable, match="quota store"):
            await store.admit(rules_of({"hands": "*", "calls": "1/h"}, tenant=tenant_name()), "lease")
    finally:
        await store.close()
