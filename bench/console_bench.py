"""Benchmark 7: the web console serving many open session pages with live updates from one process.

A brain process (scripted model) runs N fan-out sessions against a hand process; a console process serves one
live page stream (the page's server-sent events) per session; this process holds the N streams open, like N browser
tabs, and records each update: how many log events it carried and how long after the store accepted its newest
event it arrived (the lag a person watching would see).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time

from bench.procs import Procs
from bench.report import Section, Table
from brainhands.console.live import REDRAW_INTERVAL

SIZES = {"smoke": (3, 2, 3), "quick": (50, 3, 6), "full": (50, 4, 8)}  # pages, turns per session, calls per turn


def _script(turns: int, calls: int) -> dict:
    steps = [{"tool_calls": [["sleep_ms", {"ms": 400 + 250 * c + 100 * t}] for c in range(calls)]} for t in range(turns)]
    return {"steps": [*steps, {"text": "All workers are back."}]}


async def _follow(client, url: str, key: str, out: list, received: list[int], done: asyncio.Event) -> None:
    """Read one page's event stream to its `end`, recording (events in the update, lag seconds) per update."""
    last_seq, first = 0, True
    async with client.stream("GET", url, cookies={"brainhands_key": key}) as response:
        response.raise_for_status()
        kind = ""
        async for line in response.aiter_lines():
            received[0] += len(line) + 1
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and kind == "update":
                update = json.loads(line.split(":", 1)[1])
                # The first update is the log so far (the page catching up), not a live one: its lag is not counted.
                out.append((update["seq"] - last_seq, None if first else time.time() - update["ts"]))
                last_seq, first = update["seq"], False
            elif line.startswith("data:") and kind == "end":
                break
    done.set()


async def _measure(console: str, brain: str, pages: int) -> dict:
    import grpc
    import httpx2

    from brain.v1 import brain_pb2, brain_pb2_grpc

    key = "bench-key"
    records: list[tuple[int, float | None]] = []
    received = [0]  # characters read off all the pages' streams
    async with grpc.aio.insecure_channel(brain) as channel:
        stub = brain_pb2_grpc.BrainServiceStub(channel)
        runs, ids = [], []
        for i in range(pages):
            call = stub.Run(brain_pb2.RunRequest(task=f"bench session {i}"), timeout=600)
            first = await call.read()
            ids.append(first.session_id)
            runs.append(call)
        limits = httpx2.Limits(max_connections=pages + 10)
        async with httpx2.AsyncClient(base_url=f"http://{console}", timeout=httpx2.Timeout(600, connect=30),
                                     limits=limits) as client:
            started, cpu0 = time.perf_counter(), time.process_time()
            dones = [asyncio.Event() for _ in ids]
            followers = [asyncio.create_task(_follow(client, f"/sessions/{sid}/live?after=0", key, records, received, d))
                         for sid, d in zip(ids, dones, strict=True)]
            drains = [asyncio.create_task(_drain(call)) for call in runs]
            await asyncio.gather(*followers)
            elapsed, reader_cpu = time.perf_counter() - started, time.process_time() - cpu0
            await asyncio.gather(*drains)
    lags = sorted(lag for _, lag in records if lag is not None)
    events = sum(n for n, _ in records)
    return {
        "pages": pages, "updates": len(records), "events": events, "seconds": elapsed,
        "events_per_s": events / elapsed, "updates_per_s": len(records) / elapsed,
        "lag_p50_ms": statistics.median(lags) * 1000 if lags else 0.0,
        "lag_p99_ms": lags[min(len(lags) - 1, int(len(lags) * 0.99))] * 1000 if lags else 0.0,
        "lag_max_ms": lags[-1] * 1000 if lags else 0.0,
        "mb_received": received[0] / 1e6, "reader_cpu_s": reader_cpu,
    }


async def _drain(call) -> None:
    import grpc

    while await call.read() is not grpc.aio.EOF:
        pass


def run(mode: str) -> Section:
    pages, turns, calls = SIZES[mode]
    with Procs() as procs:
        script = procs.workdir / "script.json"
        script.write_text(json.dumps(_script(turns, calls)))
        hand = procs.hand()
        env = {**os.environ, "BRAINHANDS_GATEWAY": "", "BRAINHANDS_SESSIONS": "", "ANTHROPIC_API_KEY": ""}
        brain = procs.brainhands("brain", ["serve", "brain", "--port", "0", "--gateway", hand.address, "--sessions",
                                           str(procs.workdir / "sessions.db"), "--model", f"scripted:{script}"],
                                 "serving brain", env=env, timeout=120)
        console = procs.brainhands("console", ["console", "--listen", "127.0.0.1:0", "--brain", brain.address],
                                   "serving console", env=env, timeout=120)
        cpu0, brain_cpu0 = console.cpu_seconds(), brain.cpu_seconds()
        result = asyncio.run(_measure(console.address, brain.address, pages))
        result["console_cpu_s"] = console.cpu_seconds() - cpu0
        result["brain_cpu_s"] = brain.cpu_seconds() - brain_cpu0
    s = Section("console", "7. Web console: live session pages")
    s.summary = (f"one console process kept {pages} open session pages live: {result['events_per_s']:.0f} log events/s "
                 f"delivered, lag p99 {result['lag_p99_ms']:.0f} ms")
    s.tables.append(Table(
        f"{pages} pages, each a session of {turns} fan-out turns x {calls} calls (sleep_ms hand), scripted model",
        ["pages", "updates", "events", "seconds", "events/s", "updates/s", "lag p50 ms", "lag p99 ms", "lag max ms",
         "MB sent", "console CPU s", "brain CPU s", "reader CPU s"],
        [[pages, result["updates"], result["events"], f"{result['seconds']:.1f}", f"{result['events_per_s']:.0f}",
          f"{result['updates_per_s']:.0f}", f"{result['lag_p50_ms']:.0f}", f"{result['lag_p99_ms']:.0f}",
          f"{result['lag_max_ms']:.0f}", f"{result['mb_received']:.1f}", f"{result['console_cpu_s']:.1f}",
          f"{result['brain_cpu_s']:.1f}", f"{result['reader_cpu_s']:.1f}"]],
    ))
    s.notes.append("Events/s counts every log event the pages received (the catch-up on opening included) over the "
                   "time from opening the pages to the last session's end. Lag: from the store accepting an update's newest event to this process reading the update off "
                   "the page's event stream, for every update after a page's first (one clock: everything runs on this machine). Each update re-draws the "
                   "page's live part from the whole log (one fold), so several events arriving together are one update; "
                   f"a session is redrawn at most every {REDRAW_INTERVAL} s (brainhands/console/live.py), so the lag "
                   "includes up to that wait. MB sent: the pages' event streams; reader CPU: this process reading them.")
    s.data = result
    return s
