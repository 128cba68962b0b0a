"""A small MCP server written with the mcp SDK, for the bridge's tests: stdio by default, --http PORT for streamable HTTP."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import socket
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent, TextContent, ToolAnnotations

server = MCPServer("brainhands-test-tools")
LEDGER = os.environ.get("MCP_TEST_LEDGER")  # a file each call appends "tool pid" to, so tests can see calls arrive


def _note(tool: str) -> None:
    if LEDGER:
        with open(LEDGER, "a") as f:
            f.write(f"{tool} {os.getpid()}\n")


@server.tool(description="Echo the text back, prefixed with the server's process id.", annotations=ToolAnnotations(read_only_hint=True))
async def echo(text: str) -> str:
    _note("echo")
    return f"echo from {os.getpid()}: {text}"


@server.tool(description="Add two integers.", annotations=ToolAnnotations(idempotent_hint=True))
async def add(a: int, b: int) -> str:
    _note("add")
    return str(a + b)


@server.tool(description="Always fails with the reason given.")
async def fail(reason: str) -> str:
    _note("fail")
    raise ToolError(f"failed on purpose: {reason}")


@server.tool(description="Return a caption and a small PNG image.")
async def picture() -> list:
    _note("picture")
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * (12 * 1024)
    return [TextContent(type="text", text="a caption"), ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png")]


@server.tool(description="Wait the given number of seconds, then answer.")
async def slow(seconds: float) -> str:
    _note("slow")
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(name="Get Weather.Now", description="A tool whose name does not fit a hand name as it is.")
async def weather_spaced(city: str) -> str:
    return f"sunny in {city} (spaced)"


@server.tool(name="get_weather_now", description="A tool whose name collides with the one above once made to fit.")
async def weather_plain(city: str) -> str:
    return f"sunny in {city} (plain)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP on a free port, printed to stdout")
    args = parser.parse_args()
    if not args.http:
        server.run("stdio")
        return
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    print(f"listening http://127.0.0.1:{port}/mcp", flush=True)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    sys.exit(main())
