"""A replica killed with SIGKILL under a steady stream of calls: idempotent calls never fail, others never run twice."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from hands import HandClient
from tests.system.gateway_stack import Stack

pytestmark = pytest.mark.system

WORKERS = 6
CALLS = 240
KILL_AFTER = 60


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


async def _stream_and_kill(stack: Stack, hand: str):
    """Run CALLS calls from WORKERS concurrent callers; SIGKILL replica b once KILL_AFTER have finished."""
    a = await stack.hand("a")
    b = await stack.hand("b")
    gw = await stack.gateway(routes=[{"backends": [a.address, b.address]}])
    outcomes: dict[str, str] = {}  # call id -> "a" / "b" (who answered) or the status code name
    order: list[str] = []
    killed = asyncio.Event()
    queue = iter(range(CALLS))

    async def worker(client: HandClient) -> None:
        for _ in queue:
            call_id = uuid.uuid4().hex
            try:
                reply = await client.execute(hand, {"pause": 0.03}, call_id=call_id, timeout=10)
                outcomes[call_id] = reply.output
            except grpc.aio.AioRpcError as exc:
                outcomes[call_id] = exc.code().name
            order.append(call_id)
            if len(order) == KILL_AFTER and not killed.is_set():
                b.kill()
                killed.set()

    async with HandClient(gw.address) as client:
        await asyncio.gather(*(worker(client) for _ in range(WORKERS)))
    assert killed.is_set() and len(outcomes) == CALLS
    assert {"a", "b"} <= set(outcomes[c] for c in order[:KILL_AFTER])  # both replicas had traffic before
    return outcomes, order


async def test_idempotent_calls_all_succeed_when_a_replica_is_killed(stack):
    outcomes, order = await _stream_and_kill(stack, "tally")
    failed = {c: o for c, o in outcomes.items() if o not in ("a", "b")}
    assert failed == {}
    assert {outcomes[c] for c in order[-50:]} == {"a"}  # the dead replica gets no more calls


async def test_non_idempotent_calls_never_run_twice_and_fail_unavailable_only_if_they_may_have_run(stack):
    outcomes, order = await _stream_and_kill(stack, "append_once")
    runs = stack.ledger_counts()
    assert max(runs.values()) == 1, [c for c, n in runs.items() if n > 1]  # none ran twice
    ran_on = dict(stack.ledger_entries())
    failed = {c: o for c, o in outcomes.items() if o not in ("a", "b")}
    assert set(failed.values()) <= {"UNAVAILABLE"}
    for call_id in failed:
        assert ran_on.get(call_id) in (None, "b")  # only calls sent to the killed replica fail
    assert len(failed) <= 2 * 6  # at most the calls in flight on b (one per worker), not a flood
    assert {outcomes[c] for c in order[-50:]} == {"a"}
    succeeded = [c for c, o in outcomes.items() if o in ("a", "b")]
    assert all(ran_on.get(c) == outcomes[c] for c in succeeded)  # each success ran exactly where it says
