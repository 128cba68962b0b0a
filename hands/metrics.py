"""Prometheus metrics for a hand service (brainhands_hand_*), on a registry of its own, served over HTTP."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: The gateway's latency buckets, so a hand's and the gateway's histograms line up on one graph.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def split_metrics_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or :PORT, meaning 127.0.0.1) as given to --metrics; ValueError names what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--metrics: write HOST:PORT (port 0 picks a free one), not {address!r}")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class MetricsHttp:
    """A /metrics HTTP endpoint for one registry; port 0 picks a free port."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._http = None
        self.port: int | None = None

    def serve(self, address: str) -> int:
        host, port = split_metrics_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        self.port = server.server_port
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class HandMetrics(MetricsHttp):
    """What every hand service counts: calls by hand and outcome, their durations, calls in flight.

    outcome is `ok`, `is_error` (the hand ran and failed), or the gRPC status name of a refused or
    failed call (INVALID_ARGUMENT, NOT_FOUND, DEADLINE_EXCEEDED, INTERNAL, CANCELLED).
    """

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        r = self.registry
        self.calls = Counter(
            "brainhands_hand_calls", "Calls this hand service answered, by hand and outcome.",
            ["hand", "outcome"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "brainhands_hand_call_duration_seconds", "Time a call took in the hand service, by hand.",
            ["hand"], buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "brainhands_hand_calls_in_flight", "Calls the hand service is running now, by hand.", ["hand"], registry=r
        )

    def started(self, hand: str) -> None:
        self.in_flight.labels(hand).inc()
