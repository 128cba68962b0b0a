"""Benchmarks 3 and 6 (brain part): sessions one brain process sustains, its overhead per turn, memory per session."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.procs import ROOT, Procs
from bench.report import Section, Table


def worker(gateway: str, mode: str, n: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.brain_worker", gateway, mode, str(n)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={"BRAINHANDS_LOG_FORMAT": "json", **_env()})
    if done.returncode != 0:
        raise RuntimeError(f"brain worker {mode} {n} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _env() -> dict:
    import os

    return dict(os.environ)


def run(mode: str) -> list[Section]:
    sizes = {"smoke": [1, 5], "quick": [1, 10, 100], "full": [1, 10, 100, 1000]}[mode]
    held = {"smoke": 5, "quick": 100, "full": 500}[mode]
    with Procs() as procs:
        hand = procs.hand()
        gateway = procs.gateway("gateway", [hand.address])
        rows = [worker(gateway.address, "capacity", n) for n in sizes]
        mem = worker(gateway.address, "memory", held)
    s = Section("brain", "3. Brain capacity")
    s.tables.append(Table(
        "N sessions started at once in one brain process (each: one echo call through the gateway, then an answer); "
        "zero-latency scripted model, SQLite session log",
        ["sessions", "turns", "wall s", "sessions/s", "brain CPU ms per turn", "of which in the scripted model",
         "brain overhead ms per turn (CPU excl. model)", "wall ms per turn in the hand call"],
        [[r["sessions"], r["turns"], r["wall_s"], r["sessions_per_s"], r["cpu_ms_per_turn"], r["model_ms_per_turn"],
          r["cpu_ms_per_turn"] - r["model_ms_per_turn"], r["call_ms_per_turn"]] for r in rows],
    ))
    top = rows[-1]
    overhead = max(r["cpu_ms_per_turn"] - r["model_ms_per_turn"] for r in rows)
    s.summary = (
        f"One brain process runs {top['sessions']} concurrent sessions at {top['sessions_per_s']:.0f} sessions/s; its own "
        f"work is at most {overhead:.2f} ms of CPU per turn excluding the model (target < 2 ms: "
        f"{'met' if overhead < 2 else f'missed by {overhead / 2:.1f}x'})."
    )
    s.notes.append(
        "Brain overhead is the brain process's CPU time over the run divided by model turns, minus the time inside the "
        "scripted model (building the Message): session log appends, state folding, dispatch and the gRPC client. "
        "A turn here is one model response; each session has two (a tool call, then the answer)."
    )
    if top.get("profile"):
        lines = [f"Where the brain's time goes ({top['sessions']} sessions under cProfile, which inflates Python "
                 "time; ms per turn, by own time):", "", "| function | own ms/turn | cumulative ms/turn |", "|---|---|---|"]
        lines += [f"| `{f}` | {own:.3f} | {cum:.3f} |" for f, own, cum in top["profile"]]
        s.notes.append("\n".join(lines))
    m = Section("brain-memory", "6b. Brain memory per open session")
    m.tables.append(Table(
        f"{held} sessions held open on a hand call that does not return",
        ["sessions", "brain RSS before MiB", "with sessions open MiB", "KiB per open session"],
        [[mem["sessions"], mem["rss_before"] / 2**20, mem["rss_open"] / 2**20, mem["bytes_per_session"] / 1024]],
    ))
    m.data = mem
    s.data = {"rows": rows}
    return [s, m]
