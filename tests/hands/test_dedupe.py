"""Exactly-once hands: the memory and the Redis dedupe store pass the same tests, through a real hand service."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import grpc
import pytest

from hands import Context, HandServiceConfig, hand
from hands import metadata as md
from hands.dedupe import MemoryDedupeStore, Once, RedisDedupeStore
from hands.v1 import hands_pb2

LEASE = 0.6  # seconds: short, so a dead replica's claim is seen to end in a test


@pytest.fixture(params=["memory", "redis"])
async def store_spec(request):
    """The --dedupe-store of the services under test (a shared Redis; each test's keys are its own call ids)."""
    if request.param == "memory":
        yield "memory"
        return
    # Every key holds a fresh call id and expires on its own (a result after its TTL, a claim after its lease):
    # nothing is deleted here, since a wildcard delete would take the claims of tests running beside this one.
    yield request.getfixturevalue("redis_url")


class Counting:
    """Hands that count their runs by call id; `gate` holds `hold` until the test opens it."""

    def __init__(self):
        self.runs: Counter = Counter()
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

        @hand(description="Charge a card: must not run twice.")
        async def charge(amount: int, ctx: Context) -> str:
            self.runs[ctx.call_id] += 1
            return f"charged {amount} (run {self.runs[ctx.call_id]})"

        @hand(description="Wait for the gate, counting runs.")
        async def hold(ctx: Context) -> str:
            self.runs[ctx.call_id] += 1
            self.entered.set()
            await self.gate.wait()
            return f"held (run {self.runs[ctx.call_id]})"

        @hand(description="Fail the first time, then succeed.")
        async def flaky(ctx: Context) -> str:
            self.runs[ctx.call_id] += 1
            if self.runs[ctx.call_id] == 1:
                raise RuntimeError("the first run broke")
            return "fine"

        @hand(description="Wait for the gate; fail the first time, then succeed.")
        async def flaky_slow(ctx: Context) -> str:
            self.runs[ctx.call_id] += 1
            self.entered.set()
            await self.gate.wait()
            if self.runs[ctx.call_id] == 1:
                raise RuntimeError("the first run broke")
            return f"fine on run {self.runs[ctx.call_id]}"

        @hand(description="Read something: safe to run again.", idempotent=True)
        async def read(ctx: Context) -> str:
            self.runs[ctx.call_id] += 1
            return f"read (run {self.runs[ctx.call_id]})"

        self.hands = [charge, hold, flaky, flaky_slow, read]


@pytest.fixture
async def service(hand_service, hand_client, store_spec):
    """`client, counting = await service()`: a hand service with dedupe over the store under test."""

    async def start(**config):
        counting = Counting()
        running = await hand_service(counting.hands, config=HandServiceConfig(dedupe_store=store_spec, **config))
        return hand_client(running.address), counting

    return start


async def test_a_repeat_of_a_finished_call_gets_its_result_without_running_again(service):
    client, counting = await service()
    call_id = uuid.uuid4().hex
    first = await client.execute("charge", {"amount": 5}, call_id=call_id)
    again = await client.execute("charge", {"amount": 5}, call_id=call_id)
    assert first.output == again.output == "charged 5 (run 1)"
    assert counting.runs[call_id] == 1
    other = await client.execute("charge", {"amount": 5})
    assert other.output == "charged 5 (run 1)"  # a new call id is a new call
    # Call ids are a session's own (a model numbers them): another session's call with the same id is another call.
    elsewhere = await client.execute("charge", {"amount": 5}, call_id=call_id, session_id="another-session")
    assert elsewhere.output == "charged 5 (run 2)"


async def test_a_repeat_of_a_running_call_waits_for_it_and_the_first_caller_may_leave(service):
    client, counting = await service()
    call_id = uuid.uuid4().hex
    first = asyncio.ensure_future(client.execute("hold", call_id=call_id, timeout=30))
    await asyncio.wait_for(counting.entered.wait(), 10)
    first.cancel()  # the caller goes away (a brain that died): the run goes on
    with pytest.raises(asyncio.CancelledError):
        await first
    repeat = asyncio.ensure_future(client.execute("hold", call_id=call_id, timeout=30))
    await asyncio.sleep(0.2)
    assert not repeat.done()  # it waits for the run in progress rather than starting another
    counting.gate.set()
    assert (await repeat).output == "held (run 1)"
    assert counting.runs[call_id] == 1


async def test_replicas_sharing_a_store_run_a_call_once(hand_service, hand_client, store_spec):
    if store_spec == "memory":
        pytest.skip("the memory store is one process's: replicas need Redis")
    counting = Counting()
    config = HandServiceConfig(dedupe_store=store_spec)
    a, b = [hand_client((await hand_service(counting.hands, config=config)).address) for _ in range(2)]
    call_id = uuid.uuid4().hex
    first = asyncio.ensure_future(a.execute("hold", call_id=call_id, timeout=30))
    await asyncio.wait_for(counting.entered.wait(), 10)
    repeat = asyncio.ensure_future(b.execute("hold", call_id=call_id, timeout=30))
    await asyncio.sleep(0.2)
    assert not repeat.done()
    counting.gate.set()
    assert (await first).output == (await repeat).output == "held (run 1)"
    assert (await b.execute("hold", call_id=call_id)).output == "held (run 1)"
    assert counting.runs[call_id] == 1


async def test_a_run_that_raised_is_forgotten_so_a_repeat_runs_again(service):
    client, counting = await service()
    call_id = uuid.uuid4().hex
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.execute("flaky", call_id=call_id)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert (await client.execute("flaky", call_id=call_id)).output == "fine"
    assert counting.runs[call_id] == 2


async def test_idempotent_hands_opt_out_and_run_every_time(service):
    client, counting = await service()
    call_id = uuid.uuid4().hex
    assert (await client.execute("read", call_id=call_id)).output == "read (run 1)"
    assert (await client.execute("read", call_id=call_id)).output == "read (run 2)"


async def test_one_tenant_cannot_read_anothers_result_by_its_call_id(service):
    client, counting = await service()
    call_id = uuid.uuid4().hex
    mine = await client.execute("charge", {"amount": 7}, call_id=call_id, metadata={md.TENANT: "acme"})
    theirs = await client.execute("charge", {"amount": 1}, call_id=call_id, metadata={md.TENANT: "globex"})
    assert (mine.output, theirs.output) == ("charged 7 (run 1)", "charged 1 (run 2)")
    assert (await client.execute("charge", {"amount": 7}, call_id=call_id, metadata={md.TENANT: "acme"})).output == (
        "charged 7 (run 1)"
    )


async def test_results_are_kept_for_the_ttl_then_a_repeat_runs_again(service):
    client, counting = await service(dedupe_ttl=0.5)
    call_id = uuid.uuid4().hex
    assert (await client.execute("charge", {"amount": 1}, call_id=call_id)).output == "charged 1 (run 1)"
    assert (await client.execute("charge", {"amount": 1}, call_id=call_id)).output == "charged 1 (run 1)"
    for _ in range(100):
        await asyncio.sleep(0.05)
        if (await client.execute("charge", {"amount": 1}, call_id=call_id)).output != "charged 1 (run 1)":
            break
    assert counting.runs[call_id] == 2


async def test_a_dedupe_ttl_of_zero_turns_it_off(service):
    client, counting = await service(dedupe_ttl=0)
    call_id = uuid.uuid4().hex
    await client.execute("charge", {"amount": 1}, call_id=call_id)
    assert (await client.execute("charge", {"amount": 1}, call_id=call_id)).output == "charged 1 (run 2)"


async def test_a_replica_that_died_mid_run_loses_its_claim_after_the_lease(store_spec):
    """Once over the store directly: the dead replica's claim ends with its lease, and a repeat runs the call."""
    store = MemoryDedupeStore() if store_spec == "memory" else RedisDedupeStore.from_url(store_spec)
    try:
        key = f"t/charge/{uuid.uuid4().hex}"
        started = asyncio.get_running_loop().time()  # before the claim: its lease starts no earlier than this
        assert (await store.claim(key, "a-replica-that-was-sigkilled", LEASE)).name == "CLAIMED"

        async def run_here() -> hands_pb2.ExecuteResponse:
            return hands_pb2.ExecuteResponse(output="ran on the live replica")

        response = await asyncio.wait_for(Once(store, lease=LEASE).call(key, run_here), LEASE * 10)
        assert response.output == "ran on the live replica"
        assert asyncio.get_running_loop().time() - started >= LEASE * 0.5  # it waited for the claim to end
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dedupe-store", "mysql://db"], "--dedupe-store: expected 'memory' or a redis:// URL, got 'mysql://db'"),
        (["--dedupe-ttl", "-1"], "--dedupe-ttl: expected seconds >= 0, got -1"),
    ],
)
def test_a_bad_dedupe_flag_is_one_line_and_exit_2(capsys, flags, message):
    from hands.cli import main

    assert main(["tests.hands.sample_hands", *flags]) == 2
    assert capsys.readouterr().err == f"brainhands serve hand: {message}\n"


async def test_a_repeat_waiting_for_a_run_that_failed_runs_the_call_itself(service):
    client, counting = await service()
    call_id = uuid.uuid4().hex
    counting.runs[call_id] = 0
    first = asyncio.ensure_future(client.execute("flaky_slow", call_id=call_id, timeout=30))
    await asyncio.wait_for(counting.entered.wait(), 10)
    repeat = asyncio.ensure_future(client.execute("flaky_slow", call_id=call_id, timeout=30))
    await asyncio.sleep(0.2)
    counting.gate.set()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await first
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert (await repeat).output == "fine on run 2"
    assert counting.runs[call_id] == 2
