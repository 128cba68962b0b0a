"""The one serve() shape every brainhands service uses: grpc.aio, health, reflection, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hands import metadata as md
from hands import tracing

log = structlog.get_logger("hands.serving")

#: Keepalive settings shared by servers and clients: ping idle connections so dead peers are found.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
]


def set_not_dumpable() -> bool:
    """Mark this process non-dumpable (Linux prctl PR_SET_DUMPABLE 0): no core dumps, and no other process of
    the same user (sandboxed code included) may read its /proc/PID/environ, memory or file descriptors.

    Every service does this as it starts: their environments hold keys. True when it took effect.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (OSError, AttributeError):  # not Linux: nothing to do
        return False


def _port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (a bind as gRPC's, SO_REUSEADDR, would fail)."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM)[0]
    except OSError:
        return False  # gRPC will say what is wrong with the address
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(sockaddr)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _serve_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    """Server reflection as v1alpha and v1 (grpcurl and buf try v1 first).

    grpcio-reflection ships only v1alpha; v1 is the same protocol renamed (identical messages, field for
    field), so the one servicer answers both, the v1 method decoding with the v1alpha messages.
    """
    from grpc_reflection.v1alpha import reflection_pb2

    servicer = reflection.aio.ReflectionServicer(service_names)
    for service in (reflection.SERVICE_NAME, REFLECTION_V1):
        handlers = {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                servicer.ServerReflectionInfo,
                request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


def reconnect_options(max_backoff_ms: int = 1000) -> list[tuple[str, int]]:
    """Keepalive plus quick reconnects, for a long-lived client channel (to a hand, a gateway, a backend).

    grpc's default reconnect back-off starts at 1 s and grows to 120 s: a peer restarted at the
    same address would get no calls for seconds to minutes. Retry within max_backoff_ms instead.
    """
    first = min(200, max_backoff_ms)
    return [
        *KEEPALIVE_OPTIONS,
        ("grpc.initial_reconnect_backoff_ms", first),
        ("grpc.min_reconnect_backoff_ms", first),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]


#: The fields of the current call's log line; None outside a call that writes one.
_call_line: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("brainhands_call_line", default=None)


def note_call(**fields: Any) -> None:
    """Ask for this call's one log line ("call", with its code and duration) and add fields to it.

    A handler calls it for the RPCs worth a line each (Execute, on a hand and on the gateway);
    LogContextInterceptor writes the line once, when the call ends however it ends.
    """
    line = _call_line.get()
    if line is not None:
        line.update(fields)


def _outcome(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    code = context.code()
    if code is not None:
        return code.name
    if error is None:
        return "OK"
    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


class LogContextInterceptor(grpc.aio.ServerInterceptor):
    """Binds method, session and call ids into the structlog context; writes the call's line if it asked for one."""

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def bind(context: grpc.aio.ServicerContext) -> None:
            meta = md.as_dict(context.invocation_metadata())
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(
                **{"rpc.method": method},
                **({"session_id": meta[md.SESSION_ID]} if md.SESSION_ID in meta else {}),
                **({"call_id": meta[md.CALL_ID]} if md.CALL_ID in meta else {}),
            )

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):
                bind(context)
                line: dict[str, Any] = {}
                token = _call_line.set(line)
                started = time.perf_counter()
                error = None
                try:
                    return await inner_uu(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    _call_line.reset(token)
                    if line:
                        log.info(
                            "call", **line, code=_outcome(context, error),
                            duration_ms=round((time.perf_counter() - started) * 1000, 2),
                        )  # fmt: skip

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                bind(context)
                async for item in _aiter(inner_us(request, context)):
                    yield item

            return handler._replace(unary_stream=unary_stream)
        return handler


async def _aiter(result):
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        for item in await result if asyncio.iscoroutine(result) else result:
            yield item


@dataclass
class RunningServer:
    """A started server: its bound port, its health servicer, and how to drain it."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    service_names: Sequence[str]
    on_drain: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _stopped: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def drain(self, grace: float = 30.0) -> None:
        """Health NOT_SERVING, run drain hooks (deregister), finish in-flight calls, stop."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        for hook in self.on_drain:
            try:
                await hook()
            except Exception:  # one failed hook (a gateway gone before we deregister) must not stop the drain
                log.warning("drain hook failed", hook=getattr(hook, "__qualname__", repr(hook)), exc_info=True)
        await self.server.stop(grace)

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def start_server(
    register: Callable[[grpc.aio.Server], Iterable[str]],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_message_bytes: int = 4 * 1024 * 1024,
    credentials: grpc.ServerCredentials | None = None,
    options: Sequence[tuple[str, object]] = (),
    reuse_port: bool = False,
) -> RunningServer:
    """Build and start a grpc.aio server.

    register adds the servicers and returns their full service names, which get
    health status SERVING and reflection. reuse_port: share the port with other processes
    that set it too (SO_REUSEPORT: the gateway's workers); otherwise a taken port is an error.
    """
    set_not_dumpable()
    server = grpc.aio.server(
        interceptors=[*tracing.server_interceptors(), LogContextInterceptor(), *interceptors],  # tracing: [] while off
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *KEEPALIVE_OPTIONS,
            *options,
        ],
    )
    names = list(register(server))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    _serve_reflection(
        [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME, REFLECTION_V1],
        server,
    )
    address = f"{host}:{port}"
    if port and not reuse_port and _port_taken(host, port):
        # Said before gRPC tries: its core would print its own log line to stderr ahead of ours.
        raise OSError(f"could not listen on {address}: the port is in use (another service, or one still stopping?)")
    try:
        bound = (
            server.add_secure_port(address, credentials)
            if credentials is not None
            else server.add_insecure_port(address)
        )
    except RuntimeError:  # grpcio raises "Failed to bind" where older releases returned 0
        bound = 0
    if bound == 0:
        raise OSError(f"could not listen on {address}: is the port in use, or the address not this machine's?")
    await server.start()
    # Everything built so far (imported modules, config, servicers) lives as long as the process: move it
    # out of the cyclic collector's reach, so the collections that calls' garbage triggers stop re-scanning it.
    gc.freeze()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server=server, port=bound, health=health_servicer, service_names=names)


async def run_until_signalled(running: RunningServer, grace: float = 30.0) -> None:
    """Serve until SIGTERM or SIGINT, then drain gracefully and return."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(running.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        log.info("draining", grace_s=grace, services=list(running.service_names))
        await running.drain(grace)
        log.info("stopped")
    for task in (waiter, stopper):
        task.cancel()
