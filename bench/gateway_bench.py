"""Benchmarks 1 and 6: an echo hand direct, through the gateway, through nginx, and with quotas; CPU, memory, profile."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
from collections import Counter

from bench.loadgen import Load, grpc_frame, run_h2load
from bench.procs import Proc, Procs, nginx_binary
from bench.report import Section, Table
from hands import HandClient

API_KEY = "bench-key"
# Checked on every call, never denying in a benchmark: a token bucket and a concurrency cap.
QUOTAS = [{"hands": "*", "rate": "1000000/s", "burst": 1000000}, {"hands": "*", "concurrency": 100000}]


async def _check_echo(address: str, api_key: str | None) -> None:
    """One real call through the path: h2load counts HTTP 200, which gRPC also sends for errors."""
    client = HandClient(address, api_key=api_key)
    try:
        response = await client.execute("echo", {"text": "ok"}, timeout=10)
    finally:
        await client.close()
    if response.output != "ok" or response.is_error:
        raise RuntimeError(f"echo through {address} answered {response.output!r}")


def _measure(path: str, target: Proc, proxy: Proc | None, hand: Proc, *, concurrency: int, seconds: float,
             api_key: str | None, procs: Procs) -> dict:
    frame = grpc_frame("echo", {"text": "x" * 64})
    proxy_cpu0 = proxy.cpu_seconds() if proxy else 0.0
    hand_cpu0 = hand.cpu_seconds()
    load: Load = run_h2load(target.address, frame, concurrency=concurrency, seconds=seconds, api_key=api_key,
                            workdir=procs.workdir)
    calls = max(1, load.calls)
    return {
        "path": path,
        "concurrency": concurrency,
        "calls": load.calls,
        "failed": load.failed,
        "calls_per_s": load.calls_per_s,
        "p50_us": load.p50_us,
        "p99_us": load.p99_us,
        "generator_cpu": load.generator_cpu,
        "proxy_cpu_us_per_call": ((proxy.cpu_seconds() - proxy_cpu0) * 1e6 / calls) if proxy else 0.0,
        "hand_cpu_us_per_call": (hand.cpu_seconds() - hand_cpu0) * 1e6 / calls,
    }


def _median_row(measured: list[dict]) -> dict:
    row = dict(measured[0])
    for key in ("calls_per_s", "p50_us", "p99_us", "generator_cpu", "proxy_cpu_us_per_call", "hand_cpu_us_per_call"):
        row[key] = statistics.median(m[key] for m in measured)
    row["calls"] = sum(m["calls"] for m in measured)
    row["failed"] = sum(m["failed"] for m in measured)
    row["runs"] = len(measured)
    return row


def profile(gateway: Proc, address: str, seconds: float, procs: Procs, api_key: str | None = None) -> dict:
    """py-spy samples the gateway process while h2load drives it at concurrency 64; top frames by share."""
    out = procs.workdir / "gateway.pyspy.txt"
    binary = shutil.which("py-spy")
    if binary is None:
        return {"error": "py-spy is not installed (pip install -e '.[bench]')"}
    spy = subprocess.Popen(
        [binary, "record", "--pid", str(gateway.pid), "--duration", str(int(seconds) + 1),
         "--rate", "250", "--native", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        run_h2load(address, grpc_frame("echo", {"text": "x" * 64}), concurrency=64, seconds=seconds, warmup=0.2,
                   api_key=api_key, workdir=procs.workdir)
    finally:
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            err = "timed out"
    if not out.exists():
        return {"error": (err or "py-spy wrote nothing").strip()[-300:]}
    return summarize_stacks(out.read_text())


def summarize_stacks(raw: str, top: int = 12) -> dict:
    """From py-spy's collapsed stacks: busy samples by who owns them, and the top functions."""
    inclusive: Counter = Counter()
    own: Counter = Counter()
    owners: Counter = Counter()
    total = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += n
        if frames[-1].startswith(("epoll_wait", "EpollSelector.select", "select_epoll")):
            idle += n  # waiting for work, not work
            continue
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
        owners[_owner(frames)] += n
    busy = total - idle
    if not busy:
        return {}
    return {
        "samples": total,
        "idle_pct": round(100 * idle / total, 1),
        "owners": [(o, round(100 * n / busy, 1)) for o, n in owners.most_common()],
        "inclusive": [(f, round(100 * n / busy, 1)) for f, n in inclusive.most_common(top * 4) if _interesting(f)][:top],
        "self": [(f, round(100 * n / busy, 1)) for f, n in own.most_common(top)],
    }


_OWNERS = (
    ("the log line (structlog, brainhands/logs.py)", ("structlog/", "logging/", "brainhands/logs.py")),
    ("metrics (prometheus_client)", ("prometheus_client",)),
    ("the gateway's own Python (routing, auth, interceptors)", ("(gateway/", "(brainhands/", "(hands/")),
    ("grpc (core in C, cygrpc, grpc.aio)", ("cygrpc", "(grpc/", "libgrpc")),
    ("asyncio event loop", ("asyncio/", "_asynciomodule", "selectors.py")),
)


def _owner(frames: list[str]) -> str:
    """Who a busy sample belongs to: the nearest known caller, from the top of the stack down."""
    for frame in reversed(frames):
        for owner, marks in _OWNERS:
            if any(m in frame for m in marks):
                return owner
    return "other (interpreter, libc)"


def _frame(frame: str) -> str:
    func, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if func.startswith("0x"):  # a native frame without a symbol: name its library only
        return f"[native] ({where.rsplit('/', 1)[-1].split('.cpython')[0]})"
    return f"{func} ({where})"


def _interesting(frame: str) -> bool:
    # Frames on every stack (the entry point, the loop itself, thread start-up) say nothing about the call path.
    return not any(s in frame for s in ("runpy", "<module>", "(brainhands/cli", "(gateway/cli", "run_until", "_run_once",
                                        "run_forever", "(libc.so", "Thread.", "thread_run", "task_step", "Context.run"))


def run(mode: str, redis_url: str | None, baseline: str | None = None) -> list[Section]:
    seconds = {"smoke": 1.0, "quick": 2.0, "full": 5.0}[mode]
    reps = {"smoke": 1, "quick": 3, "full": 5}[mode]
    levels = {"smoke": [1], "quick": [1, 8, 64], "full": [1, 4, 16, 64, 256]}[mode]
    rows: list[dict] = []
    memory: dict = {}
    prof: dict = {}
    with Procs() as procs:
        hand = procs.hand()
        gateway = procs.gateway("gateway", [hand.address])
        paths: list[tuple[str, Proc, Proc | None, str | None]] = [("direct", hand, None, None), ("gateway", gateway, gateway, None)]
        if nginx_binary():
            nginx = procs.nginx(hand.address)
            paths.append(("nginx", nginx, nginx, None))
        floor = procs.floor_proxy(hand.address)
        paths.append(("grpc.aio floor", floor, floor, None))
        quota_gw = procs.gateway("gateway-quota-memory", [hand.address], quota_store="memory", quotas=QUOTAS, api_key=API_KEY)
        paths.append(("gateway+quotas(memory)", quota_gw, quota_gw, API_KEY))
        if redis_url:
            redis_gw = procs.gateway("gateway-quota-redis", [hand.address], quota_store=redis_url, quotas=QUOTAS, api_key=API_KEY)
            paths.append(("gateway+quotas(redis)", redis_gw, redis_gw, API_KEY))
        if baseline:
            # The same stack built from an older revision, measured in the same run: before/after figures.
            tree = procs.checkout(baseline)
            old_hand = procs.hand("hand-baseline", root=tree)
            old_gw = procs.gateway("gateway-baseline", [old_hand.address], root=tree)
            paths.append((f"direct@{baseline}", old_hand, None, None))
            paths.append((f"gateway@{baseline}", old_gw, old_gw, None))
        for _, target, _, key in paths:
            asyncio.run(_check_echo(target.address, key))
        memory["gateway_rest"] = gateway.memory()[0]
        memory["hand_rest"] = hand.memory()[0]
        # Runs of every path interleaved, then the median of each figure: the machine's load moves during a run.
        runs: dict[tuple[str, int], list[dict]] = {}
        for _ in range(reps):
            for concurrency in levels:
                for path, target, proxy, key in paths:
                    path_hand = old_hand if baseline and path.endswith(f"@{baseline}") else hand
                    peak = path == "gateway" and concurrency == levels[-1]
                    if peak:
                        gateway.reset_peak()
                        hand.reset_peak()
                    runs.setdefault((path, concurrency), []).append(_measure(
                        path, target, proxy, path_hand, concurrency=concurrency, seconds=seconds, api_key=key, procs=procs))
                    if peak:
                        memory["gateway_peak_c64"] = max(memory.get("gateway_peak_c64", 0), gateway.memory()[1])
                        memory["hand_peak_c64"] = max(memory.get("hand_peak_c64", 0), hand.memory()[1])
        rows = [_median_row(measured) for measured in runs.values()]
        prof = profile(gateway, gateway.address, {"smoke": 1.0, "quick": 3.0, "full": 8.0}[mode], procs)
    return [_overhead_section(rows, levels, prof, baseline), _memory_section(memory)]


def _overhead_section(rows: list[dict], levels: list[int], prof: dict, baseline: str | None) -> Section:
    by = {(r["path"], r["concurrency"]): r for r in rows}
    paths = list(dict.fromkeys(r["path"] for r in rows))
    s = Section("gateway", "1. Gateway overhead (echo hand)")
    table = []
    for r in rows:
        direct = by[(f"direct@{baseline}" if baseline and r["path"] == f"gateway@{baseline}" else "direct", r["concurrency"])]
        table.append([
            r["path"], r["concurrency"], r["calls"], r["failed"], r["calls_per_s"], r["calls_per_s"] / direct["calls_per_s"],
            r["p50_us"], r["p99_us"], r["p50_us"] - direct["p50_us"], r["proxy_cpu_us_per_call"],
            r["hand_cpu_us_per_call"], r["generator_cpu"],
        ])
    s.tables.append(Table(
        f"Per path and concurrency (one HTTP/2 connection, h2load): median of {rows[0].get('runs', 1)} interleaved runs; calls and failed are totals",
        ["path", "concurrency", "calls", "failed", "calls/s", "x direct", "p50 µs", "p99 µs", "added p50 µs",
         "proxy CPU µs/call", "hand CPU µs/call", "h2load CPU (cores)"],
        table,
    ))
    c_low, c_high = levels[0], levels[-1]
    d1, d64 = by[("direct", c_low)], by[("direct", c_high)]
    g1, g64 = by[("gateway", c_low)], by[("gateway", c_high)]
    added_gw = g1["p50_us"] - d1["p50_us"]
    throughput = g64["calls_per_s"] / d64["calls_per_s"]
    targets = []
    if ("nginx", c_low) in by:
        n1 = by[("nginx", c_low)]
        added_ng = n1["p50_us"] - d1["p50_us"]
        ratio = added_gw / added_ng if added_ng > 0 else float("inf")
        targets.append(["added p50 at concurrency 1, gateway / nginx", "≤ 2.0", ratio, "met" if ratio <= 2 else f"missed by {ratio / 2:.1f}x"])
        s.summary = (
            f"At concurrency 1 the gateway adds {added_gw:.0f} µs to a call's p50 against nginx's {added_ng:.0f} µs "
            f"({ratio:.1f}x nginx, target ≤ 2x); at concurrency {c_high} it carries {throughput:.2f} of the direct calls/s "
            f"(target ≥ 0.8)."
        )
    else:
        s.summary = f"The gateway adds {added_gw:.0f} µs to p50 at concurrency 1 and carries {throughput:.2f} of direct calls/s at 64 (nginx absent)."
    targets.append([f"calls/s at concurrency {c_high}, gateway / direct", "≥ 0.8", throughput, "met" if throughput >= 0.8 else f"missed by {0.8 - throughput:.2f}"])
    for path in paths:
        if path.startswith("gateway+"):
            q = by[(path, c_high)]
            targets.append([f"calls/s at concurrency {c_high}, {path} / direct", "(none)", q["calls_per_s"] / d64["calls_per_s"], ""])
    s.tables.append(Table("Targets", ["measure", "target", "measured", "verdict"], targets))
    if baseline:
        ab = []
        for c in levels:
            new, old = by[("gateway", c)], by[(f"gateway@{baseline}", c)]
            dn, do = by[("direct", c)], by[(f"direct@{baseline}", c)]
            ab.append([c, old["proxy_cpu_us_per_call"], new["proxy_cpu_us_per_call"],
                       new["proxy_cpu_us_per_call"] / old["proxy_cpu_us_per_call"],
                       do["hand_cpu_us_per_call"], dn["hand_cpu_us_per_call"],
                       old["calls_per_s"] / do["calls_per_s"], new["calls_per_s"] / dn["calls_per_s"]])
        s.tables.append(Table(
            f"Before ({baseline}) and after, measured side by side in this run",
            ["concurrency", "gateway CPU µs/call before", "after", "after/before", "hand CPU µs/call before", "after",
             "gateway/direct calls/s before", "after"],
            ab,
        ))
    gen = max(r["generator_cpu"] for r in rows)
    s.notes.append(
        f"The load generator is not the bottleneck: h2load used at most {gen:.2f} of a core in any run, and the "
        f"same generator drove the direct path to {d64['calls_per_s']:,.0f} calls/s, more than any proxied path. "
        "On 2 cores the generator, the proxy and the hand share the CPUs, so calls/s ratios at concurrency 64 "
        "mostly compare CPU spent per call: the 'proxy CPU µs/call' column is the most machine-independent figure."
    )
    if prof.get("owners"):
        lines = [f"Gateway profile under concurrency-64 load (py-spy with native frames, {prof['samples']} samples, "
                 f"{prof['idle_pct']}% idle in epoll). Busy samples by owner (the nearest known caller of the sampled "
                 "frame, so a write() syscall counts for whoever made it):", "", "| owner | % of busy |", "|---|---|"]
        lines += [f"| {o} | {p} |" for o, p in prof["owners"]]
        lines += ["", "Functions on the stack in the most busy samples:", "", "| function | % of busy |", "|---|---|"]
        lines += [f"| `{f}` | {p} |" for f, p in prof["inclusive"]]
        lines += ["", "Top of stack (where the time is spent itself):", "", "| function | % of busy |", "|---|---|"]
        lines += [f"| `{f}` | {p} |" for f, p in prof["self"]]
        s.notes.append("\n".join(lines))
    elif prof.get("error"):
        s.notes.append(f"Profile not taken: {prof['error']}")
    s.data = {
        "rows": rows,
        "latency": {p: {str(r["concurrency"]): {"p50_us": r["p50_us"], "p99_us": r["p99_us"]} for r in rows if r["path"] == p} for p in paths},
        "profile": prof,
    }
    return s


def _memory_section(memory: dict) -> Section:
    s = Section("memory", "6. Memory")
    mib = 1 / (1024 * 1024)
    rows = []
    if "gateway_rest" in memory:
        rows.append(["gateway", memory["gateway_rest"] * mib, memory.get("gateway_peak_c64", 0) * mib])
        rows.append(["echo hand service", memory["hand_rest"] * mib, memory.get("hand_peak_c64", 0) * mib])
    s.tables.append(Table("Resident memory (MiB): at rest after one call, and peak during the concurrency-64 run",
                          ["process", "at rest", "peak under load (c=64)"], rows))
    s.data = memory
    return s


# --- the per-call cost of tracing (issue 22): off, today's code (a baseline revision), on -------------------


def _otlp_sink():
    """A trace receiver on the official opentelemetry-proto TraceService, in a thread: (server, address, counts)."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    counts = {"spans": 0}

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            counts["spans"] += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"http://127.0.0.1:{port}", counts


def tracing_cost(mode: str, baseline: str | None = "main") -> Section:
    """Per-call latency and CPU of gateway + hand: tracing off, the code of `baseline` (no tracing code at all) and
    tracing on (exporting over OTLP/gRPC to a local sink), measured interleaved in one run. `python -m bench --only tracing`.
    """
    import os

    seconds = {"smoke": 1.0, "quick": 2.0, "full": 5.0}[mode]
    reps = {"smoke": 1, "quick": 3, "full": 5}[mode]
    levels = [1] if mode == "smoke" else [1, 16]
    sink, endpoint, counts = _otlp_sink()
    try:
        with Procs() as procs:
            hand = procs.hand()
            paths = [("tracing off", procs.gateway("gateway", [hand.address]), hand)]
            if baseline:
                tree = procs.checkout(baseline)
                old_hand = procs.hand("hand-baseline", root=tree)
                paths.append((f"today's code ({baseline})", procs.gateway("gateway-baseline", [old_hand.address], root=tree), old_hand))
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint  # inherited by the two traced processes only
            try:
                traced_hand = procs.hand("hand-traced")
                paths.append(("tracing on (OTLP/gRPC)", procs.gateway("gateway-traced", [traced_hand.address]), traced_hand))
            finally:
                del os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"]
            for _, gw, _ in paths:
                asyncio.run(_check_echo(gw.address, None))
            runs: dict[tuple[str, int], list[dict]] = {}
            for _ in range(reps):
                for concurrency in levels:
                    for path, gw, path_hand in paths:
                        runs.setdefault((path, concurrency), []).append(_measure(
                            path, gw, gw, path_hand, concurrency=concurrency, seconds=seconds, api_key=None, procs=procs))
    finally:
        sink.stop(0)
    rows = []
    for (path, concurrency), measured in runs.items():
        r = _median_row(measured)
        rows.append([path, concurrency, r["calls_per_s"], r["p50_us"], r["p99_us"], r["proxy_cpu_us_per_call"],
                     r["hand_cpu_us_per_call"], r["failed"]])
    rows.sort(key=lambda row: (row[1], [p for p, _, _ in paths].index(row[0])))
    s = Section("tracing", "Tracing: the per-call cost, off and on")
    s.tables.append(Table(
        f"An echo call through gateway + hand, h2load for {seconds:g} s per run, median of {reps} runs, paths interleaved",
        ["path", "concurrency", "calls/s", "p50 µs", "p99 µs", "gateway CPU µs/call", "hand CPU µs/call", "failed"],
        rows,
    ))
    by = {(row[0], row[1]): row for row in rows}
    off = by[("tracing off", levels[-1])]
    if baseline:
        old = by[(f"today's code ({baseline})", levels[-1])]
        s.summary = (f"With tracing off a call costs the gateway {off[5]:.0f} µs of CPU against {old[5]:.0f} µs for "
                     f"{baseline} (concurrency {levels[-1]}); ")  # fmt: skip
    on = by[("tracing on (OTLP/gRPC)", levels[-1])]
    s.summary += f"with tracing on, {on[5]:.0f} µs ({counts['spans']} spans reached the sink)."
    s.notes.append("h2load sends no traceparent, so with tracing on each call starts a trace at the gateway "
                   "(its routing span and one attempt span) and the hand adds its span: three spans per call.")
    s.data = {"rows": rows, "spans_exported": counts["spans"]}
    return s
