"""The hand side of the registry: register with a gateway, heartbeat the lease, deregister on drain."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import grpc
import structlog

from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands.config import pem_file
from hands.serving import RunningServer, reconnect_options

log = structlog.get_logger("hands.registration")

_RPC_TIMEOUT = 5.0
#: Reconnect at least this often while the gateway is gone: grpc's default backoff (1 s growing to 120 s) would
#: leave a gateway restarted on its port without this replica for seconds to minutes, far past the lease TTL.
_CHANNEL_OPTIONS = reconnect_options(500)


@dataclass(frozen=True)
class RegistrationCredentials:
    """What a hand service presents to the gateway it registers with: a registrant key, TLS trust, a client cert."""

    key: str | None = field(default=None, repr=False)
    ca: bytes | None = field(default=None, repr=False)
    cert: bytes | None = field(default=None, repr=False)
    private_key: bytes | None = field(default=None, repr=False)

    @classmethod
    def load(cls, *, key=None, ca=None, cert=None, private_key=None) -> RegistrationCredentials:
        """From a key and PEM file paths; ValueError naming the flag for a file that cannot be read or a lone cert."""
        if (cert is None) != (private_key is None):
            raise ValueError("--register-tls-cert and --register-tls-key go together; give both or neither")
        if cert is not None and ca is None:
            raise ValueError("--register-tls-cert needs --register-tls-ca (mTLS is TLS with a client certificate)")

        def read(path, flag):
            if path is None:
                return None
            try:
                return pem_file(path)
            except ValueError as exc:
                raise ValueError(f"{flag}: {exc}") from None

        return cls(key=key, ca=read(ca, "--register-tls-ca"), cert=read(cert, "--register-tls-cert"),
                   private_key=read(private_key, "--register-tls-key"))  # fmt: skip

    def channel(self, gateway: str, options) -> grpc.aio.Channel:
        if self.ca is None:
            return grpc.aio.insecure_channel(gateway, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.private_key, certificate_chain=self.cert
        )
        return grpc.aio.secure_channel(gateway, credentials, options=options)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.key}"),) if self.key else ()


class Registration:
    """A lease on one gateway, kept alive by a background task until close()."""

    def __init__(
        self,
        gateway: str,
        advertise: str,
        lease_ttl: float | None = None,
        credentials: RegistrationCredentials | None = None,
    ):
        self.gateway = gateway
        self.advertise = advertise
        self._asked_ttl = lease_ttl
        credentials = credentials or RegistrationCredentials()
        self._metadata = credentials.metadata()
        self._channel = credentials.channel(gateway, _CHANNEL_OPTIONS)
        self._stub = gateway_pb2_grpc.RegistryServiceStub(self._channel)
        self.lease_id = ""
        self.lease_ttl = 0.0
        self._task: asyncio.Task | None = None

    async def register(self) -> None:
        request = gateway_pb2.RegisterRequest(address=self.advertise)
        if self._asked_ttl:
            request.lease_ttl.FromMilliseconds(int(self._asked_ttl * 1000))
        reply = await self._stub.Register(request, timeout=_RPC_TIMEOUT, metadata=self._metadata)
        self.lease_id = reply.lease_id
        self.lease_ttl = reply.lease_ttl.ToMilliseconds() / 1000
        log.info("registered", gateway=self.gateway, address=self.advertise, hands=list(reply.hands), lease_ttl_s=self.lease_ttl)

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep(), name=f"lease on {self.gateway}")

    async def _keep(self) -> None:
        """Heartbeat at a third of the lease; on a lost lease or a failed registration, register again."""
        retry = 0.2
        while True:
            if not self.lease_id:
                try:
                    await self.register()
                    retry = 0.2
                except grpc.aio.AioRpcError as exc:
                    log.warning("registration failed", gateway=self.gateway, code=exc.code().name, details=exc.details())
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, 5.0)
                    continue
            await asyncio.sleep(max(0.05, self.lease_ttl / 3))
            try:
                await self._stub.Heartbeat(
                    gateway_pb2.HeartbeatRequest(lease_id=self.lease_id), timeout=_RPC_TIMEOUT, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() is grpc.StatusCode.NOT_FOUND:
                    log.warning("lease lost; registering again", gateway=self.gateway)
                    self.lease_id = ""
                else:
                    log.warning("heartbeat failed", gateway=self.gateway, code=exc.code().name, details=exc.details())

    async def close(self) -> None:
        """Stop heartbeating and deregister, so the gateway stops sending calls before we stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lease_id:
            try:
                await self._stub.Deregister(
                    gateway_pb2.DeregisterRequest(lease_id=self.lease_id), timeout=2.0, metadata=self._metadata
                )
                log.info("deregistered", gateway=self.gateway)
            except grpc.aio.AioRpcError as exc:
                log.warning("deregister failed", gateway=self.gateway, code=exc.code().name, details=exc.details())
            self.lease_id = ""
        await self._channel.close()


async def keep_registered(
    running: RunningServer,
    gateway: str,
    advertise: str,
    *,
    lease_ttl: float | None = None,
    credentials: RegistrationCredentials | None = None,
) -> Registration:
    """Register running with the gateway, keep the lease alive, and deregister when it drains.

    The first attempt happens here so a wrong address shows at start-up; if the gateway is
    not up yet the background task keeps trying.
    """
    registration = Registration(gateway, advertise, lease_ttl, credentials)
    try:
        await registration.register()
    except grpc.aio.AioRpcError as exc:
        log.warning(
            "gateway did not accept the registration yet; retrying in the background",
            gateway=gateway,
            code=exc.code().name,
            details=exc.details(),
        )
    registration.start()
    running.on_drain.append(registration.close)
    return registration
