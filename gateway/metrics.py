"""The gateway's Prometheus metrics, on a registry of its own, served over HTTP."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from gateway.config import split_address

#: Latency buckets in seconds: hands range from sub-millisecond file reads to minutes-long LLM workers.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _BackendGauge:
    """backend_healthy{backend}, with removal when a backend leaves."""

    def __init__(self, gauge: Gauge):
        self._gauge = gauge

    def labels(self, backend: str):
        return self._gauge.labels(backend)

    def remove_if_present(self, backend: str) -> None:
        with contextlib.suppress(KeyError):
            self._gauge.remove(backend)


class GatewayMetrics:
    """Counters the call path updates; label children are cached so a call does no registry lookup."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls = Counter(
            "brainhands_gateway_calls", "Calls through the gateway by hand, tenant and status code.",
            ["hand", "tenant", "code"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "brainhands_gateway_call_duration_seconds", "Time from a call's arrival to its answer, by hand.",
            ["hand"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("brainhands_gateway_calls_in_flight", "Calls the gateway is handling now.", registry=r)
        self.backend_healthy = _BackendGauge(
            Gauge("brainhands_gateway_backend_healthy", "1 when a backend passes its health check.", ["backend"], registry=r)
        )
        self.retries = Counter(
            "brainhands_gateway_retries", "Calls re-sent to another replica, by hand and why.",
            ["hand", "reason"], registry=r,
        )  # fmt: skip
        self.ejections = Counter(
            "brainhands_gateway_backend_ejections", "Backends taken out after failing calls in a row.",
            ["backend"], registry=r,
        )  # fmt: skip
        self._call_children: dict[tuple[str, str, str], object] = {}
        self._duration_children: dict[str, object] = {}
        self._http = None

    def observe_call(self, hand: str, tenant: str, code: str, seconds: float) -> None:
        key = (hand, tenant, code)
        child = self._call_children.get(key)
        if child is None:
            child = self._call_children[key] = self.calls.labels(hand, tenant, code)
        child.inc()
        timer = self._duration_children.get(hand)
        if timer is None:
            timer = self._duration_children[hand] = self.duration.labels(hand)
        timer.observe(seconds)

    def serve(self, address: str) -> int:
        """Serve /metrics over HTTP on host:port (port 0 picks one); returns the bound port."""
        host, port = split_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return server.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
