"""DNS routes: a static backend given as name:port is one backend per address the name resolves to.

The name is re-resolved every `dns_refresh`; a new address becomes a backend (probed, then watched
like any static one), an address that is gone stops taking calls and its channel closes once the
calls in flight on it have finished. So pods a Kubernetes headless Service adds get traffic and
removed ones drain. An IP literal is never resolved: it is one backend, as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog

from gateway.backends import STATIC, Backend
from gateway.config import GatewayConfig, split_address
from gateway.health import HealthChecker
from gateway.routing import RouteTable

log = structlog.get_logger("gateway.dns")

#: name, port -> the IP addresses the name has now (raises OSError when it has none).
Resolver = Callable[[str, int], Awaitable[Iterable[str]]]

#: How long a removed address's calls in flight may take to finish before its channel closes anyway.
DRAIN_GRACE = 300.0


async def resolve(name: str, port: int) -> list[str]:
    """The event loop's getaddrinfo: every address of name for a TCP connection, in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_dns_target(address: str) -> bool:
    """A configured host:port whose host is a name to resolve, not an IP literal."""
    return not is_ip_literal(split_address(address)[0])


def join(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class DnsRoutes:
    """Keeps the route table's backends for each name:port in step with what the name resolves to."""

    def __init__(
        self,
        table: RouteTable,
        checker: HealthChecker,
        config: GatewayConfig,
        resolver: Resolver | None = None,
    ):
        self._table = table
        self._checker = checker
        self._config = config
        self._resolver = resolver or resolve
        self._targets: dict[str, tuple[str, ...]] = {}  # name:port -> hand globs
        self._owned: dict[str, dict[str, Backend]] = {}  # name:port -> the ip:port backends made for it
        self._failing: set[str] = set()  # targets whose last lookup failed (logged once, not every refresh)
        self._draining: dict[asyncio.Task, Backend] = {}
        self._loop: asyncio.Task | None = None

    @property
    def resolver(self) -> Resolver:
        return self._resolver

    def add(self, target: str, globs: Sequence[str]) -> None:
        self._targets[target] = tuple(globs)
        self._owned.setdefault(target, {})
        self._note_unresolved()

    @property
    def targets(self) -> list[str]:
        return list(self._targets)

    async def refresh(self) -> None:
        """Resolve every name once and apply the changes (new backends are probed before they take calls)."""
        targets = list(self._targets)
        results = await asyncio.gather(*(self._refresh(t) for t in targets), return_exceptions=True)
        for target, result in zip(targets, results, strict=True):
            if isinstance(result, Exception):
                log.error("dns route refresh failed", target=target, exc_info=result)

    async def _refresh(self, target: str) -> None:
        host, port = split_address(target)
        owned = self._owned[target]
        try:
            ips = list(await self._resolver(host, port))
        except (OSError, UnicodeError) as exc:
            # A failed lookup keeps the addresses it had: a DNS hiccup must not take the fleet away.
            if target not in self._failing:
                self._failing.add(target)
                log.warning("dns lookup failed", target=target, error=str(exc), keeping=sorted(owned))
            return
        if target in self._failing:
            self._failing.discard(target)
            log.info("dns lookup works again", target=target)
        wanted = {join(ip, port) for ip in ips}
        table = self._table
        # New addresses, and owned ones something else took out of the table (they come back).
        added = sorted(a for a in wanted if a not in table.backends)
        removed = sorted(a for a in owned if a not in wanted)
        if not added and not removed:
            return
        fresh = []
        for address in added:
            backend = Backend(address, self._config, source=STATIC, allow=self._targets[target], server_name=host)
            table.backends[address] = backend
            owned[address] = backend
            fresh.append(backend)
        if fresh:
            await asyncio.gather(*(self._checker.probe(b) for b in fresh), return_exceptions=True)
            for backend in fresh:
                self._checker.watch(backend)
        for address in removed:
            backend = owned.pop(address)
            if table.backends.get(address) is backend:
                self._retire(backend)
        table.rebuild()
        self._note_unresolved()
        log.info("dns route changed", target=target, added=added, removed=removed, backends=sorted(owned))

    def _note_unresolved(self) -> None:
        """A hand a route names whose name has no address yet is down, not unknown (UNAVAILABLE, not NOT_FOUND)."""
        self._table.unresolved_globs = tuple(
            glob for target, globs in self._targets.items() if not self._owned[target] for glob in globs
        )

    def _retire(self, backend: Backend) -> None:
        """No new calls from now on; the channel closes when the calls in flight have finished."""
        address = backend.address
        self._checker.unwatch(address)
        self._table.backends.pop(address, None)
        backend.serving = False  # a retry holding an older route must not pick it either
        task = asyncio.create_task(backend.close(DRAIN_GRACE), name=f"drain {address}")
        self._draining[task] = backend
        task.add_done_callback(lambda done: self._draining.pop(done, None))

    def start(self) -> None:
        if self._targets and self._loop is None:
            self._loop = asyncio.create_task(self._every_refresh(), name="dns refresh")

    async def _every_refresh(self) -> None:
        while True:
            await asyncio.sleep(self._config.dns_refresh)
            try:
                await self.refresh()
            except Exception:  # the next round tries again
                log.exception("dns refresh failed")

    async def close(self) -> None:
        """Stop re-resolving; channels still draining close now (the server has already drained its calls)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        for task, backend in list(self._draining.items()):
            with contextlib.suppress(Exception):
                await backend.close(None)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
