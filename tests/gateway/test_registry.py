"""RegistryService and the hand side of it: leases, re-registration, and passive ejection of failing backends."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from gateway.backends import Backend
from gateway.config import Backoff, parse_config
from gateway.routing import HandRoute, RouteTable
from gateway.server import start_gateway
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import HandClient, hand
from hands.registration import keep_registered


@hand(description="Say hello.", idempotent=True)
async def hello() -> str:
    return "hello"


@pytest.fixture
async def gw():
    config = parse_config({"listen": "127.0.0.1:0", "metrics": None, "default_lease_ttl": "600ms"})
    running = await start_gateway(config)
    channel = grpc.aio.insecure_channel(running.address)
    running.stub = gateway_pb2_grpc.RegistryServiceStub(channel)
    yield running
    await channel.close()
    with contextlib.suppress(Exception):
        await running.server.stop(0)
        await running.close()


async def test_register_refuses_a_bad_or_unreachable_address(gw):
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await gw.stub.Register(gateway_pb2.RegisterRequest(address="not an address"), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as dead:
        await gw.stub.Register(gateway_pb2.RegisterRequest(address="127.0.0.1:9"), timeout=10)
    assert dead.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "127.0.0.1:9" in dead.value.details()
    assert (await gw.stub.ListBackends(gateway_pb2.ListBackendsRequest(), timeout=5)).backends == []


async def _listed(gw) -> dict[str, list[str]]:
    """What ListBackends says: backend address -> the hands the gateway routes to it."""
    reply = await gw.stub.ListBackends(gateway_pb2.ListBackendsRequest(), timeout=5)
    return {b.address: list(b.hands) for b in reply.backends}


async def _routed(gw) -> set[str]:
    """The hands the gateway's Describe offers callers."""
    async with HandClient(gw.address) as client:
        return {spec.name for spec in await client.describe(timeout=5)}


async def test_keep_registered_heartbeats_and_registers_again_when_the_lease_is_lost(gw, hand_service):
    backend = await hand_service([hello])
    registration = await keep_registered(backend, gw.address, backend.address)
    assert await _listed(gw) == {backend.address: ["hello"]} and await _routed(gw) == {"hello"}
    first = registration.lease_id
    await asyncio.sleep(1.5)  # two and a half lease lengths: only heartbeats keep it
    assert backend.address in await _listed(gw) and registration.lease_id == first

    await gw.stub.Deregister(gateway_pb2.DeregisterRequest(lease_id=first), timeout=5)  # the gateway forgets it
    assert "hello" not in await _routed(gw)
    for _ in range(100):  # bounded: the next heartbeat gets NOT_FOUND and registers again
        if registration.lease_id and registration.lease_id != first and "hello" in await _routed(gw):
            break
        await asyncio.sleep(0.05)
    assert "hello" in await _routed(gw) and registration.lease_id != first

    await backend.drain(1)  # drain deregisters before the server stops
    assert backend.address not in await _listed(gw)


async def test_a_backend_failing_in_a_row_is_ejected_with_growing_backoff_and_back_on_success():
    config = parse_config({"eject_after_failures": 2, "eject_backoff": {"base": "10s", "max": "60s"}})
    table = RouteTable()
    backends = [Backend(f"127.0.0.1:{port}", config) for port in (1, 2)]
    try:
        for b in backends:
            b.serving = True
            b.specs = {"hello": object()}
            table.backends[b.address] = b
        route = HandRoute(name="hello", backends=tuple(backends), idempotent=True)
        first, second = backends
        backoff = Backoff(base=10, max=60)
        assert first.record_failure(2, backoff) == 0.0  # one failure: still in
        assert first.record_failure(2, backoff) == 10.0  # second in a row: out for the base
        assert {table.pick(route) for _ in range(4)} == {second}
        first.ejected_until = 1.0  # the back-off has passed (monotonic time long ago)
        assert first.record_failure(2, backoff) == 20.0  # failed again at once: twice as long
        first.ejected_until = 1.0
        first.record_success()
        assert (first.consecutive_failures, first.ejections) == (0, 0)
        assert {table.pick(route) for _ in range(4)} == {first, second}
    finally:
        for b in backends:
            await b.close()
