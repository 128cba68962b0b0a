"""MCP both ways with real processes: MCP servers served as hands through a gateway and called by the brain,
and the gateway's MCP front used by an MCP client with a tenant key."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from brain import Brain, BrainConfig, ScriptedModel, open_store
from gateway.tenants import hash_key
from hands import HandClient
from tests.mcp.conftest import SERVER
from tests.system.gateway_stack import Stack

pytestmark = pytest.mark.system

ACME_KEY = "acme-key-0123456789"
WEB_ONLY_KEY = "web-only-key-0123456789"


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


async def _gateway(stack: Stack):
    return await stack.gateway(
        mcp="127.0.0.1:0",
        tenants=[
            {"name": "acme", "api_keys": [hash_key(ACME_KEY)], "allow": ["docs_*", "web_*"],
             "quotas": [{"hands": "docs_add", "calls": "3/day"}]},
            {"name": "webonly", "api_keys": [hash_key(WEB_ONLY_KEY)], "allow": ["web_*"]},
        ],
    )  # fmt: skip


async def _mcp_url(stack: Stack, gateway) -> str:
    async def front():
        return next((r["url"] for r in gateway.records() if r.get("event") == "mcp front serving"), None)

    return await stack.wait_for(front, "the gateway's MCP front to start", timeout=30)


async def _bridge(stack: Stack, name: str, gateway, ledger, *server: str):
    argv = [sys.executable, "-m", "brainhands", "serve", "mcp", "--name", name, "--port", "0", "--register", gateway.address]
    if server[0] == "--url":
        argv += list(server)
    else:
        argv += ["--env", f"MCP_TEST_LEDGER={ledger}", "--", *server]
    proc = stack._spawn(f"mcp-{name}", argv, {})
    await proc.wait_ready("serving hands")
    return proc


async def _routed(stack: Stack, gateway, *hands: str) -> None:
    client = HandClient(gateway.address, api_key=ACME_KEY)

    async def all_there():
        return set(hands) <= {s.name for s in await client.describe(timeout=5)}

    try:
        await stack.wait_for(all_there, f"the gateway to route {hands}", timeout=30)
    finally:
        await client.close()


async def _wait_for_call(ledger, tool: str, timeout: float = 30.0) -> int:
    """The pid of the MCP server process once it has started `tool`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for line in ledger.read_text().splitlines():
            name, pid = line.split()
            if name == tool:
                return int(pid)
        await asyncio.sleep(0.02)
    raise AssertionError(f"the MCP server never started {tool}")


def _results(request) -> list[dict]:
    return [b for b in request["messages"][-1]["content"] if b["type"] == "tool_result"]


async def test_brain_calls_mcp_tools_through_the_gateway_and_survives_a_killed_server(
    stack, tmp_path, mcp_ledger, http_mcp_server
):
    gateway = await _gateway(stack)
    await _bridge(stack, "docs", gateway, mcp_ledger, sys.executable, SERVER)
    await _bridge(stack, "web", gateway, mcp_ledger, "--url", http_mcp_server)
    await _routed(stack, gateway, "docs_echo", "docs_slow", "web_add")
    model = ScriptedModel([
        {"tool_calls": [["docs_echo", {"text": "one"}], ["web_add", {"a": 2, "b": 3}]]},
        {"tool_calls": [["docs_slow", {"seconds": 60}]]},
        {"tool_calls": [["docs_echo", {"text": "two"}]]},
        {"text": "done"},
    ])  # fmt: skip
    store = await open_store(str(tmp_path / "sessions.db"))
    brain = Brain(target=gateway.address, api_key=ACME_KEY, model=model, store=store, config=BrainConfig(call_timeout=30))
    try:
        run = asyncio.create_task(brain.run("Use the MCP tools."))
        server_pid = await _wait_for_call(mcp_ledger, "slow")
        os.kill(server_pid, signal.SIGKILL)  # the stdio MCP server dies with the call in flight
        result = await asyncio.wait_for(run, 60)
    finally:
        await brain.close()
        await store.close()
    assert result.ok and result.text == "done"
    tools = {t["name"] for t in model.requests[0]["tools"]}
    assert {"docs_echo", "docs_slow", "web_add", "web_echo"} <= tools
    echo, add = _results(model.requests[1])
    assert echo["content"].startswith("echo from ") and echo["content"].endswith(": one") and not echo["is_error"]
    assert add == {**add, "content": "5", "is_error": False}
    [died] = _results(model.requests[2])
    assert died["is_error"] and "MCP server docs died during the call" in died["content"]
    [again] = _results(model.requests[3])
    assert not again["is_error"] and again["content"].endswith(": two")
    assert int(again["content"].split()[2].rstrip(":")) != server_pid  # a new server process answered


def _innermost(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _client(url: str, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Client(streamable_http_client(url, http_client=create_mcp_http_client(headers=headers)), cache=None)


async def test_mcp_client_lists_and_calls_the_tenants_hands_through_the_gateway(stack, mcp_ledger, http_mcp_server):
    gateway = await _gateway(stack)
    await _bridge(stack, "docs", gateway, mcp_ledger, sys.executable, SERVER)
    await _bridge(stack, "web", gateway, mcp_ledger, "--url", http_mcp_server)
    await _routed(stack, gateway, "docs_add", "web_add")
    url = await _mcp_url(stack, gateway)

    async with _client(url, ACME_KEY) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"docs_add", "docs_echo", "docs_fail", "web_add", "web_echo"} <= set(tools)
        assert tools["docs_add"].description == "Add two integers."
        assert tools["docs_add"].input_schema["required"] == ["a", "b"]
        added = await client.call_tool("docs_add", {"a": 20, "b": 22})
        assert not added.is_error and added.content[0].text == "42"
        failed = await client.call_tool("docs_fail", {"reason": "via mcp"})
        assert failed.is_error and "failed on purpose: via mcp" in failed.content[0].text
        for _ in range(2):  # the rest of acme's 3 docs_add calls a day (a day: no window boundary falls inside the test)
            assert not (await client.call_tool("docs_add", {"a": 1, "b": 1})).is_error
        over = await client.call_tool("docs_add", {"a": 1, "b": 1})
        assert over.is_error
        text = over.content[0].text
        assert "quota exceeded for tenant 'acme'" in text and "retry in" in text
        assert over.meta["retryAfterMs"] > 0
        # other hands are not under that quota
        assert (await client.call_tool("web_add", {"a": 1, "b": 1})).content[0].text == "2"

    async with _client(url, WEB_ONLY_KEY) as client:  # another tenant sees only what it may use
        names = {t.name for t in (await client.list_tools()).tools}
        assert names and all(n.startswith("web_") for n in names)
        with pytest.raises(Exception, match="PERMISSION_DENIED"):
            await client.call_tool("docs_add", {"a": 1, "b": 1})

    for key in (None, "not-a-key"):  # no key, or one no tenant has: refused before any MCP work
        async with httpx2.AsyncClient() as http:
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            reply = await http.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert reply.status_code == 401 and reply.headers["www-authenticate"].startswith("Bearer")
        assert "API key" in reply.json()["error_description"]
        with pytest.raises(Exception) as refused:  # the SDK client fails to connect with an MCPError
            async with _client(url, key) as client:
                await client.list_tools()
        assert isinstance(_innermost(refused.value), MCPError)

    # The gateway logged the front's calls like any other: same tenant, hand and code.
    calls = [r for r in gateway.records() if r.get("event") == "call" and r.get("hand") == "docs_add"]
    assert [(r["tenant"], r["code"]) for r in calls if r["code"] != "OK"] == [
        ("acme", "RESOURCE_EXHAUSTED"), ("webonly", "PERMISSION_DENIED"),
    ]  # fmt: skip
    assert [r["tenant"] for r in calls if r["code"] == "OK"] == ["acme"] * 3
