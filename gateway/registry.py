"""RegistryService: hand services join with a lease, keep it with heartbeats, and leave on drain."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
import structlog
from google.protobuf import duration_pb2, timestamp_pb2

from gateway.backends import REGISTERED, STATIC, Backend
from gateway.config import GatewayConfig, is_address
from gateway.context import LOOPBACK, current_registrant
from gateway.health import HealthChecker
from gateway.roles import Registrant, by_certificate, is_loopback_peer, owner_of
from gateway.routing import RouteTable
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import metadata as md
from hands.keys import bearer_token

log = structlog.get_logger("gateway.registry")

REGISTRY_SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name
_LEASE_METHODS = {f"/{REGISTRY_SERVICE}/{m}" for m in ("Register", "Heartbeat", "Deregister")}
_LIST = f"/{REGISTRY_SERVICE}/ListBackends"

_SOURCES = {STATIC: gateway_pb2.BACKEND_SOURCE_STATIC, REGISTERED: gateway_pb2.BACKEND_SOURCE_REGISTERED}


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return d


def _wall(monotonic_at: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int((time.time() + monotonic_at - time.monotonic()) * 1000))
    return ts


class Registry(gateway_pb2_grpc.RegistryServiceServicer):
    """Leases on registered backends; a backend whose lease runs out leaves the route table."""

    def __init__(self, table: RouteTable, health: HealthChecker, config: GatewayConfig):
        self._table = table
        self._health = health
        self._config = config
        self._leases: dict[str, Backend] = {}
        self._owners: dict[str, str] = {}  # lease id -> the registrant that holds it
        self._reaper: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="lease reaper")

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task

    def _grant(self, backend: Backend, ttl: float) -> None:
        backend.lease_ttl = ttl
        backend.lease_expires = time.monotonic() + ttl

    async def Register(self, request: gateway_pb2.RegisterRequest, context: grpc.aio.ServicerContext):
        address = request.address
        if not is_address(address):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"address must be host:port, got {address[:100]!r}")
        asked = request.lease_ttl.ToMilliseconds() / 1000 if request.HasField("lease_ttl") else 0.0
        if asked < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lease_ttl must not be negative")
        ttl = min(asked or self._config.default_lease_ttl, self._config.max_lease_ttl)
        caller = current_registrant.get()
        registrant = self._registrant(caller)
        existing = self._table.backends.get(address)
        if existing is not None and existing.lease_id and self._owners.get(existing.lease_id, caller) != caller:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{address} is registered by another registrant; it cannot be taken over"
            )
        backend = existing or Backend(
            address, self._config, source=REGISTERED, allow=registrant.hands if registrant else ("*",)
        )
        try:
            described = await backend.describe(self._config.describe_timeout)
        except grpc.aio.AioRpcError as exc:
            if existing is None:
                await backend.close()
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"the gateway could not call Describe on {address} ({exc.code().name}: {exc.details()}); "
                "is the address reachable from the gateway?",
            )
        if registrant is not None:
            outside = sorted(spec.name for spec in described if not registrant.may_register(spec.name))
            if outside:
                if existing is None:
                    await backend.close()
                log.warning("registration refused", registrant=caller, backend=address, hands=outside[:20])
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"registrant {caller!r} may not register the hand {outside[0][:64]!r}"
                    + (f" (nor {len(outside) - 1} more)" if len(outside) > 1 else "")
                    + f"; it may register only {', '.join(registrant.hands)}",
                )
        backend.keep_specs(described)
        if existing is not None and existing.lease_id:
            self._leases.pop(existing.lease_id, None)
            self._owners.pop(existing.lease_id, None)
        backend.lease_id = uuid.uuid4().hex
        self._grant(backend, ttl)
        self._leases[backend.lease_id] = backend
        self._owners[backend.lease_id] = caller
        # It just answered Describe; route to it now and let the health checker take over from here.
        backend.serving = True
        self._table.add(backend)
        self._health.watch(backend)
        log.info("backend registered", backend=address, hands=sorted(backend.specs), lease_ttl_s=ttl, registrant=caller)
        return gateway_pb2.RegisterResponse(
            lease_id=backend.lease_id, lease_ttl=_duration(ttl), hands=sorted(backend.specs)
        )

    def _registrant(self, name: str) -> Registrant | None:
        return next((r for r in self._config.registrants if r.name == name), None)

    def _own_lease(self, lease_id: str) -> Backend | None:
        """The caller's own lease: another registrant's is as good as none (NOT_FOUND, nothing said about it)."""
        backend = self._leases.get(lease_id)
        if backend is None or self._owners.get(lease_id) != current_registrant.get():
            return None
        return backend

    async def Heartbeat(self, request: gateway_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext):
        backend = self._own_lease(request.lease_id)
        if backend is None or backend.lease_expires < time.monotonic():
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease (it expired or was never granted); register again")
        self._grant(backend, backend.lease_ttl)
        return gateway_pb2.HeartbeatResponse(lease_ttl=_duration(backend.lease_ttl))

    async def Deregister(self, request: gateway_pb2.DeregisterRequest, context: grpc.aio.ServicerContext):
        backend = self._own_lease(request.lease_id)
        if backend is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease (it expired or was never granted)")
        self._drop(backend, "backend deregistered")
        return gateway_pb2.DeregisterResponse()

    async def ListBackends(self, request, context):
        out = []
        for b in list(self._table.backends.values()):
            state = (
                gateway_pb2.BACKEND_STATE_EJECTED
                if b.serving and b.ejected
                else gateway_pb2.BACKEND_STATE_SERVING
                if b.serving
                else gateway_pb2.BACKEND_STATE_NOT_SERVING
            )
            entry = gateway_pb2.Backend(
                address=b.address,
                source=_SOURCES[b.source],
                state=state,
                hands=sorted(b.specs),
                in_flight=b.in_flight,
                consecutive_failures=b.consecutive_failures,
                lease_id=b.lease_id,
            )
            if b.ejected:
                entry.ejected_until.CopyFrom(_wall(b.ejected_until))
            if b.lease_id:
                entry.lease_expires_at.CopyFrom(_wall(b.lease_expires))
            out.append(entry)
        return gateway_pb2.ListBackendsResponse(backends=out)

    def _drop(self, backend: Backend, why: str) -> None:
        self._leases.pop(backend.lease_id, None)
        self._owners.pop(backend.lease_id, None)
        backend.lease_id = ""
        if backend.source == STATIC:
            return  # the config file keeps it; only its lease ends
        self._health.unwatch(backend.address)
        self._table.remove(backend.address)
        log.info(why, backend=backend.address)
        # Calls already sent finish on the old channel; close it once they have (or after a grace).
        task = asyncio.create_task(backend.close(grace=30.0))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _reap(self) -> None:
        while True:
            ttls = [b.lease_ttl for b in self._leases.values()] or [self._config.default_lease_ttl]
            await asyncio.sleep(max(0.05, min(1.0, min(ttls) / 4)))
            now = time.monotonic()
            for backend in [b for b in self._leases.values() if b.lease_expires < now]:
                self._drop(backend, "lease expired")


class RegistryAccess(grpc.aio.ServerInterceptor):
    """Who may call RegistryService: registrants (by key or client certificate) for leases, operators to list.

    With no registrants configured, leases are taken only from loopback peers (the embedded stack); with no
    operators, ListBackends too. A tenant's key is no registrant's: tenants call hands, they do not add them.
    """

    def __init__(self, config: GatewayConfig):
        self._config = config

    def describe(self) -> str:
        if self._config.registrants:
            return f"registrants {', '.join(r.name for r in self._config.registrants)}"
        return "loopback callers only (no registrants configured)"

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not (method in _LEASE_METHODS or method == _LIST):
            return handler
        inner = handler.unary_unary
        check = self._registrant if method in _LEASE_METHODS else self._operator

        async def guarded(request, context):
            await check(context)
            return await inner(request, context)

        return handler._replace(unary_unary=guarded)

    async def _registrant(self, context: grpc.aio.ServicerContext) -> None:
        registrants = self._config.registrants
        if not registrants:
            if not is_loopback_peer(context.peer()):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "this gateway takes registrations only from its own machine (no registrants are configured); "
                    "add a registrant with a key to its config",
                )
            current_registrant.set(LOOPBACK)
            return
        meta = md.as_dict(context.invocation_metadata())
        found = owner_of(bearer_token(meta.get(md.AUTHORIZATION)), registrants)
        if found is None and any(r.cert_subjects for r in registrants):
            found = by_certificate(context.auth_context() or {}, registrants)
        if found is None:
            why = "the key is not a registrant's" if md.AUTHORIZATION in meta else "no registrant key"
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{why}: register with 'authorization: Bearer <key>' of one of the gateway's registrants "
                "(--register-key or BRAINHANDS_REGISTER_KEY)",
            )
        current_registrant.set(found.name)
        structlog.contextvars.bind_contextvars(registrant=found.name)

    async def _operator(self, context: grpc.aio.ServicerContext) -> None:
        operators = self._config.operators
        if not operators:
            if not is_loopback_peer(context.peer()):
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "ListBackends is answered only on the gateway's own machine (no operators are configured)",
                )
            return
        meta = md.as_dict(context.invocation_metadata())
        if owner_of(bearer_token(meta.get(md.AUTHORIZATION)), operators) is None:
            why = "the key is not an operator's" if md.AUTHORIZATION in meta else "no operator key"
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{why}: ListBackends needs a key of the gateway's operators")
