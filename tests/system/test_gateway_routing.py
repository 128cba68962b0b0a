"""The gateway and hand services as separate processes: routing, registration, leases, health, metrics."""

from __future__ import annotations

import asyncio
import re
import signal

import grpc
import pytest
from google.protobuf import duration_pb2

from gateway.v1 import gateway_pb2
from hands import HandClient
from tests.system.gateway_stack import Stack

pytestmark = pytest.mark.system


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


async def _curl_metrics(address: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "5", f"http://{address}/metrics", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return out.decode()


def _count(metrics: str, hand: str, code: str) -> float:
    pattern = rf'^brainhands_gateway_calls_total{{code="{code}",hand="{hand}",tenant="anonymous"}} (\S+)$'
    match = re.search(pattern, metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_routes_each_hand_to_the_service_that_has_it_and_counts_calls_in_metrics(stack):
    work = await stack.hand("work")
    text = await stack.hand("text", "tests.system.gateway_hands:TEXT")
    gw = await stack.gateway(routes=[{"hands": ["*"], "backends": [work.address]}, {"backends": [text.address]}])
    before = await _curl_metrics(gw.metrics)
    async with HandClient(gw.address) as client:
        names = {spec.name for spec in await client.describe(timeout=5)}
        assert {"whoami", "tally", "append_once", "reverse"} <= names
        assert (await client.execute("reverse", {"text": "gateway"}, timeout=5)).output == "yawetag"
        for _ in range(3):
            assert (await client.execute("whoami", {}, timeout=5)).output == "work"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.execute("no_such_hand", {}, timeout=5)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "reverse" in missing.value.details()  # says what the gateway does know
    after = await _curl_metrics(gw.metrics)
    assert _count(after, "whoami", "OK") - _count(before, "whoami", "OK") == 3
    assert _count(after, "reverse", "OK") - _count(before, "reverse", "OK") == 1
    assert _count(after, "unknown", "NOT_FOUND") - _count(before, "unknown", "NOT_FOUND") == 1
    assert f'brainhands_gateway_backend_healthy{{backend="{text.address}"}} 1.0' in after
    # One structured line per call, with the backend that served it.
    served = [r for r in gw.records() if r.get("event") == "call" and r.get("hand") == "reverse"]
    assert served and served[0]["backend"] == text.address and served[0]["code"] == "OK" and served[0]["call_id"]


async def test_a_replica_that_registers_at_run_time_gets_traffic_and_leaves_on_drain(stack):
    a = await stack.hand("a")
    b = await stack.hand("b")
    gw = await stack.gateway(routes=[{"backends": [a.address, b.address]}])
    c = await stack.hand("c", register=gw.address)

    async def registered():
        return c.address in await stack.backends(gw)

    await stack.wait_for(registered, "registration of the third replica")
    async with HandClient(gw.address) as client:
        seen = [(await client.execute("whoami", {}, timeout=5)).output for _ in range(30)]
        assert set(seen) == {"a", "b", "c"}

        c.kill(signal.SIGTERM)  # drain: deregister, then stop

        async def deregistered():
            return c.address not in await stack.backends(gw)

        await stack.wait_for(deregistered, "deregistration on drain")
        seen = [(await client.execute("whoami", {}, timeout=5)).output for _ in range(10)]
        assert set(seen) == {"a", "b"}


async def test_a_backend_whose_lease_expires_is_removed(stack):
    text = await stack.hand("text", "tests.system.gateway_hands:TEXT")
    gw = await stack.gateway()
    registry = stack.registry(gw)
    reply = await registry.Register(
        gateway_pb2.RegisterRequest(address=text.address, lease_ttl=duration_pb2.Duration(seconds=1)), timeout=5
    )
    assert list(reply.hands) == ["reverse"] and reply.lease_ttl.seconds == 1
    async with HandClient(gw.address) as client:
        assert (await client.execute("reverse", {"text": "ab"}, timeout=5)).output == "ba"

        async def gone():
            return text.address not in await stack.backends(gw)

        await stack.wait_for(gone, "lease expiry")  # no heartbeats were sent
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await client.execute("reverse", {"text": "ab"}, timeout=5)
        assert after.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await registry.Heartbeat(gateway_pb2.HeartbeatRequest(lease_id=reply.lease_id), timeout=5)
    assert late.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_not_serving_backend_gets_no_traffic_until_it_serves_again(stack):
    one = await stack.flip_backend("one")
    two = await stack.flip_backend("two")
    gw = await stack.gateway(routes=[{"hands": ["whoami"], "backends": [one.address, two.address]}])

    async def state_of(address, state):
        async def check():
            return (await stack.backends(gw))[address].state == state

        return check

    async with HandClient(gw.address) as client, HandClient(one.address) as direct:
        assert {(await client.execute("whoami", {}, timeout=5)).output for _ in range(10)} == {"one", "two"}
        await direct.execute("set_serving", {"serving": False}, timeout=5)
        await stack.wait_for(await state_of(one.address, gateway_pb2.BACKEND_STATE_NOT_SERVING), "NOT_SERVING seen")
        assert {(await client.execute("whoami", {}, timeout=5)).output for _ in range(20)} == {"two"}
        await direct.execute("set_serving", {"serving": True}, timeout=5)
        await stack.wait_for(await state_of(one.address, gateway_pb2.BACKEND_STATE_SERVING), "SERVING seen again")
        assert "one" in {(await client.execute("whoami", {}, timeout=5)).output for _ in range(10)}


async def test_no_healthy_replica_is_unavailable_within_the_deadline_never_a_hang(stack):
    only = await stack.hand("only")
    gw = await stack.gateway(routes=[{"backends": [only.address]}, {"hands": ["ghost_*"], "backends": ["127.0.0.1:9"]}])
    async with HandClient(gw.address) as client:
        assert (await client.execute("whoami", {}, timeout=5)).output == "only"
        with pytest.raises(grpc.aio.AioRpcError) as ghost:  # a static route whose backend never came up
            await asyncio.wait_for(client.execute("ghost_read", {}, timeout=5), 10)
        assert ghost.value.code() == grpc.StatusCode.UNAVAILABLE
        only.kill()
        only.proc.wait(5)
        for _ in range(5):  # right after the kill, and once the health check has noticed
            with pytest.raises(grpc.aio.AioRpcError) as dead:
                await asyncio.wait_for(client.execute("whoami", {}, timeout=5), 10)
            assert dead.value.code() == grpc.StatusCode.UNAVAILABLE
            await asyncio.sleep(0.1)


async def test_a_bad_config_file_is_one_clear_line_and_exit_status_2(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("routes:\n  - {hands: [fs_*], backends: [nowhere]}\n")
    proc = await asyncio.create_subprocess_exec(
        "brainhands", "serve", "gateway", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().strip() == (
        f"brainhands: {path}: routes[0].backends: must be a list of host:port, got ['nowhere']"
    )
