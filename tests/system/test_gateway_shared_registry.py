"""Two gateway processes sharing a Redis registry: a hand registered through one serves through both, and
survives the SIGKILL and restart of the gateway it registered with."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from hands import HandClient
from tests.system.gateway_stack import Stack

pytestmark = pytest.mark.system


@pytest.fixture
async def stack(tmp_path, redis_url):
    s = Stack(tmp_path)
    s.prefix = f"test:{uuid.uuid4().hex}"  # a registry of this test's own in the shared Redis
    yield s
    await s.close()
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{{{s.prefix}}}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def _call(client: HandClient) -> str:
    try:
        return (await client.execute("whoami", timeout=5)).output
    except grpc.aio.AioRpcError as exc:
        return exc.code().name


async def test_a_hand_registered_through_one_gateway_serves_through_the_other_and_outlives_its_restart(stack, redis_url):
    # A lease longer than a gateway restart: the hand's heartbeats go to gateway 1, which is down for a while.
    shared = {"registry_store": redis_url, "registry_prefix": stack.prefix, "default_lease_ttl": "6s"}
    one = await stack.gateway("gateway-1", **shared)
    two = await stack.gateway("gateway-2", **shared)
    hand = await stack.hand("r0", register=one.address)
    registered = time.monotonic()
    async with HandClient(two.address) as via_two:
        while await _call(via_two) != "r0":
            assert time.monotonic() - registered < 1.0, "gateway 2 did not route to the hand within a second"
            await asyncio.sleep(0.02)

        # Calls through gateway 2 keep working while gateway 1 is SIGKILLed and restarted on its port.
        outcomes: list[str] = []
        stop = asyncio.Event()

        async def keep_calling() -> None:
            while not stop.is_set():
                outcomes.append(await _call(via_two))
                await asyncio.sleep(0.01)

        caller = asyncio.create_task(keep_calling())
        await asyncio.sleep(0.2)
        one.kill()
        one.proc.wait(10)
        await asyncio.sleep(0.5)
        during_outage = len(outcomes)
        again = await stack.gateway("gateway-1", **shared, listen=one.address)
        # The restarted gateway routes at once: its very first call finds the hand (startup_grace is 0 here, so
        # a gateway that did not know the hand would say NOT_FOUND).
        async with HandClient(again.address) as via_one:
            assert await _call(via_one) == "r0"
        await asyncio.sleep(0.2)
        stop.set()
        await caller
    assert during_outage > 10 and len(outcomes) > during_outage
    assert set(outcomes) == {"r0"}, f"calls through gateway 2 failed: {sorted(set(outcomes))}"
    loaded = [r for r in again.records() if r.get("event") == "registered backends loaded"]
    assert loaded and loaded[0]["backends"] == [hand.address]
