"""The gateway front in-process, with real hand servers behind it on loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import pytest

from gateway.config import parse_config
from gateway.server import start_gateway
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import Context, HandError, hand


@pytest.fixture
async def gateway():
    """Start a gateway in-process: `gw = await gateway(routes=[...], ...)`; metrics off, quick health checks."""
    started = []

    async def _start(**raw):
        config = parse_config({"listen": "127.0.0.1:0", "metrics": None, "health_check_interval": "60s", **raw})
        gw = await start_gateway(config)
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        with contextlib.suppress(Exception):
            await gw.server.stop(0)
            await gw.close()


def replica(tag: str, *, idempotent: bool = True):
    """A hand named whoami answering `tag`, and a call log of its own."""
    calls: list[str] = []

    @hand(name="whoami", description="Say which replica answered.", idempotent=idempotent)
    async def whoami(*, ctx: Context) -> str:
        calls.append(ctx.call_id)
        return tag

    return whoami, calls


@hand(description="Show what the hand received.")
async def show_call(*, ctx: Context) -> str:
    return json.dumps({"metadata": dict(ctx.metadata), "remaining": ctx.time_remaining()})


@hand(description="Fail in a way the model should see.")
async def refuse() -> str:
    raise HandError("no, and here is why")


@hand(description="A bug.")
async def buggy() -> str:
    raise RuntimeError("boom")


async def test_propagates_metadata_and_the_deadline_but_never_the_api_key(gateway, hand_service, hand_client):
    backend = await hand_service([show_call])
    gw = await gateway(routes=[{"backends": [backend.address]}])
    client = hand_client(gw.address, api_key="caller-secret")
    reply = await client.execute(
        "show_call", {}, call_id="c-1", session_id="s-1", timeout=4,
        metadata={"x-brainhands-depth": "2", "traceparent": "00-abc-def-01", "x-other": "dropped"},
    )  # fmt: skip
    seen = json.loads(reply.output)
    assert seen["metadata"]["x-brainhands-call-id"] == "c-1"
    assert seen["metadata"]["x-brainhands-session-id"] == "s-1"
    assert seen["metadata"]["x-brainhands-depth"] == "2"
    assert seen["metadata"]["traceparent"] == "00-abc-def-01"
    assert "authorization" not in seen["metadata"] and "x-other" not in seen["metadata"]
    # the caller's deadline, not the hand's default of 300 s (grpc-timeout rounds up a little on the wire)
    assert 0 < seen["remaining"] <= 4.5


async def test_hand_outcomes_pass_through_unchanged(gateway, hand_service, hand_client):
    backend = await hand_service([refuse, buggy])
    gw = await gateway(routes=[{"backends": [backend.address]}])
    client = hand_client(gw.address)
    reply = await client.execute("refuse", {}, timeout=5)
    assert reply.is_error and reply.output == "no, and here is why"
    with pytest.raises(grpc.aio.AioRpcError) as bug:
        await client.execute("buggy", {}, timeout=5)
    assert bug.value.code() == grpc.StatusCode.INTERNAL and "correlation id" in bug.value.details()
    assert bug.value.details().count("boom") == 0  # no traceback to the caller


async def test_unknown_or_malformed_names_are_refused_with_the_design_statuses(gateway, hand_service, hand_client):
    backend = await hand_service([refuse])
    gw = await gateway(routes=[{"backends": [backend.address]}])
    client = hand_client(gw.address)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await client.execute("nope", {}, timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert unknown.value.details() == "no hand named 'nope'; the gateway knows: refuse"
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await client.execute("", {}, timeout=5)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_route_globs_limit_what_a_static_backend_serves(gateway, hand_service, hand_client):
    backend = await hand_service([refuse, buggy])
    gw = await gateway(routes=[{"hands": ["ref*"], "backends": [backend.address]}])
    assert [s.name for s in await hand_client(gw.address).describe(timeout=5)] == ["refuse"]


async def test_the_replica_with_fewest_calls_in_flight_wins(gateway, hand_service, hand_client):
    release = asyncio.Event()
    holding = asyncio.Event()

    @hand(name="hold", description="Wait until released.", idempotent=True)
    async def hold_a() -> str:
        holding.set()
        await release.wait()
        return "a"

    a_whoami, a_calls = replica("a")
    b_whoami, b_calls = replica("b")
    a = await hand_service([a_whoami, hold_a])
    b = await hand_service([b_whoami])
    gw = await gateway(routes=[{"backends": [a.address, b.address]}])
    client = hand_client(gw.address)
    assert {(await client.execute("whoami", {}, timeout=5)).output for _ in range(6)} == {"a", "b"}  # ties share
    held = asyncio.create_task(client.execute("hold", {}, timeout=10))
    await asyncio.wait_for(holding.wait(), 10)  # the held call is in flight on a
    async with grpc.aio.insecure_channel(gw.address) as channel:
        listed = await gateway_pb2_grpc.RegistryServiceStub(channel).ListBackends(gateway_pb2.ListBackendsRequest())
    assert {entry.address: entry.in_flight for entry in listed.backends} == {a.address: 1, b.address: 0}
    assert {(await client.execute("whoami", {}, timeout=5)).output for _ in range(6)} == {"b"}
    release.set()
    assert (await held).output == "a"


async def test_a_call_that_never_reached_a_hand_is_retried_even_when_not_idempotent(gateway, hand_service, hand_client):
    a_whoami, a_calls = replica("a", idempotent=False)
    b_whoami, b_calls = replica("b", idempotent=False)
    a = await hand_service([a_whoami])
    b = await hand_service([b_whoami])
    gw = await gateway(routes=[{"backends": [a.address, b.address]}])
    client = hand_client(gw.address)
    assert {(await client.execute("whoami", {}, timeout=5)).output for _ in range(4)} == {"a", "b"}
    await b.server.stop(0)  # b's port now refuses connections; the health check (60 s) has not noticed
    answers = [(await client.execute("whoami", {}, timeout=5)).output for _ in range(6)]
    assert answers == ["a"] * 6
    assert len(a_calls) + len(b_calls) == 10  # every call ran exactly once
    retried = gw.metrics.registry.get_sample_value(
        "brainhands_gateway_retries_total", {"hand": "whoami", "reason": "not_sent"}
    )
    assert retried and retried >= 1


async def test_no_replica_is_unavailable_at_once_and_describe_drops_it(gateway, hand_service, hand_client):
    a_whoami, _ = replica("a")
    a = await hand_service([a_whoami])
    gw = await gateway(routes=[{"backends": [a.address]}], health_check_interval="100ms")
    client = hand_client(gw.address)
    assert (await client.execute("whoami", {}, timeout=5)).output == "a"
    await a.server.stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await client.execute("whoami", {}, timeout=30)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    for _ in range(100):  # bounded poll: the health check takes it out of Describe
        if not await client.describe(timeout=5):
            break
        await asyncio.sleep(0.05)
    assert await client.describe(timeout=5) == []
    with pytest.raises(grpc.aio.AioRpcError) as still:
        await client.execute("whoami", {}, timeout=30)
    assert still.value.code() == grpc.StatusCode.UNAVAILABLE  # known hand, no replica: not NOT_FOUND


async def test_an_oversized_request_is_refused_at_the_front(gateway, hand_service, hand_client):
    a_whoami, calls = replica("a")
    a = await hand_service([a_whoami])
    gw = await gateway(routes=[{"backends": [a.address]}], max_message_bytes=64 * 1024)
    with pytest.raises(grpc.aio.AioRpcError) as big:
        await hand_client(gw.address).execute("whoami", "x" * (128 * 1024), timeout=5)
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert calls == []
