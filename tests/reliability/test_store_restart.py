"""PostgreSQL (the session log) stopped and started again under running brain processes: each session finishes,
or fails cleanly and is woken; no hand ever runs a call whose start the log does not have."""

from __future__ import annotations

import asyncio

import pytest

from brain import open_store
from tests.reliability.brains import BrainProc, all_past_first_turn, script, wait_exit
from tests.reliability.private_postgres import PrivatePostgres
from tests.system.gateway_stack import Stack

pytestmark = pytest.mark.system

TURNS, FAN_OUT, PAUSE = 8, 3, 0.25
OUTAGE_S = 3.0
RIDE_OUT, GIVE_UP = 3, 2  # brains that retry for 60 s (ride the outage out), and for 1 s (stop, to be woken)


@pytest.fixture
async def private_postgres():
    try:
        pg = await asyncio.to_thread(PrivatePostgres)
    except RuntimeError as exc:
        pytest.skip(f"no private PostgreSQL cluster here: {exc}")
    try:
        await asyncio.to_thread(pg.start)
        yield pg
    finally:
        await asyncio.to_thread(pg.close)


async def test_postgres_restart_under_running_brains(private_postgres, tmp_path, record):
    pg = private_postgres
    stack = Stack(tmp_path)
    try:
        await _run(stack, pg, record)
    finally:
        await stack.close()


async def _run(stack: Stack, pg: PrivatePostgres, record) -> None:
    hand = await stack.hand("h0")
    common = ["--gateway", hand.address, "--sessions", pg.url, "--json"]
    brains = {}
    for n in range(RIDE_OUT + GIVE_UP):
        tag = f"b{n}"
        retry = "60" if n < RIDE_OUT else "1"
        brains[tag] = BrainProc(stack, tag, ["run", f"Tally for {tag}.", "--model", f"scripted:{script(stack.tmp, tag, TURNS, FAN_OUT, PAUSE)}",
                                             "--store-retry", retry, "--lease-ttl", "2", *common])

    store = await open_store(pg.url)
    try:
        await stack.wait_for(lambda: all_past_first_turn(brains.values(), store, FAN_OUT), "every brain past its first turn", timeout=60)
    finally:
        await store.close()

    # The outage: stopped as a crash would stop it, down for OUTAGE_S while the brains keep calling hands.
    await asyncio.to_thread(pg.stop)
    await asyncio.sleep(OUTAGE_S)  # the fault's length is the thing under test, not a wait for an event
    await asyncio.to_thread(pg.start)
    ledger_at_restart = {call_id for call_id, _ in stack.ledger_entries()}

    store = await open_store(pg.url)
    try:
        started = {e.data["call_id"] for b in brains.values() if b.session_id()
                   for e in await store.events(b.session_id()) if e.type == "tool_call_started"}
        # A call a hand ran is a call the log knew was started: the start is durable before the call goes out.
        unlogged_at_restart = ledger_at_restart - started
        await wait_exit(list(brains.values()), timeout=90)

        outcomes = {tag: (b.proc.returncode, (b.result() or {}).get("status")) for tag, b in brains.items()}
        failed_cleanly, woken = [], 0
        for tag, b in brains.items():
            code, status = outcomes[tag]
            if code == 0 and status == "finished":
                continue
            err = b.err.read_text()
            last = err.strip().splitlines()[-1] if err.strip() else ""
            assert code != 0 and last.startswith("brainhands: ") and not any(
                line.startswith("Traceback") for line in err.splitlines()), (tag, code, err[-3000:])
            assert "sessions wake" in last, last  # the clear line says how to continue
            failed_cleanly.append(tag)
            waker = BrainProc(stack, f"wake-{tag}", ["sessions", "wake", b.session_id(), "--wait", "20", *common])
            await wait_exit([waker], timeout=60)
            assert waker.proc.returncode == 0, waker.err.read_text()[-3000:]
            assert waker.result()["status"] == "finished"
            woken += 1

        ledger = {call_id for call_id, _ in stack.ledger_entries()}
        lost_events = 0
        for tag, b in brains.items():
            events = await store.events(b.session_id())
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert events[-1].type == "session_finished" and events[-1].data["result"] == f"done {tag}"
            starts = {e.data["call_id"] for e in events if e.type == "tool_call_started"}
            finishes = {e.data["call_id"] for e in events if e.type == "tool_call_finished"}
            mine = {c for c in ledger if c.startswith(f"toolu_{tag}_")}
            lost_events += len(mine - starts) + len(starts - finishes)
            assert len(finishes) == TURNS * FAN_OUT, (tag, len(finishes))
            assert all(not e.data.get("is_error") for e in events if e.type == "tool_call_finished"), tag
    finally:
        await store.close()

    finished = sum(1 for code, status in outcomes.values() if code == 0 and status == "finished")
    record("faults", f"PostgreSQL stopped (immediate) for {OUTAGE_S:g} s under {len(brains)} brains",
           "nothing lost", sessions=len(brains), finished_through=finished, failed_cleanly=len(failed_cleanly),
           woken_and_finished=woken, hand_calls=len(ledger), lost=lost_events + len(unlogged_at_restart))
    assert unlogged_at_restart == set(), f"hands ran calls the log does not know were started: {unlogged_at_restart}"
    assert lost_events == 0
    # Brains that retry for 60 s ride a 3 s outage out; those that retry for 1 s stop, cleanly, and are woken.
    assert all(outcomes[f"b{n}"] == (0, "finished") for n in range(RIDE_OUT)), outcomes
    assert len(failed_cleanly) == GIVE_UP, outcomes
