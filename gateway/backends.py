"""A backend hand service: its one long-lived channel, its hands, calls in flight, health and ejection."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Backoff, GatewayConfig
from hands.serving import reconnect_options
from hands.v1 import hands_pb2, hands_pb2_grpc

EXECUTE_METHOD = "/hands.v1.HandService/Execute"
HAND_SERVICE = "hands.v1.HandService"

STATIC = "static"
REGISTERED = "registered"


def channel_options(config: GatewayConfig) -> list[tuple[str, object]]:
    """Options for every backend channel: message limits, keepalive, and quick reconnects.

    grpc's default reconnect back-off grows to 120 s; a replica restarted at the same
    address would then sit idle for minutes, so cap it near the health-check interval.
    """
    reconnect_ms = max(100, int(min(config.health_check_interval, 5.0) * 1000))
    return [
        # A little headroom above the limit so the backend, not the channel, judges an oversized input.
        ("grpc.max_send_message_length", config.max_message_bytes + 64 * 1024),
        ("grpc.max_receive_message_length", config.max_message_bytes + 64 * 1024),
        *reconnect_options(reconnect_ms),
    ]


class Backend:
    """One hand service behind the gateway. Built once; per call only counters change."""

    __slots__ = (
        "address", "source", "allow", "channel", "execute", "_describe", "_health", "health_service",
        "specs", "serving", "in_flight", "consecutive_failures", "ejections", "ejected_until",
        "lease_id", "lease_ttl", "lease_expires",
    )  # fmt: skip

    def __init__(self, address: str, config: GatewayConfig, *, source: str = STATIC, allow: Sequence[str] = ("*",)):
        self.address = address
        self.source = source
        self.allow = tuple(allow)
        self.channel = config.tls.backend_channel(address, channel_options(config))  # TLS when configured
        # Bytes in, bytes out: the gateway forwards the caller's request and the hand's response unparsed.
        self.execute = self.channel.unary_unary(EXECUTE_METHOD)
        self._describe = hands_pb2_grpc.HandServiceStub(self.channel).Describe
        self._health = health_pb2_grpc.HealthStub(self.channel).Check
        self.health_service = HAND_SERVICE
        self.specs: dict[str, hands_pb2.HandSpec] = {}
        self.serving = False
        self.in_flight = 0
        self.consecutive_failures = 0
        self.ejections = 0
        self.ejected_until = 0.0  # time.monotonic(); 0 when not ejected
        self.lease_id = ""
        self.lease_ttl = 0.0
        self.lease_expires = 0.0  # time.monotonic()

    def __repr__(self) -> str:
        return f"Backend({self.address!r}, {self.source}, serving={self.serving}, in_flight={self.in_flight})"

    def usable(self) -> bool:
        """May take a call now: SERVING, not ejected, and its channel not known to be failing."""
        if not self.serving:
            return False
        if self.ejected_until and self.ejected_until > time.monotonic():
            return False
        # A channel in TRANSIENT_FAILURE would refuse the call anyway; skip it rather than spend an attempt.
        return self.channel.get_state() is not grpc.ChannelConnectivity.TRANSIENT_FAILURE

    @property
    def ejected(self) -> bool:
        return bool(self.ejected_until) and self.ejected_until > time.monotonic()

    async def refresh_specs(self, timeout: float) -> dict[str, hands_pb2.HandSpec]:
        """Ask the backend's Describe which hands it serves, keeping those its route allows."""
        response = await self._describe(hands_pb2.DescribeRequest(), timeout=timeout)
        specs = {
            s.name: s
            for s in response.hands
            if any(fnmatch.fnmatchcase(s.name, pattern) for pattern in self.allow)
        }
        self.specs = specs
        return specs

    async def check_health(self, timeout: float) -> bool:
        """One grpc.health.v1 Check: True when the backend says SERVING."""
        try:
            reply = await self._health(health_pb2.HealthCheckRequest(service=self.health_service), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.NOT_FOUND and self.health_service:
                # Not every hand service names its service in health; fall back to the server-wide status.
                self.health_service = ""
                return await self.check_health(timeout)
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def record_success(self) -> None:
        if self.consecutive_failures:
            self.consecutive_failures = 0
            self.ejections = 0
            self.ejected_until = 0.0

    def record_failure(self, threshold: int, backoff: Backoff) -> float:
        """Count a transport failure; returns the ejection time in seconds when this one ejects it, else 0."""
        self.consecutive_failures += 1
        if self.consecutive_failures < threshold or self.ejected:
            return 0.0
        self.ejections += 1
        delay = backoff.delay(self.ejections)
        self.ejected_until = time.monotonic() + delay
        return delay

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)
