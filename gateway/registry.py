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
from gateway.leases import Lease, LeaseTaken, RegistryStore, RegistryStoreUnavailable
from gateway.leases.memory import MemoryRegistryStore
from gateway.roles import Registrant, by_certificate, is_loopback_peer, owner_of
from gateway.routing import RouteTable
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import metadata as md
from hands.keys import bearer_token
from hands.v1 import hands_pb2

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
    """Leases on registered backends, kept in a RegistryStore; a lease that ends leaves the route table.

    With a shared store every replica routes to every registered backend: it reads the store's leases every
    registry_refresh (and once before its first call, so a restarted gateway has the fleet at once), and
    health-checks their backends itself. Who holds a lease is the store's to say, so a registrant renews or
    releases its own lease through any replica and never another's.
    """

    def __init__(self, table: RouteTable, health: HealthChecker, config: GatewayConfig, store: RegistryStore | None = None):
        self._table = table
        self._health = health
        self._config = config
        self.store = store or MemoryRegistryStore()
        self._leases: dict[str, Backend] = {}
        self._owners: dict[str, str] = {}  # lease id -> the registrant that holds it
        # A snapshot and a local change never interleave: a lease granted here is never dropped by a read of the
        # store that began before it was granted.
        self._lock = asyncio.Lock()
        self._store_down = False
        self._syncer: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()

    async def load(self) -> None:
        """Take the store's leases and probe their backends before the first call (a restarted gateway's fleet)."""
        added = await self._sync_once()
        if added:
            await asyncio.gather(*(self._health.probe(b) for b in added), return_exceptions=True)
            for backend in added:
                self._health.watch(backend)
            log.info("registered backends loaded", backends=sorted(b.address for b in added), registry=self.where())

    def where(self) -> str:
        """Where the leases live, for log lines: shared (by every replica) or memory (this process)."""
        return "shared" if self.store.shared else "memory"

    def start(self) -> None:
        self._syncer = asyncio.create_task(self._sync(), name="registry sync")

    async def close(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        for task in list(self._closing):
            with contextlib.suppress(Exception):
                await task
        await self.store.close()

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
        taken = f"{address} is registered by another registrant; it cannot be taken over"
        existing = self._table.backends.get(address)
        if existing is not None and existing.lease_id and self._owners.get(existing.lease_id, caller) != caller:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, taken)
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
        specs = backend.keep_specs(described)
        lease = Lease(
            id=uuid.uuid4().hex, address=address, owner=caller, ttl=ttl, allow=backend.allow,
            specs=hands_pb2.DescribeResponse(hands=[specs[n] for n in sorted(specs)]).SerializeToString(),
        )  # fmt: skip
        async with self._lock:
            try:
                await self.store.grant(lease)
            except (LeaseTaken, RegistryStoreUnavailable) as exc:
                if existing is None:
                    await backend.close()
                if isinstance(exc, LeaseTaken):
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, taken)
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the registry store does not answer ({exc}); try again")
            if self._table.backends.setdefault(address, backend) is not backend:
                await backend.close()  # a read of the store took the address in while Describe ran: keep that one
            backend = self._take(lease)
            backend.lease_expires = time.monotonic() + ttl
            # It just answered Describe; route to it now and let the health checker take over from here.
            backend.serving = True
            self._table.rebuild()
        self._health.watch(backend)
        log.info("backend registered", backend=address, hands=sorted(backend.specs), lease_ttl_s=ttl, registrant=caller)
        return gateway_pb2.RegisterResponse(lease_id=lease.id, lease_ttl=_duration(ttl), hands=sorted(backend.specs))

    def _registrant(self, name: str) -> Registrant | None:
        return next((r for r in self._config.registrants if r.name == name), None)

    async def Heartbeat(self, request: gateway_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext):
        # Another registrant's lease is as good as none: NOT_FOUND, nothing said about it.
        try:
            ttl = await self.store.renew(request.lease_id, current_registrant.get())
        except RegistryStoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the registry store does not answer ({exc}); try again")
        if ttl is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease (it expired or was never granted); register again")
        backend = self._leases.get(request.lease_id)
        if backend is not None:
            backend.lease_ttl = ttl
            backend.lease_expires = time.monotonic() + ttl
        return gateway_pb2.HeartbeatResponse(lease_ttl=_duration(ttl))

    async def Deregister(self, request: gateway_pb2.DeregisterRequest, context: grpc.aio.ServicerContext):
        async with self._lock:
            try:
                released = await self.store.release(request.lease_id, current_registrant.get())
            except RegistryStoreUnavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the registry store does not answer ({exc}); try again")
            if not released:
                await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease (it expired or was never granted)")
            backend = self._leases.get(request.lease_id)
            if backend is not None:
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

    def _take(self, lease: Lease) -> Backend:
        """Hold lease on its address's backend (made now, from the lease, when the gateway has none)."""
        backend = self._table.backends.get(lease.address)
        if backend is None:
            backend = Backend(lease.address, self._config, source=REGISTERED, allow=lease.allow)
            backend.keep_specs(hands_pb2.DescribeResponse.FromString(lease.specs).hands)
            self._table.backends[lease.address] = backend  # not serving until this gateway's own probe says so
        elif backend.lease_id:
            self._leases.pop(backend.lease_id, None)  # the registrant registered it again: the old lease ended
            self._owners.pop(backend.lease_id, None)
        if backend.source == REGISTERED and backend.allow != lease.allow:
            backend.allow = lease.allow
            backend.keep_specs(hands_pb2.DescribeResponse.FromString(lease.specs).hands)
        backend.lease_id = lease.id
        backend.lease_ttl = lease.ttl
        self._leases[lease.id] = backend
        self._owners[lease.id] = lease.owner
        return backend

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

    async def _sync_once(self) -> list[Backend]:
        """Make the route table hold exactly the store's live leases; returns the backends new to this gateway."""
        async with self._lock:
            try:
                leases = await self.store.snapshot()
            except RegistryStoreUnavailable as exc:
                if not self._store_down:
                    self._store_down = True
                    log.warning("registry store unreachable: leases stay as they were until it answers", error=str(exc))
                return []
            if self._store_down:
                self._store_down = False
                log.info("registry store answers again")
            now = time.monotonic()
            known = set(self._table.backends)
            added = []
            for lease in leases:
                backend = self._leases.get(lease.id) or self._take(lease)
                backend.lease_ttl = lease.ttl
                backend.lease_expires = now + lease.expires_in
                if backend.address not in known:
                    added.append(backend)
            live = {lease.id for lease in leases}
            for lease_id, backend in list(self._leases.items()):
                if lease_id not in live:  # it expired, or its registrant deregistered it through any replica
                    self._drop(backend, "lease ended")
            return added

    async def _sync(self) -> None:
        while True:
            ttls = [b.lease_ttl for b in self._leases.values()] or [self._config.default_lease_ttl]
            await asyncio.sleep(max(0.05, min(self._config.registry_refresh, min(ttls) / 4)))
            try:
                for backend in await self._sync_once():
                    self._health.watch(backend, probe_first=True)  # routed once this gateway's own probe says SERVING
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive any one bad read; the next one tries again
                log.exception("registry sync failed")


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
