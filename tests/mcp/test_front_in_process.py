"""The gateway's MCP front started and stopped with the gateway itself (start_gateway, drain), in-process."""

from __future__ import annotations

import importlib.metadata
import socket

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.config import parse_config
from gateway.server import start_gateway
from gateway.tenants import hash_key
from hands import hand

KEY = "front-in-process-key-0123"


@hand(description="Echo the text back.")
async def echo(text: str = "") -> str:
    return text


def _refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_start_gateway_serves_mcp_when_configured_and_drain_stops_it(hand_service):
    backend = await hand_service([echo])
    gateway = await start_gateway(parse_config({
        "listen": "127.0.0.1:0",
        "metrics": None,
        "mcp": "127.0.0.1:0",
        "routes": [{"hands": ["*"], "backends": [backend.address]}],
        "tenants": [{"name": "acme", "api_keys": [hash_key(KEY)], "allow": ["*"]}],
    }))  # fmt: skip
    try:
        assert gateway.mcp is not None
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEY}"})
        async with Client(streamable_http_client(gateway.mcp.url, http_client=http), cache=None) as client:
            assert client.server_info.name == "brainhands-gateway"
            assert client.server_info.version == importlib.metadata.version("brainhands")  # not empty
            assert [t.name for t in (await client.list_tools()).tools] == ["echo"]
            result = await client.call_tool("echo", {"text": "through the front"})
            assert not result.is_error and result.content[0].text == "through the front"
        port = gateway.mcp.port
    finally:
        await gateway.drain(1.0)
    assert gateway.mcp is None
    assert _refuses_connections(port)  # the front stopped with the gateway, no CLI involved


async def test_no_mcp_front_without_mcp_in_the_config(hand_service):
    backend = await hand_service([echo])
    gateway = await start_gateway(parse_config({
        "listen": "127.0.0.1:0", "metrics": None, "routes": [{"hands": ["*"], "backends": [backend.address]}],
    }))  # fmt: skip
    try:
        assert gateway.mcp is None
    finally:
        await gateway.drain(0)
