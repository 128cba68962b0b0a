"""Benchmark 5: session log appends per second (SQLite, PostgreSQL) and wake time by session length."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bench.report import Section, Table

OUTPUT = "x" * 400  # a typical small tool result


def turn_events(i: int) -> list[tuple[str, dict]]:
    """The three events one tool-using turn writes, shaped as the loop writes them."""
    call_id = f"toolu_{i:06d}"
    return [
        ("model_response", {
            "id": f"msg_{i:06d}", "model": "scripted", "stop_reason": "tool_use", "stop_sequence": None,
            "content": [{"type": "text", "text": f"step {i}"},
                        {"type": "tool_use", "id": call_id, "name": "echo", "input": {"text": f"item {i}"}}],
            "usage": {"input_tokens": 1200, "output_tokens": 40, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 1100},
        }),
        ("tool_call_started", {"call_id": call_id, "name": "echo", "input": {"text": f"item {i}"}, "attempt": 1}),
        ("tool_call_finished", {"call_id": call_id, "name": "echo", "output": OUTPUT, "is_error": False, "status": "OK",
                                "duration": 0.001, "usage": {"input_tokens": 0, "output_tokens": 0}}),
    ]


def events_for(n: int) -> list[tuple[str, dict]]:
    from brain import prompts

    out = [("session_started", {"task": "bench", "config": {}, "system": prompts.ORCHESTRATOR_SYSTEM, "tools": [], "model": "scripted"})]
    i = 0
    while len(out) < n:
        out.extend(turn_events(i))
        i += 1
    return out[:n]


async def fill(store, n: int, batch: int = 1) -> tuple[str, float]:
    """A session of n events, appended batch at a time; returns (session id, seconds spent appending)."""
    sid = await store.create_session("bench", {})
    events = events_for(n)
    started = time.perf_counter()
    seq = 1
    for i in range(0, n, batch):
        chunk = events[i:i + batch]
        if batch == 1:
            await store.append(sid, seq, *chunk[0])
        else:
            await store.append_many(sid, seq, chunk)
        seq += len(chunk)
    return sid, time.perf_counter() - started


async def wake_seconds(store, sid: str, reps: int) -> tuple[float, int]:
    """What wake() does before it drives: read the log, fold it, rebuild the conversation. Median seconds."""
    from brain.events import SessionState

    times = []
    for _ in range(reps):
        started = time.perf_counter()
        state = SessionState.from_events(sid, await store.events(sid))
        messages = state.messages()
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(messages)


async def measure(name: str, url: str, sizes: list[int], append_n: int, reps: int) -> tuple[list, list]:
    from brain.sessions import open_store

    store = await open_store(url)
    try:
        _, one = await fill(store, append_n)
        _, batched = await fill(store, append_n, batch=10)

        async def one_session():
            return (await fill(store, append_n // 4))[1]

        started = time.perf_counter()
        await asyncio.gather(*(one_session() for _ in range(8)))
        parallel = time.perf_counter() - started
        appends = [[name, "one session, one event per commit", append_n / one],
                   [name, "one session, 10 events per commit (a fan-out's batch)", append_n / batched],
                   [name, "8 sessions at once, one event per commit", 8 * (append_n // 4) / parallel]]
        wakes = []
        for size in sizes:
            sid, _ = await fill(store, size, batch=100)  # built fast; the append rates are measured above
            seconds, messages = await wake_seconds(store, sid, reps)
            wakes.append([name, size, messages, seconds * 1000])
        return appends, wakes
    finally:
        await store.close()


def run(mode: str, database_url: str | None) -> Section:
    sizes = [100] if mode == "smoke" else [100, 1000, 10000]
    append_n = {"smoke": 40, "quick": 200, "full": 1000}[mode]
    reps = {"smoke": 1, "quick": 3, "full": 5}[mode]
    appends, wakes = [], []
    with tempfile.TemporaryDirectory(prefix="brainhands-bench-sessions-") as tmp:
        a, w = asyncio.run(measure("SQLite", str(Path(tmp) / "sessions.db"), sizes, append_n, reps))
        appends += a
        wakes += w
    if database_url:
        a, w = asyncio.run(measure("PostgreSQL", database_url, sizes, append_n, reps))
        appends += a
        wakes += w
    s = Section("sessions", "5. Session log")
    s.tables.append(Table("Appends per second (durable: each commit fsynced)", ["store", "pattern", "events/s"], appends))
    s.tables.append(Table(f"Wake: read, fold and rebuild the conversation (median of {reps})",
                          ["store", "events", "messages rebuilt", "ms"], wakes))
    big = {row[0]: row[3] for row in wakes if row[1] == sizes[-1]}
    worst = max(big.values())
    rates = {row[0]: row[2] for row in appends if row[1].startswith("one session, one")}
    s.summary = (
        f"A {sizes[-1]:,}-event session is rebuilt in " + " and ".join(f"{v:.0f} ms on {k}" for k, v in big.items())
        + f" (target < 500 ms: {'met' if worst < 500 else f'missed by {worst / 500:.1f}x'}); one session appends "
        + " and ".join(f"{v:,.0f} events/s on {k}" for k, v in rates.items()) + ", each event durable before the brain acts on it."
    )
    s.data = {"appends": appends, "wakes": wakes}
    return s
