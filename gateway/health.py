"""Active health checks: one grpc.health.v1 probe per backend per interval; a change rebuilds the routes."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import structlog

from gateway.backends import Backend
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.routing import RouteTable

log = structlog.get_logger("gateway.health")


class HealthChecker:
    """Keeps backend.serving true to what the backend says, and its hands fresh when it comes back."""

    def __init__(self, table: RouteTable, config: GatewayConfig, metrics: GatewayMetrics):
        self._table = table
        self._config = config
        self._metrics = metrics
        self._tasks: dict[str, asyncio.Task] = {}

    def watch(self, backend: Backend, *, probe_first: bool = False) -> asyncio.Task:
        """Probe a backend every interval from now on (probe_first: right away, else after one interval)."""
        task = self._tasks.get(backend.address)
        if task is None or task.done():
            task = asyncio.create_task(self._loop(backend, probe_first), name=f"health {backend.address}")
            self._tasks[backend.address] = task
        return task

    def unwatch(self, address: str) -> None:
        task = self._tasks.pop(address, None)
        if task is not None:
            task.cancel()
        self._metrics.backend_healthy.remove_if_present(address)

    async def probe(self, backend: Backend) -> bool:
        """Check once, learn the hands when the backend comes (back) up, rebuild the routes on a change."""
        config = self._config
        healthy = await backend.check_health(config.health_check_timeout)
        if healthy and (not backend.serving or not backend.specs):
            try:
                await backend.refresh_specs(config.describe_timeout)
            except grpc.aio.AioRpcError as exc:
                log.warning("describe failed", backend=backend.address, code=exc.code().name, details=exc.details())
                healthy = False
        if healthy != backend.serving:
            backend.serving = healthy
            if healthy:
                backend.record_success()
            log.info(
                "backend healthy" if healthy else "backend not serving",
                backend=backend.address,
                hands=sorted(backend.specs),
            )
            if backend.address in self._table.backends:
                self._table.rebuild()
        self._metrics.backend_healthy.labels(backend.address).set(1 if healthy else 0)
        return healthy

    async def _loop(self, backend: Backend, probe_first: bool) -> None:
        interval = self._config.health_check_interval
        if not probe_first:
            await asyncio.sleep(interval)
        while True:
            try:
                await self.probe(backend)
            except asyncio.CancelledError:
                raise
            except Exception:  # a probe must never kill the loop; the next one tries again
                log.exception("health probe failed", backend=backend.address)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
