"""DNS routes and the start-up grace, with hand services (and a gateway) as real processes.

A route's backend given by name is one backend per address the name resolves to. /etc/hosts cannot
be edited here, so the gateway (in this process) gets a resolver whose answer the test changes; the
two hand services listen on the same port of two loopback addresses, 127.0.0.1 and 127.0.0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import grpc
import pytest

from gateway.config import parse_config
from gateway.server import start_gateway
from hands import HandClient
from tests.system.gateway_stack import FAST, Stack

pytestmark = pytest.mark.system

NAME = "hands.test.invalid"


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


def free_port(*hosts: str) -> int:
    """A port nothing listens on at any of hosts (a later bind may still race, as with any port 0)."""
    while True:
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        free = True
        for host in hosts[1:]:
            with socket.socket() as other:
                try:
                    other.bind((host, port))
                except OSError:
                    free = False
        if free:
            return port


async def test_a_route_by_name_spreads_over_every_address_and_follows_changes(stack):
    port = free_port("127.0.0.1", "127.0.0.2")
    a = await stack.hand("a", host="127.0.0.1", port=port)
    b = await stack.hand("b", host="127.0.0.2", port=port)
    assert (a.address, b.address) == (f"127.0.0.1:{port}", f"127.0.0.2:{port}")
    answer = ["127.0.0.1", "127.0.0.2"]
    lookups: list[tuple[str, int]] = []

    async def resolver(name: str, at: int) -> list[str]:
        lookups.append((name, at))
        return list(answer)

    config = parse_config({
        **FAST, "metrics": None, "dns_refresh": "200ms", "routes": [{"backends": [f"{NAME}:{port}"]}],
    })  # fmt: skip
    gw = await start_gateway(config, resolver=resolver)
    try:
        async with HandClient(f"127.0.0.1:{gw.port}") as client:

            async def whoami(n: int) -> set[str]:
                return {(await client.execute("whoami", {}, timeout=5)).output for _ in range(n)}

            assert lookups[0] == (NAME, port)
            assert await whoami(20) == {"a", "b"}
            assert set(gw.table.backends) == {a.address, b.address}

            # Calls in flight on both; then the name loses 127.0.0.2.
            slow = [asyncio.create_task(client.execute("slow", {"seconds": 4}, timeout=30)) for _ in range(4)]

            async def both_busy():
                return all(backend.in_flight for backend in gw.table.backends.values())

            await stack.wait_for(both_busy, "slow calls on both replicas")
            leaving = gw.table.backends[b.address]
            answer[:] = ["127.0.0.1"]

            async def dropped():
                return b.address not in gw.table.backends

            await stack.wait_for(dropped, "the removed address leaving the routes")
            assert leaving.in_flight  # it left while its calls were still running...
            assert await whoami(20) == {"a"}  # ...took no new calls...
            done = [result.output for result in await asyncio.gather(*slow)]
            assert sorted(done) == ["slept 4 on a"] * 2 + ["slept 4 on b"] * 2  # ...and its calls finished

            async def closed():
                return leaving.channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN

            await stack.wait_for(closed, "the removed address's channel closing")

            # The name gains it back: it serves again.
            answer[:] = ["127.0.0.2", "127.0.0.1"]

            async def back():
                return "b" in await whoami(6)

            await stack.wait_for(back, "the re-added address taking calls")
            assert await whoami(20) == {"a", "b"}
    finally:
        await gw.server.stop(0)
        await gw.close()


async def test_a_restarted_gateway_is_unavailable_not_not_found_during_its_start_up_grace(stack):
    port = free_port("127.0.0.1")
    listen = f"127.0.0.1:{port}"
    gw = await stack.gateway(listen=listen, startup_grace="5s")
    hand = await stack.hand("a", register=listen)

    async def registered():
        return hand.address in await stack.backends(gw)

    await stack.wait_for(registered, "registration")
    gw.kill(signal.SIGKILL)
    with contextlib.suppress(Exception):
        gw.proc.wait(10)
    gw = await stack.gateway(listen=listen, startup_grace="5s")

    async def code(name: str) -> grpc.StatusCode:
        async with HandClient(listen) as client:
            try:
                await client.execute(name, {}, timeout=5)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    # Right after the restart nobody has registered: a name it does not know yet may be on its way.
    assert await code("never_registered") is grpc.StatusCode.UNAVAILABLE
    seen = []

    async def whoami_back():
        seen.append(await code("whoami"))
        return seen[-1] is grpc.StatusCode.OK

    await stack.wait_for(whoami_back, "the hand re-registering with the restarted gateway")
    assert grpc.StatusCode.NOT_FOUND not in seen  # the brain never hears "no such hand"

    async def grace_over():
        return await code("never_registered") is grpc.StatusCode.NOT_FOUND

    await stack.wait_for(grace_over, "the end of the start-up grace", timeout=20)
    assert await code("whoami") is grpc.StatusCode.OK
