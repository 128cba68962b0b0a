"""The hand fleet as an MCP server: streamable HTTP next to the gateway, each call going through its gRPC front.

An MCP client authenticates with its tenant key (`Authorization: Bearer <key>`), lists as
tools exactly the hands its tenant may use, and calls them. The front holds no policy of its
own: it forwards the caller's key to the gateway's own HandService on loopback, so
authentication, authorization, quotas, metrics and the per-call log line are the gateway's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import json
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import mcp_types as types
import structlog
import uvicorn
from mcp.server import Server
from mcp.shared.exceptions import MCPError

from gateway.auth import RETRY_AFTER_MS
from gateway.config import GatewayConfig, split_address
from gateway.tenants import Tenants, bearer_token
from hands import metadata as md
from hands.serving import KEEPALIVE_OPTIONS
from hands.v1 import hands_pb2, hands_pb2_grpc

log = structlog.get_logger("gateway.mcp")

PATH = "/mcp"
_WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
#: Statuses that mean the call itself is wrong (MCP protocol errors); every other failure is a tool result with
#: isError, which the model sees and can act on.
_PROTOCOL_ERRORS = {
    grpc.StatusCode.NOT_FOUND: types.INVALID_PARAMS,
    grpc.StatusCode.INVALID_ARGUMENT: types.INVALID_PARAMS,
    grpc.StatusCode.PERMISSION_DENIED: types.INVALID_PARAMS,
    grpc.StatusCode.UNAUTHENTICATED: types.INVALID_REQUEST,
}


def _version() -> str:
    """The installed brainhands version, which MCP clients see in initialize's serverInfo."""
    try:
        return importlib.metadata.version("brainhands")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class _BearerAuth:
    """ASGI wrapper: a request without a tenant's key gets 401 before any MCP work is done."""

    def __init__(self, app, tenants: Tenants):
        self._app = app
        self._tenants = tenants

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self._app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        authorization = headers.get(md.AUTHORIZATION)
        tenant = self._tenants.authenticate(bearer_token(authorization))
        if tenant is None:
            why = "the API key is not valid" if authorization else "no API key"
            log.info("mcp request refused", code="UNAUTHENTICATED", path=scope.get("path", ""), reason=why)
            body = json.dumps({"error": "unauthorized", "error_description": f"{why}: send 'Authorization: Bearer <key>' with a key from the gateway's tenants"}).encode()
            await send({
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="brainhands", error="invalid_token"'),
                ],
            })  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return None
        return await self._app(scope, receive, send)


def _caller_metadata(request) -> tuple[tuple[str, str], ...]:
    """The caller's key, passed on as gRPC metadata so the gateway decides as it would for any caller."""
    headers: Mapping[str, str] = getattr(request, "headers", None) or {}
    key = bearer_token(headers.get(md.AUTHORIZATION))
    return ((md.AUTHORIZATION, f"Bearer {key}"),) if key else ()


def _tool(spec: hands_pb2.HandSpec) -> types.Tool:
    try:
        schema = json.loads(spec.input_schema_json or "{}")
    except ValueError:
        schema = {}
    if not isinstance(schema, dict) or schema.get("type") != "object":
        schema = {"type": "object"}
    return types.Tool(
        name=spec.name,
        description=spec.description,
        input_schema=schema,
        annotations=types.ToolAnnotations(idempotent_hint=spec.idempotent) if spec.idempotent else None,
    )


def _error_result(text: str, **meta: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True, _meta=meta or None)


class McpFront:
    """tools/list and tools/call over the gateway's own HandService, with the caller's key."""

    def __init__(self, gateway_target: str, *, max_message_bytes: int, call_timeout: float = 300.0):
        self._channel = grpc.aio.insecure_channel(
            gateway_target,
            options=[
                *KEEPALIVE_OPTIONS,
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
        )
        self._stub = hands_pb2_grpc.HandServiceStub(self._channel)
        self._call_timeout = call_timeout
        self.server = Server("brainhands-gateway", version=_version(), on_list_tools=self.list_tools, on_call_tool=self.call_tool)

    async def list_tools(self, ctx, params) -> types.ListToolsResult:
        try:
            reply = await self._stub.Describe(
                hands_pb2.DescribeRequest(), metadata=_caller_metadata(ctx.request), timeout=30.0
            )
        except grpc.aio.AioRpcError as exc:
            raise MCPError(code=types.INTERNAL_ERROR, message=f"the gateway did not list its hands: {exc.code().name}: {exc.details()}") from None
        return types.ListToolsResult(tools=[_tool(spec) for spec in reply.hands])

    async def call_tool(self, ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        request = hands_pb2.ExecuteRequest(
            name=params.name, input=json.dumps(params.arguments or {}), call_id=f"mcp-{uuid.uuid4().hex}"
        )
        metadata = (*_caller_metadata(ctx.request), (md.CALL_ID, request.call_id))
        try:
            reply = await self._stub.Execute(request, metadata=metadata, timeout=self._call_timeout)
        except grpc.aio.AioRpcError as exc:
            return self._refused(params.name, exc)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=reply.output)], is_error=reply.is_error
        )

    @staticmethod
    def _refused(name: str, exc: grpc.aio.AioRpcError) -> types.CallToolResult:
        code = exc.code()
        if code in _PROTOCOL_ERRORS:
            raise MCPError(code=_PROTOCOL_ERRORS[code], message=f"{code.name}: {exc.details()}")
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            trailing = dict(exc.trailing_metadata() or ())
            retry_ms = int(trailing.get(RETRY_AFTER_MS, "0") or 0)
            # The gateway's message already says which limit and when; retryAfterMs is there for programs.
            return _error_result(f"{exc.details()}", retryAfterMs=retry_ms)
        return _error_result(f"{name} failed at the gateway ({code.name}): {exc.details()}")

    async def close(self) -> None:
        await self._channel.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn in the gateway's loop: SIGTERM belongs to the gateway, which drains this server itself."""

    def capture_signals(self):
        return contextlib.nullcontext()


@dataclass
class RunningMcpFront:
    """The MCP front's HTTP server, running in the gateway's loop."""

    front: McpFront
    server: _Uvicorn
    task: asyncio.Task
    host: str
    port: int

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"http://{host}:{self.port}{PATH}"

    async def close(self) -> None:
        """Finish in-flight MCP requests (they still need the gRPC front), then stop."""
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 30.0)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await self.front.close()


async def start_mcp_front(config: GatewayConfig, gateway_port: int, tenants: Tenants) -> RunningMcpFront:
    """Serve MCP over streamable HTTP on config.mcp, forwarding to the gateway's gRPC front on gateway_port."""
    assert config.mcp is not None
    host, port = split_address(config.mcp)
    listen_host = config.listen_host
    target_host = "127.0.0.1" if listen_host in _WILDCARD_HOSTS else listen_host
    front = McpFront(f"{target_host}:{gateway_port}", max_message_bytes=config.max_message_bytes)
    app = front.server.streamable_http_app(
        streamable_http_path=PATH, stateless_http=True, json_response=True, host=host
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        await front.close()
        raise OSError(f"could not listen on {config.mcp} for MCP: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    server = _Uvicorn(uvicorn.Config(_BearerAuth(app, tenants), log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="mcp front")
    while not server.started:  # bounded: serve() either starts or ends
        if task.done():
            await front.close()
            task.result()
            raise OSError(f"the MCP front on {config.mcp} did not start")
        await asyncio.sleep(0.01)
    running = RunningMcpFront(front=front, server=server, task=task, host=host, port=bound)
    log.info("mcp front serving", address=f"{host}:{bound}", url=running.url)
    return running
