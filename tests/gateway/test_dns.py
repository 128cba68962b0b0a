"""DNS routes in-process: the real resolver by default, IP literals as written, a failed lookup keeps the fleet."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from gateway import dns
from gateway.config import parse_config
from gateway.server import start_gateway
from hands import HandClient, hand


@hand(description="Say hello.", idempotent=True)
async def hello() -> str:
    return "hello"


@pytest.fixture
async def gateway():
    started = []

    async def _start(backend: str, hands=("*",), **kwargs):
        raw = {"listen": "127.0.0.1:0", "metrics": None, "health_check_interval": "60s", "startup_grace": 0}
        config = parse_config(
            {**raw, "dns_refresh": "100ms", "routes": [{"hands": list(hands), "backends": [backend]}]}
        )
        gw = await start_gateway(config, **kwargs)
        started.append(gw)
        return gw

    yield _start
    for gw in started:
        with contextlib.suppress(Exception):
            await gw.server.stop(0)
            await gw.close()


async def test_a_name_is_resolved_with_the_real_resolver_by_default(gateway, hand_service):
    running = await hand_service([hello], host="127.0.0.1")
    gw = await gateway(f"localhost:{running.port}")
    assert gw.dns.resolver is dns.resolve  # the event loop's getaddrinfo
    # localhost became its addresses; the one the hand listens on serves it.
    assert f"127.0.0.1:{running.port}" in gw.table.backends
    assert f"localhost:{running.port}" not in gw.table.backends
    async with HandClient(f"127.0.0.1:{gw.port}") as client:
        assert (await client.execute("hello", {}, timeout=5)).output == "hello"


async def test_the_real_resolver_returns_each_address_once():
    assert await dns.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(OSError):
        await dns.resolve("no-such-host.invalid", 80)


async def test_an_ip_literal_is_never_resolved(gateway, hand_service):
    running = await hand_service([hello], host="127.0.0.1")
    lookups = []

    async def resolver(name, port):
        lookups.append(name)
        return ["127.0.0.9"]

    gw = await gateway(running.address, resolver=resolver)
    await asyncio.sleep(0.3)  # three refresh periods
    assert lookups == []
    assert list(gw.table.backends) == [running.address]


async def test_a_failed_lookup_keeps_the_addresses_it_had(gateway, hand_service):
    running = await hand_service([hello], host="127.0.0.1")
    answers = [["127.0.0.1"]]
    failures = []

    async def resolver(name, port):
        if not answers:
            failures.append(name)
            raise OSError("Temporary failure in name resolution")
        return answers.pop()

    gw = await gateway(f"hands.invalid:{running.port}", resolver=resolver)
    assert list(gw.table.backends) == [f"127.0.0.1:{running.port}"]
    async with asyncio.timeout(10):
        while len(failures) < 3:  # every later lookup fails
            await asyncio.sleep(0.05)
    async with HandClient(f"127.0.0.1:{gw.port}") as client:
        assert (await client.execute("hello", {}, timeout=5)).output == "hello"
    assert list(gw.table.backends) == [f"127.0.0.1:{running.port}"]


async def test_a_name_with_no_address_yet_is_unavailable_then_serves_once_it_resolves(gateway, hand_service):
    running = await hand_service([hello], host="127.0.0.1")
    answer: list[str] = []

    async def resolver(name, port):
        if not answer:
            raise OSError("Name or service not known")
        return answer

    gw = await gateway(f"hands.invalid:{running.port}", hands=["hel*"], resolver=resolver)
    async with HandClient(f"127.0.0.1:{gw.port}") as client:
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await client.execute("hello", {}, timeout=5)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE  # a hand its route names: down, not unknown
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await client.execute("other", {}, timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        answer.append("127.0.0.1")
        async with asyncio.timeout(10):
            while "hello" not in gw.table.routes:
                await asyncio.sleep(0.05)
        assert (await client.execute("hello", {}, timeout=5)).output == "hello"
