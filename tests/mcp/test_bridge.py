"""The MCP bridge in-process against the test MCP server (a real process, stdio and streamable HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import pytest

from hands import HandClient, start
from hands.mcp import McpBridge, McpBridgeConfig, McpConfigError, McpUnavailable
from tests.mcp.conftest import stdio_command


async def _serve(config: McpBridgeConfig):
    bridge = McpBridge(config)
    await bridge.start()
    running = await start(bridge.hands(), port=0)
    client = HandClient(running.address)
    return bridge, running, client


@pytest.fixture
async def stdio_bridge(mcp_ledger):
    bridge, running, client = await _serve(
        McpBridgeConfig(name="test", command=tuple(stdio_command()), env={"MCP_TEST_LEDGER": str(mcp_ledger)},
                        backoff_base=0.1, backoff_max=0.5)
    )  # fmt: skip
    yield bridge, client
    await client.close()
    await running.server.stop(0)
    await bridge.close()


@pytest.fixture
async def http_bridge(http_mcp_server):
    bridge, running, client = await _serve(McpBridgeConfig(name="web", url=http_mcp_server, backoff_base=0.1))
    yield bridge, client
    await client.close()
    await running.server.stop(0)
    await bridge.close()


def _pid(output: str) -> int:
    return int(output.split()[2].rstrip(":"))  # "echo from PID: text"


async def _wait_for_line(path, word: str, timeout: float = 10.0) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for line in path.read_text().splitlines():
            if line.startswith(word + " "):
                return line
        await asyncio.sleep(0.02)
    raise AssertionError(f"the MCP server never started {word}")


async def test_describe_comes_from_tools_list(stdio_bridge):
    _, client = stdio_bridge
    specs = {s.name: s for s in await client.describe()}
    assert sorted(specs) == [
        "test_add", "test_echo", "test_fail", "test_get_weather_now", "test_get_weather_now_f7647efa",
        "test_picture", "test_slow",
    ]  # fmt: skip
    assert specs["test_add"].description == "Add two integers."
    schema = json.loads(specs["test_add"].input_schema_json)
    assert schema["required"] == ["a", "b"] and schema["properties"]["a"]["type"] == "integer"
    # readOnlyHint and idempotentHint make a hand idempotent; no hint, not idempotent
    assert specs["test_echo"].idempotent and specs["test_add"].idempotent and not specs["test_slow"].idempotent
    # the tool whose name already fitted keeps it; the one that had to change gets a hash suffix
    assert "collides" in specs["test_get_weather_now"].description
    assert "does not fit" in specs["test_get_weather_now_f7647efa"].description


async def test_execute_calls_the_tool_and_maps_content_and_errors(stdio_bridge):
    _, client = stdio_bridge
    assert (await client.execute("test_add", {"a": 2, "b": 40})).output == "42"
    weather = await client.execute("test_get_weather_now_f7647efa", {"city": "Oslo"})
    assert weather.output == "sunny in Oslo (spaced)" and not weather.is_error
    failed = await client.execute("test_fail", {"reason": "no disk"})
    assert failed.is_error and "failed on purpose: no disk" in failed.output
    picture = await client.execute("test_picture", {})
    assert picture.output == "a caption\n[image/png, 12 KB]" and not picture.is_error
    bad = await client.execute("test_add", {"a": 1})
    assert bad.is_error and "'b' is a required property" in bad.output


async def test_server_killed_mid_call_gives_is_error_then_the_bridge_reconnects(stdio_bridge, mcp_ledger):
    bridge, client = stdio_bridge
    first_pid = _pid((await client.execute("test_echo", {"text": "hi"})).output)
    in_flight = asyncio.create_task(client.execute("test_slow", {"seconds": 30}))
    await _wait_for_line(mcp_ledger, "slow")
    os.kill(first_pid, signal.SIGKILL)
    died = await asyncio.wait_for(in_flight, 10)
    assert died.is_error and "MCP server test died during the call" in died.output
    after = await client.execute("test_echo", {"text": "again"}, timeout=20)
    assert not after.is_error, after.output
    assert _pid(after.output) != first_pid and after.output.endswith(": again")
    assert bridge.connects == 2


async def test_server_killed_between_calls_is_replaced_before_the_next_call(stdio_bridge):
    bridge, client = stdio_bridge
    first_pid = _pid((await client.execute("test_echo", {"text": "hi"})).output)
    os.kill(first_pid, signal.SIGKILL)
    # No call is made: the bridge sees the server's output end and starts a new one by itself.
    deadline = asyncio.get_running_loop().time() + 10
    while bridge.connects < 2 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert bridge.connects == 2
    after = await client.execute("test_echo", {"text": "next"}, timeout=20)
    assert not after.is_error, after.output
    assert _pid(after.output) != first_pid


async def test_streamable_http_server_is_served_the_same_way(http_bridge):
    _, client = http_bridge
    names = [s.name for s in await client.describe()]
    assert "web_add" in names and "web_echo" in names
    assert (await client.execute("web_add", {"a": 1, "b": 2})).output == "3"
    failed = await client.execute("web_fail", {"reason": "http"})
    assert failed.is_error and "failed on purpose: http" in failed.output


async def test_no_server_at_start_is_one_clear_error():
    bridge = McpBridge(McpBridgeConfig(name="gone", url="http://127.0.0.1:9/mcp", connect_timeout=1.0, backoff_base=0.1))
    with pytest.raises(McpUnavailable, match=r"cannot connect to the MCP server http://127.0.0.1:9/mcp within 1s"):
        await bridge.start()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad", "command": ("x",)}, "--name"),
        ({"name": "ok"}, "either a command"),
        ({"name": "ok", "command": ("x",), "url": "http://h/mcp"}, "not both"),
        ({"name": "ok", "url": "ftp://h"}, "--url"),
    ],
)
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(McpConfigError, match=message):
        McpBridgeConfig(**kwargs)
