"""Benchmark 2: one model turn asking for K parallel calls to a hand that sleeps 200 ms, through the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import ROOT, Procs
from bench.report import Section, Table

SLEEP_MS = 200


async def fan_out(gateway: str, k: int, store_path: str) -> dict:
    """Run a session whose first turn asks for k sleep_ms calls; time that turn from the brain's own events."""
    from brain import Brain, BrainConfig, ScriptedModel, open_store

    marks: dict[str, list[float]] = {}

    def on_event(event) -> None:
        marks.setdefault(event.type, []).append(time.perf_counter())

    model = ScriptedModel([{"tool_calls": [["sleep_ms", {"ms": SLEEP_MS}]] * k}, {"text": "done"}])
    store = await open_store(store_path)
    config = BrainConfig(max_parallel=k, max_tool_calls=k, call_timeout=60.0)
    brain = Brain(target=gateway, model=model, store=store, config=config, on_event=on_event)
    try:
        result = await brain.run(f"fan out {k}")
    finally:
        await brain.close()
        await store.close()
    if not result.ok:
        raise RuntimeError(f"fan-out of {k} ended {result.status}: {result.reason}")
    turn = max(marks["tool_call_finished"]) - marks["model_response"][0]
    return {"k": k, "turn_s": turn, "calls": len(marks["tool_call_finished"])}


async def burst(address: str, k: int) -> float:
    """K calls sent at once from one client, without a brain: seconds until the last answer."""
    from hands import HandClient

    async with HandClient(address) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client.execute("sleep_ms", {"ms": SLEEP_MS}, call_id=f"b-{i}", timeout=60) for i in range(k)))
        return time.perf_counter() - started


async def one_after_another(gateway: str, n: int) -> float:
    """The cookbook orchestrator's way: the same calls awaited one at a time; seconds per call."""
    from hands import HandClient

    async with HandClient(gateway) as client:
        started = time.perf_counter()
        for i in range(n):
            response = await client.execute("sleep_ms", {"ms": SLEEP_MS}, call_id=f"seq-{i}", timeout=60)
            if response.is_error:
                raise RuntimeError(response.output)
    return (time.perf_counter() - started) / n


def fan_out_at(tree: Path, gateway: str, k: int, store_path: str) -> float:
    """fan_out() with the brain of another checkout (tree), in a process of its own; the turn's seconds."""
    code = ("import asyncio, json, sys; from bench.fanout_bench import fan_out; "
            "print(json.dumps(asyncio.run(fan_out(sys.argv[1], int(sys.argv[2]), sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, gateway, str(k), store_path], cwd=tree, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(tree)})
    if done.returncode != 0:
        raise RuntimeError(f"fan-out at {tree} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["turn_s"]


def run(mode: str, baseline: str | None = None) -> Section:
    ks = [1, 10] if mode == "smoke" else [1, 10, 100, 1000]
    reps = {"smoke": 1, "quick": 3, "full": 5}[mode]  # medians: one run on a shared machine says little
    rows = []
    with Procs() as procs, tempfile.TemporaryDirectory(prefix="brainhands-bench-fanout-") as tmp:
        hand = procs.hand()
        gateway = procs.gateway("gateway", [hand.address])
        seq_n = {"smoke": 2, "quick": 5, "full": 10}[mode]
        per_call = asyncio.run(one_after_another(gateway.address, seq_n))
        tree = None
        if baseline:
            # The same turn driven by the brain of an older revision (same gateway and hand), run for run.
            tree = procs.checkout(baseline)
            shutil.copytree(ROOT / "bench", tree / "bench", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("results", "__pycache__"))
        turns: dict[int, list[float]] = {k: [] for k in ks}
        before: dict[int, list[float]] = {k: [] for k in ks}
        direct: dict[int, list[float]] = {k: [] for k in ks}
        proxied: dict[int, list[float]] = {k: [] for k in ks}
        for i in range(reps):
            for k in ks:
                turns[k].append(asyncio.run(fan_out(gateway.address, k, str(Path(tmp) / f"s{k}-{i}.db")))["turn_s"])
                if tree is not None:
                    before[k].append(fan_out_at(tree, gateway.address, k, str(Path(tmp) / f"b{k}-{i}.db")))
                direct[k].append(asyncio.run(burst(hand.address, k)))
                proxied[k].append(asyncio.run(burst(gateway.address, k)))
        for k in ks:
            ideal = SLEEP_MS / 1000
            turn = statistics.median(turns[k])
            sequential = per_call * k
            row = [k, turn * 1000, f"{min(turns[k]) / ideal:.2f}-{max(turns[k]) / ideal:.2f}", turn / ideal, statistics.median(direct[k]) / ideal, statistics.median(proxied[k]) / ideal]
            if tree is not None:
                row.append(statistics.median(before[k]) / ideal)
            rows.append(row + [sequential, sequential / turn])
    s = Section("fanout", "2. Fan-out")
    s.tables.append(Table(
        f"Wall time of the fan-out turn (model response to the last call's result), hand sleeps {SLEEP_MS} ms per call"
        + f", median of {reps} runs (each column)",
        ["K calls", "turn ms", "range over runs (x ideal)", "x ideal (200 ms)", "x ideal: K calls from one client straight to the hand",
         "x ideal: K calls through the gateway, no brain", *([f"x ideal: brain of {baseline}"] if baseline else []),
         "one after another s (measured per call x K)", "speed-up"],
        rows,
    ))
    k100 = next((r for r in rows if r[0] == 100), rows[-1])
    k1000 = next((r for r in rows if r[0] == 1000), rows[-1])
    verdict = "met" if k100[3] <= 1.5 else f"missed by {k100[3] / 1.5:.2f}x"
    s.summary = (
        f"A turn of {k100[0]} parallel 200 ms calls takes {k100[3]:.2f}x the 200 ms ideal (median; target for 100: ≤ 1.5x, "
        f"{verdict}; the same calls sent straight to the hand with no brain or gateway take {k100[4]:.2f}x), "
        f"{k100[-1]:.0f}x faster than one after another; {k1000[0]:,} calls take {k1000[3]:.1f}x the ideal."
    )
    s.notes.append(
        f"'One after another' is the per-call time of {seq_n} sequential calls through the same gateway "
        f"({per_call * 1000:.0f} ms each), times K: running K = 1,000 for real would take minutes to show the obvious."
    )
    s.data = {"rows": rows, "sequential_per_call_s": per_call}
    return s
