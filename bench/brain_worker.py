"""One brain process for benchmarks 3 and 6: `python -m bench.brain_worker GATEWAY MODE N` prints one JSON result.

capacity: N sessions at once, each one echo call then an answer, with a zero-latency scripted model.
memory: N sessions held open on the `hold` hand; resident memory before and after, per session.
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class TimedModel:
    """Wraps the scripted model to add up the time spent "at the model", which the overhead excludes."""

    def __init__(self, model):
        self.model = model
        self.id = model.id
        self.seconds = 0.0

    async def create(self, **kw):
        started = time.perf_counter()
        try:
            return await self.model.create(**kw)
        finally:
            self.seconds += time.perf_counter() - started

    async def close(self):
        return None


async def capacity(gateway: str, n: int, store_path: str) -> dict:
    from brain import Brain, BrainConfig, ScriptedModel, open_store

    model = TimedModel(ScriptedModel([{"tool_calls": [["echo", {"text": "hi"}]]}, {"text": "done"}]))
    call_seconds = 0.0
    turns = 0

    def on_event(event) -> None:
        nonlocal call_seconds, turns
        if event.type == "tool_call_finished":
            call_seconds += event.data.get("duration", 0.0)
        elif event.type == "model_response":
            turns += 1

    store = await open_store(store_path)
    brain = Brain(target=gateway, model=model, store=store, config=BrainConfig(), on_event=on_event)
    try:
        await brain.run("warm up")  # imports, channel, first-use caches
        model.seconds, call_seconds, turns = 0.0, 0.0, 0
        cpu0, started = time.process_time(), time.perf_counter()
        results = await asyncio.gather(*(brain.run(f"session {i}") for i in range(n)))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        # The same run again under cProfile, for the report's excerpt of where a turn's time goes.
        profiler = cProfile.Profile()
        profiler.enable()
        await asyncio.gather(*(brain.run(f"profiled {i}") for i in range(n)))
        profiler.disable()
    finally:
        await brain.close()
        await store.close()
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} sessions did not finish: {bad[0].reason}")
    return {
        "sessions": n,
        "turns": turns,
        "wall_s": wall,
        "sessions_per_s": n / wall,
        "cpu_ms_per_turn": cpu * 1000 / turns,
        "model_ms_per_turn": model.seconds * 1000 / turns,
        "call_ms_per_turn": call_seconds * 1000 / turns,
        "profile": top_functions(profiler, 2 * n),
    }


def top_functions(profiler: cProfile.Profile, turns: int, top: int = 12) -> list[tuple[str, float, float]]:
    """(function, own ms per turn, cumulative ms per turn), by own time."""
    stats = pstats.Stats(profiler).stats
    rows = []
    for (path, line, func), (_cc, _nc, own, cumulative, _callers) in stats.items():
        where = path.split("site-packages/")[-1].split("/work/main/")[-1].split("lib/python3.11/")[-1]
        rows.append((f"{func} ({where}:{line})", own * 1000 / turns, cumulative * 1000 / turns))
    # Waiting in epoll is the loop being idle, not work.
    rows = [r for r in rows if "epoll" not in r[0] and not r[0].startswith("select (selectors")]
    return sorted(rows, key=lambda r: -r[1])[:top]


async def memory(gateway: str, n: int, store_path: str) -> dict:
    from brain import Brain, BrainConfig, ScriptedModel, open_store

    model = ScriptedModel([{"tool_calls": [["hold", {}]]}, {"text": "done"}])
    started_calls = 0
    all_open = asyncio.Event()

    def on_event(event) -> None:
        nonlocal started_calls
        if event.type == "tool_call_started":
            started_calls += 1
            if started_calls >= n:
                all_open.set()

    store = await open_store(store_path)
    brain = Brain(target=gateway, model=model, store=store, config=BrainConfig(call_timeout=600), on_event=on_event)
    warm = Brain(target=gateway, model=ScriptedModel([{"tool_calls": [["echo", {"text": "hi"}]]}, {"text": "done"}]),
                 store=store)
    await warm.run("warm up")
    await warm.close()
    before = rss()
    tasks = [asyncio.create_task(brain.run(f"held {i}")) for i in range(n)]
    await asyncio.wait_for(all_open.wait(), 120)
    after = rss()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await brain.close()
    await store.close()
    return {"sessions": n, "rss_before": before, "rss_open": after, "bytes_per_session": (after - before) / n}


def main() -> None:
    gateway, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with tempfile.TemporaryDirectory(prefix="brainhands-bench-brain-") as tmp:
        path = str(Path(tmp) / "sessions.db")
        result = asyncio.run(capacity(gateway, n, path) if mode == "capacity" else memory(gateway, n, path))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
