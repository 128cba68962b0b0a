"""Gateway --workers: the same K = 1,000 calls through a gateway of 1 and of 2 worker processes, side by side.

`python -m bench --only workers` (needs Redis: workers share the registry and quota stores). SO_REUSEPORT
spreads connections, not calls, over the workers: K calls from many callers' channels are spread, a single
brain's K calls (one channel) all go to one worker. Both are measured, interleaved run for run.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.fanout_bench import SLEEP_MS, fan_out
from bench.gateway_bench import _check_echo
from bench.loadgen import grpc_frame, run_h2load
from bench.procs import Procs
from bench.report import Section, Table

K = 1000
CONNECTIONS = 8  # callers, each on a channel of its own


async def spread(address: str, k: int, connections: int) -> float:
    """k sleep_ms calls at once from `connections` channels (no shared subchannel); seconds until the last answer."""
    from hands import HandClient

    clients = [HandClient(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)]
    try:
        await asyncio.gather(*(c.describe(timeout=10) for c in clients))  # connected before the clock starts
        started = time.perf_counter()
        await asyncio.gather(*(clients[i % connections].execute("sleep_ms", {"ms": SLEEP_MS}, timeout=120)
                               for i in range(k)))  # fmt: skip
        return time.perf_counter() - started
    finally:
        for c in clients:
            await c.close()


def run(mode: str, redis_url: str | None) -> Section:
    s = Section("workers", "Gateway workers: 1 and 2 processes on one port")
    if redis_url is None:
        s.notes.append("Redis did not answer: --workers needs a shared registry and quota store, so nothing was measured.")
        return s
    k = 100 if mode == "smoke" else K
    reps = {"smoke": 1, "quick": 3, "full": 5}[mode]
    seconds = {"smoke": 1.0, "quick": 3.0, "full": 5.0}[mode]
    prefix = f"bench:{uuid.uuid4().hex}"
    measured: dict[tuple[int, str], list[float]] = {}
    cpu: dict[int, list[float]] = {}
    with Procs() as procs, tempfile.TemporaryDirectory(prefix="brainhands-bench-workers-") as tmp:
        hand = procs.hand()
        gateways = {
            n: procs.gateway(f"gateway-{n}w", [hand.address], workers=n, registry_store=redis_url, registry_prefix=prefix)
            for n in (1, 2)
        }
        for gw in gateways.values():
            asyncio.run(_check_echo(gw.address, None))
        frame = grpc_frame("echo", {"text": "x" * 64})
        for i in range(reps):
            for n, gw in gateways.items():  # interleaved: the machine's other load falls on both alike
                before = gw.tree_cpu_seconds()
                measured.setdefault((n, "spread"), []).append(asyncio.run(spread(gw.address, k, CONNECTIONS)))
                cpu.setdefault(n, []).append((gw.tree_cpu_seconds() - before) * 1e6 / k)
                turn = asyncio.run(fan_out(gw.address, k, str(Path(tmp) / f"s{n}-{i}.db")))["turn_s"]
                measured.setdefault((n, "brain"), []).append(turn)
                load = run_h2load(gw.address, frame, concurrency=64, seconds=seconds, workdir=procs.workdir,
                                  connections=CONNECTIONS)  # fmt: skip
                measured.setdefault((n, "echo calls/s"), []).append(load.calls_per_s)
                measured.setdefault((n, "echo failed"), []).append(load.failed)
    ideal = SLEEP_MS / 1000
    def span(key) -> str:
        return f"{min(measured[key]) * 1000:,.0f}-{max(measured[key]) * 1000:,.0f}"

    rows = []
    for n in (1, 2):
        spread_s = statistics.median(measured[(n, "spread")])
        brain_s = statistics.median(measured[(n, "brain")])
        rows.append([n, spread_s * 1000, span((n, "spread")), spread_s / ideal, statistics.median(cpu[n]),
                     brain_s * 1000, span((n, "brain")), brain_s / ideal,
                     statistics.median(measured[(n, "echo calls/s")]), sum(measured[(n, "echo failed")])])  # fmt: skip
    s.tables.append(Table(
        f"K = {k:,} calls of a hand sleeping {SLEEP_MS} ms, through a gateway of N workers (registry in Redis, no quotas); "
        f"median of {reps} interleaved runs",
        ["workers", f"K calls from {CONNECTIONS} channels: ms", "range ms", "x ideal", "gateway CPU µs/call (all workers)",
         "one brain's fan-out turn: ms", "range ms", "x ideal",
         f"echo calls/s, h2load {CONNECTIONS} connections x 8 streams", "echo failed"],
        rows,
    ))
    one, two = rows
    s.summary = (
        f"{k:,} calls from {CONNECTIONS} channels take {one[1]:.0f} ms through 1 worker and {two[1]:.0f} ms through 2 "
        f"({one[1] / two[1]:.2f}x); echo throughput over {CONNECTIONS} connections {one[8]:,.0f} -> {two[8]:,.0f} calls/s "
        f"({two[8] / one[8]:.2f}x); one brain's fan-out turn (one channel, so one worker either way) "
        f"{one[5]:.0f} -> {two[5]:.0f} ms (ranges {one[6]} and {two[6]} ms)."
    )
    s.notes.append(
        "SO_REUSEPORT gives each new connection to one worker; a gRPC channel is one connection, so one brain's "
        "calls stay on one worker and only many callers (brains, clients, gateways' own hands) use the second. "
        "The hand, the load generator and both workers share the machine's cores, so a second worker can at most "
        "take the gateway's share of the CPU off one core. The brain's turn differs between the rows only by "
        "the machine's noise: every call of one brain's session was logged by a single worker."
    )
    s.data = {"rows": rows, "k": k, "connections": CONNECTIONS, "runs": {f"{n}:{what}": v for (n, what), v in measured.items()}}
    return s
