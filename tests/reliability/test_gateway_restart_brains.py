"""The gateway SIGKILLed and restarted on its port under running brain sessions: the hands re-register within their
lease TTL, the brains' calls that failed meanwhile are is_error tool results in their logs, and every session goes on
to its end (or, had one failed, is woken to it); every call a hand ran has its start in the owning session's log."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from brain import open_store
from brainhands.procs import free_port
from gateway.v1 import gateway_pb2
from tests.reliability.brains import BrainProc, all_past_first_turn, wait_exit
from tests.system.gateway_stack import FAST, Stack

pytestmark = pytest.mark.system

#: Brains at once; each: TURNS turns of FAN_OUT `tally` calls (PAUSE s each), the scripted model answering in DELAY s,
#: so a session lasts several seconds, long enough to straddle the outage and carry on after it.
BRAINS, TURNS, FAN_OUT, PAUSE, DELAY = 4, 18, 3, 0.15, 0.3
REPLICAS = 2
LEASE_TTL_S = float(FAST["default_lease_ttl"].removesuffix("ms")) / 1000
#: Statuses a call may fail with while the gateway is gone (connection refused or reset) or back without its
#: replicas yet (no hand of that name registered).
OUTAGE_STATUSES = {"UNAVAILABLE", "NOT_FOUND", "DEADLINE_EXCEEDED"}


def paced_script(tmp: Path, tag: str) -> Path:
    """TURNS turns of FAN_OUT `tally` calls with call ids unique to this session, then an answer; DELAY s per answer."""
    steps = [
        {"content": [{"type": "tool_use", "id": f"toolu_{tag}_{t}_{i}", "name": "tally", "input": {"pause": PAUSE}}
                     for i in range(FAN_OUT)], "stop_reason": "tool_use"}
        for t in range(TURNS)
    ]
    path = tmp / f"script-{tag}.json"
    path.write_text(json.dumps({"steps": [*steps, {"text": f"done {tag}"}], "delay": DELAY}))
    return path


async def _serving(stack: Stack, gateway, count: int) -> bool:
    backends = await stack.backends(gateway)
    return sum(1 for b in backends.values() if b.state == gateway_pb2.BACKEND_STATE_SERVING) >= count


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


async def test_gateway_restart_under_running_brain_sessions(stack, record):
    port = free_port()
    gateway = await stack.gateway(listen=f"127.0.0.1:{port}")
    for i in range(REPLICAS):
        await stack.hand(f"r{i}", register=gateway.address)
    await stack.wait_for(lambda: _serving(stack, gateway, REPLICAS), "both replicas registered")

    db = str(stack.tmp / "sessions.db")
    common = ["--gateway", gateway.address, "--sessions", db, "--json"]
    brains = {
        f"g{n}": BrainProc(stack, f"g{n}", ["run", f"Tally for g{n}.", "--model", f"scripted:{paced_script(stack.tmp, f'g{n}')}",
                                            "--call-timeout", "10", *common])
        for n in range(BRAINS)
    }

    store = await open_store(db)
    try:
        await stack.wait_for(lambda: all_past_first_turn(brains.values(), store, FAN_OUT), "every brain past its first turn", timeout=30)
    finally:
        await store.close()

    # The fault: SIGKILL (no drain, no deregistration), then the same config on the same port.
    began = time.monotonic()
    gateway.kill(signal.SIGKILL)
    killed_at, killed_wall = time.monotonic(), time.time()
    gateway.proc.wait(5)
    stack.procs.remove(gateway)
    gateway = await stack.gateway(listen=f"127.0.0.1:{port}")
    serving_at = time.monotonic()
    await stack.wait_for(lambda: _serving(stack, gateway, REPLICAS), "both replicas re-registered", timeout=15)
    reregistered_at, reregistered_wall = time.monotonic(), time.time()

    await wait_exit(list(brains.values()), timeout=60)
    outcomes = {tag: (b.proc.returncode, (b.result() or {}).get("status")) for tag, b in brains.items()}
    woken = []
    for tag, b in brains.items():
        if outcomes[tag] == (0, "finished"):
            continue
        waker = BrainProc(stack, f"wake-{tag}", ["sessions", "wake", b.session_id(), "--wait", "30", *common])
        await wait_exit([waker], timeout=60)
        assert waker.proc.returncode == 0, waker.err.read_text()[-3000:]
        assert waker.result()["status"] == "finished"
        woken.append(tag)

    ledger = {call_id for call_id, _ in stack.ledger_entries()}
    statuses: Counter = Counter()
    lost_events, went_on = 0, 0
    errors_after_reregistered = 0  # calls that failed although both replicas were registered again
    back_after: list[float] = []  # per session: seconds from re-registration to its first OK call after the kill
    store = await open_store(db)
    try:
        for tag, b in brains.items():
            events = await store.events(b.session_id())
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), tag  # no gap in the log
            assert events[-1].type == "session_finished" and events[-1].data["result"] == f"done {tag}", (tag, events[-1])
            starts = {e.data["call_id"] for e in events if e.type == "tool_call_started"}
            finished = [e for e in events if e.type == "tool_call_finished"]
            mine = {c for c in ledger if c.startswith(f"toolu_{tag}_")}
            lost_events += len(mine - starts) + len(starts - {e.data["call_id"] for e in finished})
            assert len(finished) == TURNS * FAN_OUT, (tag, len(finished))  # every call the model asked for has a result
            for e in finished:
                statuses[e.data["status"]] += 1
                # A failed call is a tool error the model saw, never an OK with no hand behind it.
                assert e.data["is_error"] == (e.data["status"] != "OK"), (tag, e.data)
                if e.data["status"] == "OK":
                    assert e.data["call_id"] in mine, (tag, e.data["call_id"])
            errors = [i for i, e in enumerate(finished) if e.data["is_error"]]
            errors_after_reregistered += sum(1 for e in finished if e.data["is_error"] and e.ts > reregistered_wall)
            first_ok = min((e.ts for e in finished if not e.data["is_error"] and e.ts > killed_wall), default=None)
            if first_ok is not None:
                back_after.append(first_ok - reregistered_wall)
            # The session went on past the outage: a call succeeded after its last failed one.
            if errors and any(not e.data["is_error"] for e in finished[errors[-1] + 1:]):
                went_on += 1
    finally:
        await store.close()

    ok = statuses.pop("OK", 0)
    record("faults", f"gateway SIGKILLed and restarted on its port under {BRAINS} brain sessions "
           f"({TURNS} turns x {FAN_OUT} tally each)", "sessions went on, nothing lost",
           sessions_started=len(brains), sessions_finished=sum(o == (0, "finished") for o in outcomes.values()),
           sessions_woken=len(woken), sessions_past_outage=went_on, tool_calls_ok=ok,
           tool_calls_is_error=sum(statuses.values()), is_error_statuses=dict(statuses),
           gateway_restart_s=round(serving_at - killed_at, 2), reregistered_s=round(reregistered_at - serving_at, 2),
           lease_ttl_s=LEASE_TTL_S, is_error_after_reregistered=errors_after_reregistered,
           first_ok_after_reregistered_s=round(max(back_after), 2) if back_after else None,
           test_s=round(time.monotonic() - began, 1), hand_calls=len(ledger), lost=lost_events)
    assert lost_events == 0
    assert set(statuses) <= OUTAGE_STATUSES, statuses
    assert sum(statuses.values()) > 0, "no brain call failed: the outage was not felt"
    assert went_on > 0, "no session called a hand successfully after the outage"
    # Hands re-register within their lease TTL of the new gateway taking calls.
    # And the brains' calls succeed once the hands are back: their channels to the gateway do not sit in a long
    # reconnect backoff (at most the one turn of calls each brain had in flight then may still fail).
    assert errors_after_reregistered <= BRAINS * FAN_OUT, (errors_after_reregistered, back_after)
    assert reregistered_at - serving_at < LEASE_TTL_S, f"re-registered {reregistered_at - serving_at:.2f}s after the gateway was back"
