"""Benchmark 4: quota admissions per second and p99 (memory, Redis), and exactness under two gateway replicas."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from bench.loadgen import percentile
from bench.procs import Procs
from bench.report import Section, Table


def _rules(tenant: str, quotas: list[dict]):
    from gateway.tenants import hash_key, parse_tenants

    return parse_tenants([{"name": tenant, "api_keys": [hash_key(tenant)], "quotas": quotas}]).tenants[0].quotas


async def admissions(store, concurrency: int, n: int) -> tuple[float, float, float]:
    """(admissions/s, p50 µs, p99 µs) of admit() for a call under a rate and a concurrency rule, slots released after."""
    rules = _rules(f"bench-{uuid.uuid4().hex[:8]}", [
        {"hands": "*", "rate": "1000000/s", "burst": 1000000}, {"hands": "*", "concurrency": 100000}])
    latencies: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            decision = await store.admit(rules, uuid.uuid4().hex)
            latencies.append(time.perf_counter() - started)
            if not decision.admitted:
                raise RuntimeError("a benchmark admission was denied")
            await store.release(decision.leases)

    await worker(50)
    latencies.clear()
    started = time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return len(latencies) / wall, percentile(latencies, 0.5) * 1e6, percentile(latencies, 0.99) * 1e6


async def store_rows(redis_url: str | None, mode: str) -> list[list]:
    from gateway.quotas.memory import MemoryQuotaStore

    rows = []
    stores = [("memory", MemoryQuotaStore(), {"smoke": 640, "quick": 20000, "full": 100000}[mode])]
    if redis_url:
        from gateway.quotas.redis import RedisQuotaStore

        stores.append(("redis", RedisQuotaStore.from_url(redis_url, prefix=f"bench:{uuid.uuid4().hex}"),
                       {"smoke": 128, "quick": 2000, "full": 10000}[mode]))
    for name, store, n in stores:
        for concurrency in (1, 32):
            rate, p50, p99 = await admissions(store, concurrency, n)
            rows.append([name, concurrency, n, rate, p50, p99])
        await store.close()
    return rows


async def contention(gateways: list[str], api_key: str, limit: int, attempts: int) -> tuple[int, int, int]:
    """attempts calls spread over the replicas, 64 at a time each; (admitted, refused RESOURCE_EXHAUSTED, other)."""
    from hands import HandClient

    counts = {"ok": 0, "exhausted": 0, "other": 0}
    clients = [HandClient(g, api_key=api_key) for g in gateways]

    async def lane(client, count: int) -> None:
        for i in range(count):
            try:
                await client.execute("echo", {"text": "q"}, call_id=f"q-{i}", timeout=30)
                counts["ok"] += 1
            except grpc.aio.AioRpcError as exc:
                counts["exhausted" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "other"] += 1

    per_lane = attempts // (64 * len(clients))
    await asyncio.gather(*(lane(c, per_lane) for c in clients for _ in range(64)))
    for c in clients:
        await c.close()
    return counts["ok"], counts["exhausted"], counts["other"]


def run(mode: str, redis_url: str | None) -> Section:
    s = Section("quotas", "4. Quota decisions")
    rows = asyncio.run(store_rows(redis_url, mode))
    s.tables.append(Table("admit() under a rate and a concurrency rule (in one process, slots released after each call)",
                          ["store", "concurrency", "admissions", "admissions/s", "p50 µs", "p99 µs"], rows))
    exact = None
    if redis_url:
        limit = {"smoke": 20, "quick": 500, "full": 2000}[mode]
        attempts = 2 * limit + 128 * (1 if mode == "smoke" else 4)
        tenant = f"bench-{uuid.uuid4().hex[:8]}"
        with Procs() as procs:
            hand = procs.hand()
            quotas = [{"hands": "*", "calls": f"{limit}/day"}]
            replicas = [procs.gateway(f"gateway-{i}", [hand.address], quota_store=redis_url, quotas=quotas,
                                      api_key="bench-key", tenant=tenant) for i in range(2)]
            ok, exhausted, other = asyncio.run(contention([r.address for r in replicas], "bench-key", limit, attempts))
        exact = ok == limit
        s.tables.append(Table(
            f"Two gateway replicas sharing Redis, a limit of {limit} calls per day, {ok + exhausted + other} calls "
            "sent at once (64 in flight per replica)",
            ["limit", "admitted", "refused RESOURCE_EXHAUSTED", "other errors", "exact"],
            [[limit, ok, exhausted, other, "yes" if exact else "NO"]],
        ))
    by = {(r[0], r[1]): r for r in rows}
    mem = by[("memory", 32)]
    text = f"The memory store decides {mem[3]:,.0f} admissions/s (p99 {mem[5]:.0f} µs)"
    if ("redis", 32) in by:
        red = by[("redis", 32)]
        text += f", Redis {red[3]:,.0f}/s (p99 {red[5]:,.0f} µs, one Lua script per decision)"
    if exact is not None:
        text += f"; two replicas sharing Redis admitted {'exactly' if exact else 'NOT exactly'} the limit under contention."
    s.summary = text
    s.data = {"rows": rows, "exact": exact}
    return s
