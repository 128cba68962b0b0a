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
        self._current: dict[str, set[str]] = {}  # name:port -> ip:port backends it owns now
        self._draining: dict[asyncio.Task, Backend] = {}
        self._loop: asyncio.Task | None = None

    @property
    def resolver(self) -> Resolver:
        return self._resolver

    def add(self, target: str, globs: Sequence[str]) -> None:
        self._targets[target] = tuple(globs)
        self._current.setdefault(target, set())

    @property
    def targets(self) -> list[str]:
        return list(self._targets)

    async def refresh(self) -> None:
        """Resolve every name once and apply the changes (new backends are probed before they take calls)."""
        await asyncio.gather(*(self._refresh(t) for t in self._targets), return_exceptions=True)

    async def _refresh(self, target: str) -> None:
        host, port = split_address(target)
        try:
            ips = list(await self._resolver(host, port))
        except (OSError, UnicodeError) as exc:
            # A failed lookup keeps the addresses it had: a DNS hiccup must not take the fleet away.
            log.warning("dns lookup failed", target=target, error=str(exc), keeping=sorted(self._current[target]))
            return
        wanted = {join(ip, port) for ip in ips}
        current = self._current[target]
        added = sorted(wanted - current)
        removed = sorted(current - wanted)
        if not added and not removed:
            return
        fresh = []
        for address in added:
            if address in self._table.backends:  # already a backend (another route or a registration)
                continue
            backend = Backend(address, self._config, source=STATIC, allow=self._targets[target], server_name=host)
            self._table.backends[address] = backend
            current.add(address)
            fresh.append(backend)
        if fresh:
            await asyncio.gather(*(self._checker.probe(b) for b in fresh), return_exceptions=True)
            for backend in fresh:
                self._checker.watch(backend)
        for address in removed:
            current.discard(address)
            self._retire(address)
        self._table.rebuild()
        log.info("dns route changed", target=target, added=added, removed=removed, backends=sorted(current))

    def _retire(self, address: str) -> None:
        """No new calls from now on; the channel closes when the calls in flight have finished."""
        self._checker.unwatch(address)
        backend = self._table.backends.pop(address, None)
        if backend is None:
            return
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
