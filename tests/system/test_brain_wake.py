"""The brain as a real process: SIGKILL it mid fan-out, wake the session in a new process, nothing finished runs twice,
and no non-idempotent call runs twice at all."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter

import pytest

from brain import open_store
from hands import Context, HandServiceConfig, hand
from tests.procs import poll

pytestmark = pytest.mark.system

FAST, SLOW = 4, 4


@pytest.fixture
async def counting_hands(hand_service):
    """A hand service in the test process: `fast` answers at once, `slow` hangs on a call's first attempt.

    Both are idempotent (they opt out of exactly-once), so a re-issued call really runs again: the brain's
    own log is what keeps a finished call from being issued twice.
    """
    runs: Counter = Counter()
    first_attempts_in_flight = set()

    @hand(description="Answer at once, counting the call.", idempotent=True)
    async def fast(n: int, ctx: Context) -> str:
        runs[ctx.call_id] += 1
        return f"fast {n}"

    @hand(description="Hang on the first attempt of a call; answer when the call is issued again.", idempotent=True)
    async def slow(n: int, ctx: Context) -> str:
        runs[ctx.call_id] += 1
        if runs[ctx.call_id] == 1:
            first_attempts_in_flight.add(ctx.call_id)
            try:
                await asyncio.Event().wait()
            finally:
                first_attempts_in_flight.discard(ctx.call_id)
        return f"slow {n}"

    running = await hand_service([fast, slow])
    return f"127.0.0.1:{running.port}", runs, first_attempts_in_flight


async def test_sigkill_mid_fan_out_then_wake_finishes_and_runs_no_finished_call_twice(counting_hands, brainhands_procs, tmp_path):
    address, runs, hanging = counting_hands
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        {"tool_calls": [["fast", {"n": i}] for i in range(FAST)] + [["slow", {"n": i}] for i in range(SLOW)]},
        {"text": "All eight are done."},
    ]))
    db = str(tmp_path / "sessions.db")
    common = ["--gateway", address, "--sessions", db, "--json"]
    brain = await brainhands_procs("run", "Do eight things.", "--model", f"scripted:{script}", "--lease-ttl", "2", *common)

    first = json.loads(await asyncio.wait_for(brain.stdout.readline(), 30))
    session_id = first["session_id"]
    assert first["type"] == "session_started"

    store = await open_store(db)
    try:
        async def fast_finished_slow_hanging():
            finished = [e for e in await store.events(session_id) if e.type == "tool_call_finished"]
            return len(finished) == FAST and len(hanging) == SLOW

        await poll(fast_finished_slow_hanging, "the fast calls to be logged as finished while the slow ones hang")
        brain.send_signal(signal.SIGKILL)
        assert await brain.wait() == -signal.SIGKILL
        finished_before = {e.data["call_id"] for e in await store.events(session_id) if e.type == "tool_call_finished"}
        assert len(finished_before) == FAST
        assert (await store.get_session(session_id)).status == "running"

        # The dead brain's lease (2 s) still holds the session; --wait outlasts it.
        waker = await brainhands_procs("sessions", "wake", session_id, "--wait", "20", *common)
        out, err = await asyncio.wait_for(waker.communicate(), 60)
        assert waker.returncode == 0, err.decode()[-2000:]
        result = json.loads(out.decode().splitlines()[-1])
        assert (result["type"], result["status"], result["text"]) == ("result", "finished", "All eight are done.")

        for call_id in finished_before:
            assert runs[call_id] == 1, f"{call_id} had finished before the kill and ran again"
        reissued = set(runs) - finished_before
        assert len(reissued) == SLOW and all(runs[c] == 2 for c in reissued)
        events = await store.events(session_id)
        assert [e.type for e in events].count("session_started") == 1
        assert events[-1].type == "session_finished"
        assert (await store.get_session(session_id)).status == "finished"
    finally:
        await store.close()


ACTS = 6


@pytest.fixture(params=["memory", "redis"])
async def acting_hand(request, hand_service):
    """A non-idempotent hand `act` that counts its executions and holds each until the test opens a gate."""
    store = request.getfixturevalue("redis_url") if request.param == "redis" else "memory"
    runs: Counter = Counter()
    gates = [asyncio.Event(), asyncio.Event()]  # calls 0-2, calls 3-5

    @hand(description="Act on the world (not idempotent): counts each execution.")
    async def act(n: int, ctx: Context) -> str:
        runs[ctx.call_id] += 1
        await gates[n // 3].wait()
        return f"acted {n}"

    running = await hand_service([act], config=HandServiceConfig(dedupe_store=store))
    return f"127.0.0.1:{running.port}", runs, gates


async def test_sigkill_mid_fan_out_of_non_idempotent_calls_then_wake_executes_each_exactly_once(
    acting_hand, brainhands_procs, tmp_path
):
    address, runs, gates = acting_hand
    script = tmp_path / "script.json"
    script.write_text(json.dumps([
        {"tool_calls": [["act", {"n": i}] for i in range(ACTS)]},
        {"text": "All six acted."},
    ]))  # fmt: skip
    db = str(tmp_path / "sessions.db")
    common = ["--gateway", address, "--sessions", db, "--json"]
    brain = await brainhands_procs("run", "Act six times.", "--model", f"scripted:{script}", "--lease-ttl", "2", *common)
    session_id = json.loads(await asyncio.wait_for(brain.stdout.readline(), 60))["session_id"]

    store = await open_store(db)
    try:
        async def all_running():
            return len(runs) == ACTS

        await poll(all_running, "all six calls to be running in the hand")
        brain.send_signal(signal.SIGKILL)
        assert await brain.wait() == -signal.SIGKILL
        # Half the calls finish while no brain is alive; the others are still running when the woken session
        # issues them again.
        gates[0].set()
        waker = await brainhands_procs("sessions", "wake", session_id, "--wait", "20", *common)
        gates[1].set()
        out, err = await asyncio.wait_for(waker.communicate(), 60)
        assert waker.returncode == 0, err.decode()[-2000:]
        result = json.loads(out.decode().splitlines()[-1])
        assert (result["type"], result["status"], result["text"]) == ("result", "finished", "All six acted.")

        assert len(runs) == ACTS and all(n == 1 for n in runs.values()), f"executions per call: {dict(runs)}"
        finished = [e.data for e in await store.events(session_id) if e.type == "tool_call_finished"]
        assert sorted(f["output"] for f in finished) == [f"acted {i}" for i in range(ACTS)]
    finally:
        await store.close()
