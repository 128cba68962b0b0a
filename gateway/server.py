"""The gateway's front: HandService that forwards each Execute to a replica of the named hand."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import grpc
import structlog
from google.protobuf.message import DecodeError

from gateway.auth import Access
from gateway.backends import STATIC, Backend
from gateway.config import GatewayConfig
from gateway.context import current_forward, current_tenant
from gateway.dns import DnsRoutes, Resolver, is_dns_target
from gateway.health import HealthChecker
from gateway.leases import open_registry_store
from gateway.metrics import GatewayMetrics
from gateway.registry import Registry, RegistryAccess
from gateway.routing import HandRoute, RouteTable
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from gateway.wire import hand_name
from hands import NAME_RE, tracing
from hands import metadata as md
from hands.serving import RunningServer, note_call, start_server
from hands.v1 import hands_pb2

if TYPE_CHECKING:
    from gateway.mcp_front import RunningMcpFront

log = structlog.get_logger("gateway")

HAND_SERVICE = hands_pb2.DESCRIPTOR.services_by_name["HandService"].full_name
REGISTRY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name

_PROPAGATED = frozenset(md.PROPAGATED)  # never authorization: the caller's key is not the backend's business
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# Words grpc puts in UNAVAILABLE when no connection was made, so the request never left the gateway.
_NOT_SENT = ("failed to connect", "connection refused", "connect failed", "no route to host", "dns resolution failed")


def never_reached_backend(exc: grpc.aio.AioRpcError) -> bool:
    """The rule for "failed before it reached a hand", which makes any call safe to retry elsewhere.

    grpc does not say whether request bytes went out. A call is counted as not sent only
    when it failed UNAVAILABLE while connecting (connection refused, no route, DNS): with
    no connection there is nothing the bytes could have gone through. Everything else
    (a reset or closed socket after sending, GOAWAY mid-call, deadline, an UNAVAILABLE the
    hand chose) may have reached the hand, so only idempotent hands are re-run. Backends
    whose channel is already in TRANSIENT_FAILURE are skipped before the call is made.
    """
    if exc.code() is not _UNAVAILABLE:
        return False
    details = (exc.details() or "").lower()
    return any(words in details for words in _NOT_SENT)


class _Refusal(Exception):
    """The status the caller gets when no backend answered OK."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple = (), backend: str = "", attempts: int = 0):
        super().__init__(details)
        self.code = code
        self.details = details
        self.trailing = trailing
        self.backend = backend  # the last backend tried, for the call's log line
        self.attempts = attempts


def _passable_trailers(exc: grpc.aio.AioRpcError) -> tuple:
    """The backend's trailing metadata worth passing on: rich status details and application keys."""
    out = []
    for key, value in exc.trailing_metadata() or ():
        if key == "grpc-status-details-bin" or not key.startswith("grpc-"):
            out.append((key, value))
    return tuple(out)


class FrontService:
    """HandService for callers; Execute bytes go to a backend and its answer comes back unparsed."""

    def __init__(self, table: RouteTable, config: GatewayConfig, metrics: GatewayMetrics):
        self._table = table
        self._config = config
        self._metrics = metrics
        # Until then a name nobody has registered yet may just be a replica still re-registering.
        self._grace_until = time.monotonic() + config.startup_grace

    def handler(self) -> grpc.GenericRpcHandler:
        # No (de)serializers: the front gets and returns bytes, so a routed call parses the request once
        # (for the name) and never re-serializes the request or the response.
        return grpc.method_handlers_generic_handler(
            HAND_SERVICE,
            {
                "Execute": grpc.unary_unary_rpc_method_handler(self.execute),
                "Describe": grpc.unary_unary_rpc_method_handler(self.describe),
            },
        )

    async def describe(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self._table.describe_bytes

    async def execute(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        metrics = self._metrics
        metrics.in_flight.inc()
        label = "unknown"  # bounded label set: only names the route table knows become labels
        code = "CANCELLED"
        backend = ""
        attempts = 0
        details = None
        try:
            try:
                name = hand_name(raw)
            except (DecodeError, UnicodeDecodeError):
                raise _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a hands.v1.ExecuteRequest") from None
            route = self._table.routes.get(name)
            if route is None:
                raise self._no_route(name)
            label = name
            response, backend, attempts = await self._forward(route, raw, context)
            code = "OK"
            return response
        except _Refusal as refusal:
            code = refusal.code.name
            backend, attempts, details = refusal.backend, refusal.attempts, refusal.details
            await context.abort(refusal.code, refusal.details, trailing_metadata=refusal.trailing)
        finally:
            seconds = time.perf_counter() - started
            metrics.in_flight.dec()
            tenant = current_tenant.get()
            metrics.observe_call(label, tenant, code, seconds)
            if tracing.enabled():
                _trace_route(label, tenant, backend, attempts, code)
            note_call(hand=label, tenant=tenant, backend=backend, attempts=attempts, **({"details": details} if details else {}))

    def _no_route(self, name: str) -> _Refusal:
        if not name:
            return _Refusal(grpc.StatusCode.INVALID_ARGUMENT, "hand name is empty")
        if not NAME_RE.fullmatch(name):  # a malformed name is the caller's mistake, not a hand we lack
            return _Refusal(grpc.StatusCode.INVALID_ARGUMENT, f"hand name {name[:80]!r} must match {NAME_RE.pattern}")
        if self._table.known_but_down(name):
            return _Refusal(_UNAVAILABLE, f"no healthy replica of {name} right now; try again shortly")
        if time.monotonic() < self._grace_until:
            return _Refusal(
                _UNAVAILABLE,
                f"the gateway started less than {self._config.startup_grace:g}s ago and does not know {name!r} "
                "yet; its replicas may still be registering; try again shortly",
            )
        known = ", ".join(self._table.hand_names()[:50]) or "(none)"
        return _Refusal(grpc.StatusCode.NOT_FOUND, f"no hand named {name[:64]!r}; the gateway knows: {known}")

    async def _forward(self, route: HandRoute, raw: bytes, context: grpc.aio.ServicerContext):
        config = self._config
        table = self._table
        # The tenant the access interceptor authenticated, in a key the caller cannot set: an incoming
        # x-brainhands-tenant is not in _PROPAGATED, so it is dropped here and replaced by the real one.
        # The access interceptor's delegation, depth and budget replace the caller's own values of those keys.
        forward = current_forward.get()
        replaced = {k for k, _ in forward}
        metadata = (
            *((k, v) for k, v in context.invocation_metadata() if k in _PROPAGATED and k not in replaced),
            *forward,
            (md.TENANT, current_tenant.get()),
        )
        tried: list[Backend] = []
        last = ""
        for attempt in range(1, config.max_attempts + 1):
            backend = table.pick(route, tried)
            if backend is None:
                break
            timeout = context.time_remaining()  # None without a deadline; the backend then applies its own
            if timeout is not None and timeout <= 0:
                raise _Refusal(grpc.StatusCode.DEADLINE_EXCEEDED, f"the deadline passed before {route.name} could run")
            backend.in_flight += 1
            attempt_span = _attempt_span(route.name, backend.address, attempt) if tracing.enabled() else _NO_SPAN
            try:
                with attempt_span as span:
                    sent_metadata = _with_traceparent(metadata) if span is not None else metadata
                    try:
                        response = await backend.execute(raw, timeout=timeout, metadata=sent_metadata, wait_for_ready=False)
                    except grpc.aio.AioRpcError as exc:
                        if span is not None:
                            span.set_attribute("rpc.grpc.status_code", exc.code().value[0])
                            tracing.mark_error(span, exc.details() or exc.code().name, exc.code().name)
                        raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not _UNAVAILABLE:
                    backend.record_success()  # the transport worked; the status is the hand's answer
                    raise _Refusal(
                        exc.code(), exc.details() or "", _passable_trailers(exc), backend.address, attempt
                    ) from None
                self._failed(backend)
                tried.append(backend)
                last = f"{backend.address}: {exc.details()}"
                sent = not never_reached_backend(exc)
                if sent and not route.idempotent:
                    raise _Refusal(
                        _UNAVAILABLE,
                        f"{route.name} failed on {backend.address} after the call may have reached it "
                        f"({exc.details()}); not retried because {route.name} is not idempotent",
                        backend=backend.address,
                        attempts=attempt,
                    ) from None
                self._metrics.retries.labels(route.name, "sent" if sent else "not_sent").inc()
                continue
            finally:
                backend.in_flight -= 1
            backend.record_success()
            return response, backend.address, attempt
        tail = f" (tried {len(tried)}; last: {last})" if tried else ""
        raise _Refusal(
            _UNAVAILABLE,
            f"no healthy replica of {route.name} could take the call{tail}",
            backend=tried[-1].address if tried else "",
            attempts=len(tried),
        )

    def _failed(self, backend: Backend) -> None:
        ejected_for = backend.record_failure(self._config.eject_after_failures, self._config.eject_backoff)
        if ejected_for:
            self._metrics.ejections.labels(backend.address).inc()
            log.warning(
                "backend ejected",
                backend=backend.address,
                consecutive_failures=backend.consecutive_failures,
                for_s=ejected_for,
            )


# --- tracing hooks (no-ops while tracing is off) ------------------------------------------------------------


_NO_SPAN = contextlib.nullcontext(None)


def _trace_route(hand: str, tenant: str, backend: str, attempts: int, code: str) -> None:
    """The routing facts on the call's SERVER span (the quota decision is set by the access interceptor)."""
    span = tracing.current_span()
    if span is not None:
        span.update_name(f"gateway {hand}")
        span.set_attributes({"brainhands.hand": hand, "brainhands.tenant": tenant, "brainhands.backend": backend,
                             "brainhands.attempts": attempts, "brainhands.code": code})  # fmt: skip


def _attempt_span(hand: str, address: str, attempt: int):
    host, _, port = address.rpartition(":")
    return tracing.start_span(
        f"attempt {attempt} {hand}", kind="client",
        attributes={"brainhands.hand": hand, "brainhands.backend": address, "brainhands.attempt": attempt,
                    "rpc.system": "grpc", "rpc.service": HAND_SERVICE, "rpc.method": "Execute",
                    "server.address": host, **({"server.port": int(port)} if port.isdigit() else {})},
    )  # fmt: skip


def _with_traceparent(metadata: tuple) -> tuple:
    """The forwarded metadata with the caller's traceparent replaced by the attempt span's, so the hand nests under it."""
    return (*((k, v) for k, v in metadata if k not in ("traceparent", "tracestate")), *tracing.headers())


#: Adds more servicers to the gateway's server and returns their full service names (for health, reflection).
ServicerHook = Callable[[grpc.aio.Server], Iterable[str]]


@dataclass
class GatewayServer(RunningServer):
    """A running gateway: the server, and its route table, registry and metrics for callers and tests."""

    config: GatewayConfig | None = None
    table: RouteTable | None = None
    registry: Registry | None = None
    checker: HealthChecker | None = None
    dns: DnsRoutes | None = None
    metrics: GatewayMetrics | None = None
    metrics_port: int | None = None
    access: Access | None = None
    mcp: RunningMcpFront | None = None  # the MCP front, when the config has `mcp:`
    _closed: bool = False

    async def drain(self, grace: float = 30.0) -> None:
        """Finish in-flight calls (RunningServer.drain), then stop probes and close backend channels."""
        await super().drain(grace)
        await self.close()

    async def close_mcp(self) -> None:
        """Stop the MCP front (once): its in-flight requests finish first, as they need the gRPC front."""
        front, self.mcp = self.mcp, None
        if front is not None:
            await front.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.close_mcp()
        if self.dns is not None:
            await self.dns.close()
        await self.checker.close()
        await self.registry.close()
        for backend in list(self.table.backends.values()):
            try:
                await backend.close()
            except Exception:  # closing the others matters more than this one channel
                log.warning("closing a backend channel failed", backend=backend.address, exc_info=True)
        self.metrics.close()
        if self.access is not None:
            await self.access.close()


async def _say_if_quota_store_is_down(store, url: str) -> None:
    """One warning at start when the shared quota store does not answer: calls are refused until it does."""
    ping = getattr(store, "ping", None)
    if ping is None:
        return
    try:
        await asyncio.wait_for(ping(), timeout=3.0)
    except Exception as exc:  # redis, socket and timeout errors alike: the store is not usable now
        parts = urlsplit(url)
        if parts.password is not None:  # the URL may carry Redis's password: never log it
            url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.hostname}:{parts.port or 6379}"))
        log.warning("quota store unreachable: calls are refused until it answers", quota_store=url,
                    error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


async def start_gateway(
    config: GatewayConfig,
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    servicers: Sequence[ServicerHook] = (),
    credentials: grpc.ServerCredentials | None = None,
    resolver: Resolver | None = None,
    worker: int | None = None,
) -> GatewayServer:
    """Start the gateway in the running loop: front HandService, RegistryService, health, reflection, metrics.

    interceptors run after the log-context one (auth and quotas go here and may set
    gateway.context.current_tenant); servicers add more services to the same port. worker: this process's
    index among `--workers N` (it then shares its port with the other workers, SO_REUSEPORT).
    """
    metrics = GatewayMetrics()
    table = RouteTable()
    checker = HealthChecker(table, config, metrics)
    registry = Registry(table, checker, config, open_registry_store(config.registry, prefix=config.registry_prefix))
    globs_by_address: dict[str, list[str]] = {}
    for route in config.routes:
        for address in route.backends:
            globs_by_address.setdefault(address, []).extend(route.hands)
    dns = DnsRoutes(table, checker, config, resolver)
    for address, globs in globs_by_address.items():
        if is_dns_target(address):
            dns.add(address, globs)  # one backend per address the name resolves to, kept up to date
        else:
            table.backends[address] = Backend(address, config, source=STATIC, allow=globs)
    table.set_static_globs(g for route in config.routes for g in route.hands)
    # Learn the static backends' hands before taking calls; one that is down now joins when it comes up.
    statics = list(table.backends.values())
    if statics:
        await asyncio.gather(*(checker.probe(b) for b in statics), return_exceptions=True)
    await dns.refresh()  # resolved and probed before the first call, watched from now on
    await registry.load()  # the backends registered through any replica, probed before the first call
    table.rebuild()
    front = FrontService(table, config, metrics)
    # Tenants, authorization and quotas wrap the front (and serve QuotaService) on the same port.
    access = Access.from_config(config, metrics, known_hand=lambda name: name in table.routes)
    registry_access = RegistryAccess(config)
    await _say_if_quota_store_is_down(access.store, config.quota_store)

    def register(server: grpc.aio.Server) -> list[str]:
        server.add_generic_rpc_handlers((front.handler(),))
        gateway_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
        names = [HAND_SERVICE, REGISTRY_SERVICE, *access.register(server)]
        for hook in servicers:
            names.extend(hook(server))
        return names

    try:
        running = await start_server(
            register,
            host=config.listen_host,
            port=config.listen_port,
            interceptors=[access.interceptor, registry_access, *interceptors],
            max_message_bytes=config.max_message_bytes,
            credentials=credentials or config.tls.server_credentials(),
            reuse_port=worker is not None,
        )
    except BaseException:
        await checker.close()
        await registry.close()
        for backend in list(table.backends.values()):
            await backend.close()
        await access.close()
        raise
    metrics_port = metrics.serve(config.metrics) if config.metrics else None
    for backend in statics:
        checker.watch(backend)
    registry.start()
    dns.start()
    gateway = GatewayServer(
        server=running.server,
        port=running.port,
        health=running.health,
        service_names=running.service_names,
        config=config,
        table=table,
        registry=registry,
        checker=checker,
        dns=dns,
        metrics=metrics,
        metrics_port=metrics_port,
        access=access,
    )
    if config.mcp:
        from gateway.mcp_front import start_mcp_front  # imported only when used: it pulls in the mcp SDK

        try:
            gateway.mcp = await start_mcp_front(config, running.port, access.tenants)
        except BaseException:
            await gateway.drain(0)
            raise
        # Drain hooks run while the gRPC front still serves: MCP requests in flight finish through it.
        gateway.on_drain.append(gateway.close_mcp)
    log.info(
        "gateway serving",
        address=f"{config.listen_host}:{running.port}",
        metrics=f"{config.metrics.rpartition(':')[0]}:{metrics_port}" if metrics_port else None,
        hands=table.hand_names(),
        backends=sorted(table.backends),
        registration=registry_access.describe(),
        registry=registry.where(),
        **({} if worker is None else {"pid": os.getpid()}),
        delegation_key="generated for this process" if getattr(access.delegations.keys, "generated", False) else "shared",
    )
    return gateway
