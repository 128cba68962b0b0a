"""A bridge to one MCP server: keeps a connection up (stdio or streamable HTTP), and serves each tool as a hand."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
import structlog
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from hands._hand import Hand, HandError, HandResult, hand
from hands.mcp.content import output_text
from hands.mcp.names import PREFIX_RE, hand_names

log = structlog.get_logger("hands.mcp")

_URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_LIST_PAGES = 100  # a server whose tools/list never stops paging cannot hang the bridge


class McpConfigError(ValueError):
    """A bad bridge setting; the message names it."""


class McpUnavailable(Exception):
    """The MCP server could not be reached at start-up."""


@dataclass(frozen=True)
class McpBridgeConfig:
    """One MCP server and how to reach it: a command to run (stdio) or a URL (streamable HTTP)."""

    name: str  # hand names are NAME_ + tool name
    command: tuple[str, ...] = ()
    url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)  # stdio: set on top of the SDK's safe minimal environment
    cwd: str | None = None  # stdio: working directory of the server
    headers: Mapping[str, str] = field(default_factory=dict)  # HTTP: sent with every request (e.g. Authorization)
    connect_timeout: float = 30.0  # seconds to wait for a connection, at start and per call while reconnecting
    backoff_base: float = 0.5  # seconds before reconnecting; doubles on every failed attempt
    backoff_max: float = 30.0

    def __post_init__(self):
        if not PREFIX_RE.match(self.name):
            raise McpConfigError(f"--name: must match {PREFIX_RE.pattern} (it prefixes every hand name), got {self.name!r}")
        if bool(self.command) == bool(self.url):
            raise McpConfigError("give either a command after -- (stdio) or --url (streamable HTTP), not both or neither")
        if self.url is not None and not _URL.match(self.url):
            raise McpConfigError(f"--url: must be an http:// or https:// URL, got {self.url!r}")
        for key in ("connect_timeout", "backoff_base", "backoff_max"):
            if not getattr(self, key) > 0:
                raise McpConfigError(f"{key}: must be more than zero, got {getattr(self, key)!r}")
        if self.backoff_max < self.backoff_base:
            raise McpConfigError("backoff_max: must be at least backoff_base")

    @property
    def target(self) -> str:
        """The server in words, for logs and errors."""
        return self.url or " ".join(self.command)


class _WatchedReceive:
    """The transport's receive stream, telling the bridge when it ends: the server died or hung up.

    Without this a server that dies between calls would be noticed only by the next call failing.
    """

    def __init__(self, inner, on_end):
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self):  # the SDK reads the sender's context off HTTP streams
        return getattr(self._inner, "last_context", None)

    async def receive(self):
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._on_end()
            raise

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc_info):
        await self.aclose()
        return None


class McpBridge:
    """Keeps one MCP connection up in a background task; a call that loses it gets is_error, the next reconnects."""

    def __init__(self, config: McpBridgeConfig):
        self.config = config
        self.tools: list[types.Tool] = []  # as listed by the first connection; the hands are built from these
        self.connects = 0  # connections made so far
        self.last_error = ""
        self._client: Client | None = None
        self._ready = asyncio.Event()  # set while connected
        self._drop = asyncio.Event()  # set to end the current connection
        self._closing = False
        self._generation = 0  # which connection attempt is current; a stale one cannot drop a newer connection
        self._task: asyncio.Task | None = None

    # -- connection -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and list the tools, waiting up to connect_timeout; McpUnavailable says why not."""
        self._task = asyncio.create_task(self._supervise(), name=f"mcp bridge {self.config.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.config.connect_timeout)
        except TimeoutError:
            await self.close()
            raise McpUnavailable(
                f"cannot connect to the MCP server {self.config.target} within {self.config.connect_timeout:g}s: "
                f"{self.last_error or 'no answer'}"
            ) from None

    async def close(self) -> None:
        """End the connection (a stdio server is stopped) and stop reconnecting."""
        self._closing = True
        self._drop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:  # the supervisor's own failure: closing goes on, but it is not hidden
                log.warning("mcp bridge supervisor failed while closing", server=self.config.target, exc_info=True)

    @contextlib.asynccontextmanager
    async def _transport(self, generation: int) -> AsyncIterator[tuple[Any, Any]]:
        def ended() -> None:
            self._lost(generation)

        if self.config.url:
            async with create_mcp_http_client(headers=dict(self.config.headers)) as http:
                async with streamable_http_client(self.config.url, http_client=http) as (read, write):
                    yield _WatchedReceive(read, ended), write
        else:
            command, *args = self.config.command
            params = StdioServerParameters(command=command, args=args, env=dict(self.config.env) or None, cwd=self.config.cwd)
            async with stdio_client(params) as (read, write):
                yield _WatchedReceive(read, ended), write

    async def _supervise(self) -> None:
        """Connect, hold the connection until it drops, wait the back-off, connect again; until close()."""
        delay = self.config.backoff_base
        while not self._closing:
            began = time.monotonic()
            self._generation += 1
            was_connected = False
            try:
                async with Client(self._transport(self._generation), cache=None, client_info=_CLIENT_INFO) as client:
                    tools = await _list_tools(client)
                    self._connected(client, tools)
                    was_connected = True
                    await self._drop.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the SDK raises transport errors wrapped in exception groups
                self.last_error = _reason(exc)
                if not self._closing and not was_connected:
                    log.warning("MCP connection failed", server=self.config.target, error=self.last_error, retry_in_s=delay)
            finally:
                self._client = None
                self._ready.clear()
            self._drop.clear()
            if self._closing:
                return
            if was_connected:
                if time.monotonic() - began > self.config.backoff_max:
                    delay = self.config.backoff_base  # it was up a good while: a fresh failure, not a crash loop
                log.warning("MCP server went away; reconnecting", server=self.config.target, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.backoff_max)

    def _connected(self, client: Client, tools: list[types.Tool]) -> None:
        self.connects += 1
        if self.connects == 1:
            self.tools = tools
        elif sorted(t.name for t in tools) != sorted(t.name for t in self.tools):
            log.warning(
                "the MCP server's tools changed; restart the bridge to serve the new set",
                server=self.config.target, tools=sorted(t.name for t in tools),
            )  # fmt: skip
        self._client = client
        self._ready.set()
        log.info("MCP server connected", server=self.config.target, tools=len(tools), connection=self.connects)

    async def _connection(self) -> tuple[Client, int]:
        if self._client is None:
            try:
                await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.config.connect_timeout)
            except TimeoutError:
                raise HandError(
                    f"the MCP server {self.config.name} is not reachable ({self.last_error or 'reconnecting'}); "
                    "the bridge keeps reconnecting, try again later"
                ) from None
        assert self._client is not None
        return self._client, self._generation

    def _lost(self, generation: int) -> None:
        """The connection of that generation is gone: no call may use it, and the supervisor reconnects."""
        if generation == self._generation and not self._closing:
            self._client = None
            self._ready.clear()
            self._drop.set()

    # -- calls --------------------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> HandResult:
        """tools/call: text content joined into the output, isError as is_error."""
        client, generation = await self._connection()
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._lost(generation)
                raise HandError(
                    f"the MCP server {self.config.name} died during the call ({exc}); "
                    "the bridge reconnects for the next call"
                ) from None
            raise HandError(f"the MCP server {self.config.name} refused the call to {tool}: {exc}") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._lost(generation)
            raise HandError(
                f"the connection to the MCP server {self.config.name} failed during the call ({_reason(exc)}); "
                "the bridge reconnects for the next call"
            ) from None
        return HandResult(output_text(result), is_error=bool(result.is_error))

    def hands(self) -> list[Hand]:
        """One hand per tool the server listed, named NAME_ + tool name."""
        names = hand_names(self.config.name, [t.name for t in self.tools])
        return [self._hand(tool, names[tool.name]) for tool in sorted(self.tools, key=lambda t: names[t.name])]

    def _hand(self, tool: types.Tool, name: str) -> Hand:
        bridge = self
        tool_name = tool.name

        async def call(**arguments: Any) -> HandResult:
            return await bridge.call(tool_name, arguments)

        notes = tool.annotations
        idempotent = bool(notes and (notes.idempotent_hint or notes.read_only_hint))
        description = tool.description or tool.title or f"The {tool.name!r} tool of the MCP server {self.config.name}."
        schema = dict(tool.input_schema or {})
        schema.setdefault("type", "object")
        try:
            return hand(call, name=name, description=description, input_schema=schema, idempotent=idempotent)
        except ValueError as exc:  # a schema we cannot check inputs against: let the server check them
            log.warning("MCP tool schema not usable; inputs go unchecked", tool=tool.name, error=str(exc))
            return hand(call, name=name, description=description, input_schema={"type": "object"}, idempotent=idempotent)


_CLIENT_INFO = types.Implementation(name="brainhands-mcp-bridge", version="0.1.0")


async def _list_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor = None
    for _ in range(_LIST_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            break
    return tools


def _reason(exc: BaseException) -> str:
    """The innermost useful message of an exception (group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]
