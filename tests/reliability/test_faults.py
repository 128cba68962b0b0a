"""Faults under steady load, with real processes: a hand replica SIGKILLed, the gateway restarted, Redis restarted,
and a bounded soak of mixed traffic (brain sessions and direct calls to two hands) with replicas killed and restarted. Each counts calls attempted, succeeded and failed by status,
and checks that no call the caller saw succeed is missing from the hands' ledger (nothing lost)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest

from brain import open_store
from brainhands.procs import free_port
from gateway.tenants import hash_key
from gateway.v1 import gateway_pb2
from hands import HandClient
from tests.reliability.brains import BrainProc, script, wait_exit
from tests.system.gateway_stack import Stack

pytestmark = pytest.mark.system

#: The soak's length in seconds: short in CI, longer by BRAINHANDS_SOAK_SECONDS=600.
SOAK_SECONDS = float(os.environ.get("BRAINHANDS_SOAK_SECONDS", "20"))
KEY = "faults-key"


class Load:
    """Workers calling `tally` through the gateway until stopped; every outcome counted, every OK call id kept."""

    def __init__(self, target: str, workers: int = 8, api_key: str | None = None, hand: str = "tally",
                 make_input=lambda: {"pause": 0.01}, check=None):
        self.client = HandClient(target, api_key=api_key)
        self.workers = workers
        self.hand, self.make_input, self.check = hand, make_input, check  # check(input, output) -> answer is right
        self.wrong = 0  # OK calls whose answer was not the right one
        self.codes: Counter = Counter()
        self.ok_ids: set[str] = set()
        self.last_ok = 0.0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _worker(self) -> None:
        while not self._stop.is_set():
            call_id = uuid.uuid4().hex
            try:
                tool_input = self.make_input()
                reply = await self.client.execute(self.hand, tool_input, call_id=call_id, timeout=5)
                if self.check is not None and not self.check(tool_input, reply.output):
                    self.wrong += 1
                self.codes["OK"] += 1
                self.ok_ids.add(call_id)
                self.last_ok = time.monotonic()
            except grpc.aio.AioRpcError as exc:
                self.codes[exc.code().name] += 1
                await asyncio.sleep(0.02)  # a failing target is not hammered in a tight loop

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def succeeding(self, timeout: float = 20.0) -> float:
        """Seconds until a call succeeds after now (bounded)."""
        since = time.monotonic()
        while self.last_ok < since:
            assert time.monotonic() - since < timeout, f"no call succeeded within {timeout}s; so far {dict(self.codes)}"
            await asyncio.sleep(0.02)
        return self.last_ok - since

    async def stop(self) -> dict:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        await self.client.close()
        return {"attempted": sum(self.codes.values()), **dict(self.codes)}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def lost(stack: Stack, load: Load) -> int:
    """Calls the caller saw succeed that no hand recorded: must be 0."""
    return len(load.ok_ids - {call_id for call_id, _ in stack.ledger_entries()})


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


async def test_hand_replica_sigkill_then_gateway_restart_under_load(stack, record):
    port = free_port()
    gateway = await stack.gateway(listen=f"127.0.0.1:{port}")
    replicas = [await stack.hand(f"r{i}", register=gateway.address) for i in range(2)]
    await stack.wait_for(lambda: _serving(stack, gateway, 2), "both replicas registered")
    load = Load(gateway.address)
    load.start()
    await load.succeeding()

    # 1. SIGKILL one replica mid-load: the other takes the calls.
    before = Counter(load.codes)
    replicas[0].kill(signal.SIGKILL)
    await asyncio.sleep(1.0)  # a second of load against one dead replica (retries + ejection), then count
    await load.succeeding()
    during_kill = load.codes - before
    record("faults", "hand replica SIGKILLed", "survived", **dict(during_kill))

    # 2. Restart the gateway on the same port: the live replica re-registers within its lease TTL.
    before = Counter(load.codes)
    gateway.kill(signal.SIGKILL)
    gateway.proc.wait(5)
    stack.procs.remove(gateway)
    gateway = await stack.gateway(listen=f"127.0.0.1:{port}")
    took = await load.succeeding(timeout=15)
    during_restart = load.codes - before
    result = await load.stop()
    missing = lost(stack, load)
    record("faults", "gateway SIGKILLed and restarted on its port", "recovered",
           recovered_s=round(took, 2), lease_ttl_s=1.5, **dict(during_restart))
    record("faults", "replica kill + gateway restart: whole run", "nothing lost", lost=missing, **result)
    assert missing == 0
    assert result["OK"] > 0
    # Every failure is a status the brain turns into a tool error; nothing else.
    assert set(result) - {"attempted", "OK"} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND"}, result


async def _serving(stack: Stack, gateway, count: int) -> bool:
    backends = await stack.backends(gateway)
    return sum(1 for b in backends.values() if b.state == gateway_pb2.BACKEND_STATE_SERVING) >= count


@pytest.fixture
async def private_redis(tmp_path):
    """A Redis of this test's own (never the shared one): (url, restart(), kill())."""
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(tmp_path)]
    procs: list[subprocess.Popen] = []

    async def start() -> None:
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # noqa: ASYNC220 - returns at once
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            assert time.monotonic() < deadline, "private redis-server did not start"
            await asyncio.sleep(0.05)

    def kill() -> None:
        procs[-1].kill()
        procs[-1].wait(5)

    await start()
    yield f"redis://127.0.0.1:{port}/0", start, kill
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


async def test_redis_restart_under_load_fails_closed_then_recovers(stack, private_redis, record):
    url, start_redis, kill_redis = private_redis
    hand = await stack.hand("r0")
    gateway = await stack.gateway(
        routes=[{"hands": ["*"], "backends": [hand.address]}],
        quota_store=url,
        tenants=[{"name": "t", "api_keys": [hash_key(KEY)], "allow": ["*"],
                  "quotas": [{"hands": "*", "calls": "1000000/h"}, {"hands": "*", "concurrency": 64}]}],
    )
    load = Load(gateway.address, api_key=KEY)
    load.start()
    await load.succeeding()
    before = Counter(load.codes)
    kill_redis()
    await asyncio.sleep(1.0)
    down = load.codes - before
    before = Counter(load.codes)
    await start_redis()
    took = await load.succeeding(timeout=20)
    await asyncio.sleep(0.5)
    after = load.codes - before
    result = await load.stop()
    missing = lost(stack, load)
    record("faults", "Redis (quota store) SIGKILLed: 1 s down", "failed closed", **dict(down))
    record("faults", "Redis restarted", "recovered", recovered_s=round(took, 2), **dict(after))
    record("faults", "Redis kill + restart: whole run", "nothing lost", lost=missing, **result)
    assert missing == 0
    assert down.get("UNAVAILABLE", 0) > 0 and down.get("OK", 0) <= load.workers  # fail closed (calls in flight may finish)
    assert after.get("OK", 0) > 0


#: Brain sessions in the soak: at once, and each one's turns x fan-out of `tally` calls.
SOAK_BRAINS, SOAK_TURNS, SOAK_FAN_OUT = 3, 3, 3


async def test_soak_mixed_traffic_with_replicas_killed_and_restarted(stack, record):
    """Brain sessions (scripted model, a small fan-out each) and direct calls to two hands through the gateway,
    while a `tally` replica is SIGKILLed and restarted every 3 s; nothing the callers saw succeed is lost."""
    gateway = await stack.gateway()
    steady = await stack.hand("steady", register=gateway.address)
    text = await stack.hand("text", "tests.system.gateway_hands:TEXT", register=gateway.address)
    flappy = await stack.hand("flappy", register=gateway.address)
    await stack.wait_for(lambda: _serving(stack, gateway, 3), "three services registered")
    start_rss = {"gateway": rss_kib(gateway.proc.pid), "steady hand": rss_kib(steady.proc.pid),
                 "text hand": rss_kib(text.proc.pid)}
    tally = Load(gateway.address, workers=4)
    reverse = Load(gateway.address, workers=2, hand="reverse", make_input=lambda: {"text": uuid.uuid4().hex},
                   check=lambda tool_input, output: output == tool_input["text"][::-1])
    tally.start()
    reverse.start()

    db = str(stack.tmp / "sessions.db")
    common = ["--gateway", gateway.address, "--sessions", db, "--json"]
    brains: list[BrainProc] = []
    brain_rss: list[int] = []  # the largest RSS seen of each brain process, in start order

    def launch() -> None:
        tag = f"s{len(brains)}"
        path = script(stack.tmp, tag, SOAK_TURNS, SOAK_FAN_OUT, 0.05)
        brains.append(BrainProc(stack, tag, ["run", f"Tally for {tag}.", "--model", f"scripted:{path}", *common]))
        brain_rss.append(0)

    kills, next_kill = 0, time.monotonic() + 3.0
    deadline = time.monotonic() + SOAK_SECONDS
    while time.monotonic() < deadline:
        for i, b in enumerate(brains):
            if b.proc.poll() is None:
                brain_rss[i] = max(brain_rss[i], rss_kib(b.proc.pid) if Path(f"/proc/{b.proc.pid}").exists() else 0)
        while sum(b.proc.poll() is None for b in brains) < SOAK_BRAINS:
            launch()
        if time.monotonic() >= next_kill:
            flappy.kill(signal.SIGKILL)
            flappy.proc.wait(5)
            stack.procs.remove(flappy)
            kills += 1
            flappy = await stack.hand(f"flappy{kills}", register=gateway.address)
            next_kill = time.monotonic() + 3.0
        await asyncio.sleep(0.1)
    await wait_exit(brains, timeout=60)
    await tally.succeeding()
    await reverse.succeeding()
    end_rss = {"gateway": rss_kib(gateway.proc.pid), "steady hand": rss_kib(steady.proc.pid),
               "text hand": rss_kib(text.proc.pid)}
    calls = {"tally": await tally.stop(), "reverse": await reverse.stop()}

    # Sessions a replica kill interrupted (the brain exited non-zero) are woken to their end.
    interrupted = [b for b in brains if (b.proc.returncode, (b.result() or {}).get("status")) != (0, "finished")]
    for b in interrupted:
        waker = BrainProc(stack, f"wake-{b.out.stem}", ["sessions", "wake", b.session_id(), "--wait", "40", *common])
        await wait_exit([waker], timeout=60)
        assert waker.proc.returncode == 0, waker.err.read_text()[-3000:]
    ledger = {call_id for call_id, _ in stack.ledger_entries()}
    store = await open_store(db)
    lost_events, tool_errors, session_calls = 0, 0, 0
    try:
        for b in brains:
            events = await store.events(b.session_id())
            assert events[-1].type == "session_finished", (b.out.stem, events[-1].type)
            starts = {e.data["call_id"] for e in events if e.type == "tool_call_started"}
            finished = [e for e in events if e.type == "tool_call_finished"]
            ran = {c for c in ledger if c.startswith(f"toolu_{b.out.stem}_")}
            lost_events += len(ran - starts) + len(starts - {e.data["call_id"] for e in finished})
            tool_errors += sum(1 for e in finished if e.data.get("is_error"))
            session_calls += len(finished)
    finally:
        await store.close()
    lost_calls = lost(stack, tally) + reverse.wrong

    record("soak", f"{SOAK_SECONDS:g} s mixed: {SOAK_BRAINS} brains at once (fan-out {SOAK_FAN_OUT} x {SOAK_TURNS} turns),"
           f" 4 callers of tally, 2 of reverse; a tally replica SIGKILLed and restarted every 3 s", "nothing lost",
           replica_kills=kills, sessions_started=len(brains), sessions_finished=len(brains) - len(interrupted),
           sessions_interrupted_then_woken=len(interrupted), session_tool_calls=session_calls,
           session_tool_errors=tool_errors, calls_tally=calls["tally"], calls_reverse=calls["reverse"],
           lost=lost_calls + lost_events, rss_start_kib=start_rss, rss_end_kib=end_rss,
           brain_rss_kib={"first": brain_rss[0], "last": brain_rss[-1], "max": max(brain_rss)})
    assert lost_calls == 0 and lost_events == 0
    assert kills > 0 and len(brains) > SOAK_BRAINS
    for name, result in calls.items():
        assert result.get("OK", 0) > 0, (name, result)
        assert set(result) - {"attempted", "OK"} <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, (name, result)
