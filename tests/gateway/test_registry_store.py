"""The RegistryStore contract (memory and Redis pass the same tests), and two gateway replicas sharing Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
import pytest

from gateway.config import parse_config
from gateway.leases import Lease, LeaseTaken
from gateway.leases.memory import MemoryRegistryStore
from gateway.server import start_gateway
from gateway.tenants import hash_key
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import HandClient, hand

TTL = 0.4  # seconds: short, so expiry is observable


async def _delete_prefix(url: str, prefix: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    keys = [key async for key in client.scan_iter(match=f"{{{prefix}}}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def replicas(request):
    """Two handles on one registry store, as two gateway replicas hold (one object for memory)."""
    if request.param == "memory":
        store = MemoryRegistryStore()
        yield store, store
        return
    from gateway.leases.redis import RedisRegistryStore

    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}"
    stores = [RedisRegistryStore.from_url(url, prefix=prefix) for _ in range(2)]
    yield stores[0], stores[1]
    await _delete_prefix(url, prefix)
    for store in stores:
        await store.close()


def lease(address="10.0.0.1:5000", owner="fs", ttl=TTL, **kw) -> Lease:
    return Lease(id=uuid.uuid4().hex, address=address, owner=owner, ttl=ttl, allow=("fs_*",), specs=b"\x01\x02", **kw)


async def test_a_lease_granted_through_one_replica_is_seen_renewed_and_released_through_the_other(replicas):
    one, two = replicas
    granted = lease()
    await one.grant(granted)
    (seen,) = await two.snapshot()
    assert (seen.id, seen.address, seen.owner, seen.allow, seen.specs) == (granted.id, granted.address, "fs", ("fs_*",), b"\x01\x02")
    assert 0 < seen.expires_in <= TTL
    assert await two.renew(granted.id, "fs") == pytest.approx(TTL)
    assert await two.renew(granted.id, "other") is None  # another registrant's lease is as good as none
    assert not await two.release(granted.id, "other")
    assert await two.release(granted.id, "fs")
    assert await one.snapshot() == [] and await one.renew(granted.id, "fs") is None


async def test_a_lease_nobody_renews_expires_for_every_replica_and_frees_its_address(replicas):
    one, two = replicas
    first = lease()
    await one.grant(first)
    for _ in range(8):  # two ttls, kept only by renewals
        await asyncio.sleep(TTL / 4)
        assert await one.renew(first.id, "fs") == pytest.approx(TTL)
    assert [x.id for x in await two.snapshot()] == [first.id]
    await asyncio.sleep(TTL + 0.1)  # no more renewals
    assert await two.snapshot() == [] and await one.snapshot() == []
    assert await one.renew(first.id, "fs") is None
    await two.grant(lease(owner="other"))  # the address is free for anyone now


async def test_an_address_is_held_by_one_registrant_and_its_own_new_lease_replaces_the_old(replicas):
    one, two = replicas
    first = lease()
    await one.grant(first)
    with pytest.raises(LeaseTaken):
        await two.grant(lease(owner="other"))
    again = lease()
    await two.grant(again)
    assert [x.id for x in await one.snapshot()] == [again.id]
    assert await one.renew(first.id, "fs") is None


# --- two gateway processes' worth of state in one test: the same Redis, each its own route table --------------


@hand(description="Say hello.", idempotent=True)
async def hello() -> str:
    return "hello"


REGISTRANT_KEY = "registrant-key-fs-0123456789abcdef"
OTHER_KEY = "registrant-key-other-0123456789abcd"


@pytest.fixture
async def two_gateways(redis_url):
    prefix = f"test:{uuid.uuid4().hex}"
    raw = {
        "listen": "127.0.0.1:0", "metrics": None, "default_lease_ttl": "600ms", "health_check_interval": "200ms",
        "startup_grace": 0, "registry_store": redis_url, "registry_prefix": prefix, "registry_refresh": "100ms",
        "registrants": [{"name": "fs", "api_keys": [hash_key(REGISTRANT_KEY)], "hands": ["hel*"]},
                        {"name": "other", "api_keys": [hash_key(OTHER_KEY)], "hands": ["*"]}],
    }  # fmt: skip
    gateways = [await start_gateway(parse_config(raw)) for _ in range(2)]
    channels = [grpc.aio.insecure_channel(g.address) for g in gateways]
    for g, channel in zip(gateways, channels, strict=True):
        g.stub = gateway_pb2_grpc.RegistryServiceStub(channel)
    yield gateways
    for channel in channels:
        await channel.close()
    for g in gateways:
        with contextlib.suppress(Exception):
            await g.server.stop(0)
            await g.close()
    await _delete_prefix(redis_url, prefix)


def _key(key: str) -> tuple:
    return (("authorization", f"Bearer {key}"),)


async def _says_hello(gateway) -> bool:
    async with HandClient(gateway.address) as client:
        try:
            await client.execute("hello", timeout=5)
            return True
        except grpc.aio.AioRpcError:
            return False


async def _eventually(predicate, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout}s")


async def test_replicas_share_leases_heartbeats_and_deregistration_with_each_registrants_own(two_gateways, hand_service):
    one, two = two_gateways
    backend = await hand_service([hello])
    reply = await one.stub.Register(gateway_pb2.RegisterRequest(address=backend.address), timeout=5, metadata=_key(REGISTRANT_KEY))
    await _eventually(lambda: _says_hello(two), "a call through the other replica")

    # Heartbeats through the other replica keep the lease, and only its registrant's do.
    for _ in range(4):  # 4 x 300 ms: twice the lease, kept only by these heartbeats
        await two.stub.Heartbeat(gateway_pb2.HeartbeatRequest(lease_id=reply.lease_id), timeout=5, metadata=_key(REGISTRANT_KEY))
        await asyncio.sleep(0.3)
    assert await _says_hello(one) and await _says_hello(two)
    with pytest.raises(grpc.aio.AioRpcError) as theirs:
        await two.stub.Heartbeat(gateway_pb2.HeartbeatRequest(lease_id=reply.lease_id), timeout=5, metadata=_key(OTHER_KEY))
    assert theirs.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await two.stub.Register(gateway_pb2.RegisterRequest(address=backend.address), timeout=5, metadata=_key(OTHER_KEY))
    assert taken.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as theirs:
        await two.stub.Deregister(gateway_pb2.DeregisterRequest(lease_id=reply.lease_id), timeout=5, metadata=_key(OTHER_KEY))
    assert theirs.value.code() == grpc.StatusCode.NOT_FOUND

    # Deregistered through one replica: gone from both.
    await two.stub.Deregister(gateway_pb2.DeregisterRequest(lease_id=reply.lease_id), timeout=5, metadata=_key(REGISTRANT_KEY))
    assert not await _says_hello(two)
    await _eventually(lambda: _not(_says_hello(one)), "the first replica dropping the deregistered backend")

    # Registered again and left to expire: gone from both once the lease runs out.
    await two.stub.Register(gateway_pb2.RegisterRequest(address=backend.address), timeout=5, metadata=_key(REGISTRANT_KEY))
    await _eventually(lambda: _says_hello(one), "a call through the first replica")
    await _eventually(lambda: _not(_says_hello(one)), "the lease expiring on the first replica", timeout=3)
    await _eventually(lambda: _not(_says_hello(two)), "the lease expiring on the second replica", timeout=3)


async def _not(awaitable) -> bool:
    return not await awaitable


async def test_a_registry_store_that_does_not_answer_makes_registration_unavailable_not_lost(hand_service):
    from brainhands.procs import free_port

    config = parse_config({"listen": "127.0.0.1:0", "metrics": None, "registry_store": f"redis://127.0.0.1:{free_port()}/0"})
    gateway = await start_gateway(config)  # starts: a store that is down is a warning, not a failure
    backend = await hand_service([hello])
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gateway_pb2_grpc.RegistryServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await stub.Register(gateway_pb2.RegisterRequest(address=backend.address), timeout=10)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE  # the hand's registration retries
            assert "registry store does not answer" in down.value.details()
            assert (await stub.ListBackends(gateway_pb2.ListBackendsRequest(), timeout=5)).backends == []
    finally:
        await gateway.server.stop(0)
        await gateway.close()
