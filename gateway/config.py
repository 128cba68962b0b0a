"""The gateway's config file (YAML), read once into frozen, validated models."""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, field_validator, model_validator

from gateway.roles import Operator, Registrant
from gateway.tenants import Tenants
from gateway.tls import TlsConfig
from hands.config import ConfigError, ConfigModel, Duration, Flag, invalid, seconds, string_list, whole

__all__ = ["Backoff", "ConfigError", "GatewayConfig", "Route", "is_address", "load_config", "parse_config"]

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    m = _ADDRESS.match(value)
    return bool(m) and int(m.group(2)) <= 65535


def _address(value: Any) -> str:
    if not is_address(value):
        raise ValueError(f"must be host:port, got {value!r}")
    return value


def _addresses(value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(is_address(b) for b in items):
        raise ValueError(f"must be a list of host:port, got {value!r}")
    return tuple(items)


def _secret_from_env(value: Any, info) -> bytes | None:
    """A secret named as ``env:VAR`` (never written in the file), read now; at least 32 bytes."""
    if value is None or isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not value.startswith("env:") or not value[4:].strip():
        raise ValueError("expected 'env:VAR' naming an environment variable that holds the key")
    var = value[4:].strip()
    environ = (info.context or {}).get("environ") or os.environ
    secret = environ.get(var, "")
    if len(secret.encode()) < 32:
        raise ValueError(f"environment variable {var} must hold at least 32 bytes (it has {len(secret.encode())})")
    return secret.encode()


def _store(value: Any) -> str:
    if not isinstance(value, str) or not (value == "memory" or value.startswith(("redis://", "rediss://", "unix://"))):
        raise ValueError(f"must be 'memory' or a redis:// URL, got {value!r}")
    return value


#: 'memory' or a redis:// URL.
Store = Annotated[str, BeforeValidator(_store)]


#: host:port, or [v6 address]:port.
Address = Annotated[str, BeforeValidator(_address)]


def _seconds_or_off(value: Any) -> float:
    if value is False or (isinstance(value, str) and re.fullmatch(r"\s*0+(\.0*)?\s*(ms|s|m|h)?\s*", value)):
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return 0.0
    return seconds(value)


#: A Duration, or 0 (or false) for "off".
DurationOrOff = Annotated[float, BeforeValidator(_seconds_or_off)]


class Backoff(ConfigModel):
    """How long an ejected backend stays out: base * 2**(ejections in a row - 1), at most max (seconds)."""

    base: Duration = 1.0
    max: Duration = 30.0

    @model_validator(mode="before")
    @classmethod
    def _max_follows_a_large_base(cls, data: Any) -> Any:
        # {base: 1m} alone means a backoff of one minute, not an error about the default max of 30s.
        if isinstance(data, Mapping) and "base" in data and "max" not in data:
            try:
                return {**data, "max": max(seconds(data["base"]), cls.model_fields["max"].default)}
            except ValueError:
                return data  # the base's own error says what is wrong
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Backoff:
        if self.max < self.base:
            raise invalid("max", f"must be at least base ({self.base:g}s)")
        return self

    def delay(self, ejections_in_a_row: int) -> float:
        return min(self.max, self.base * (2 ** max(0, ejections_in_a_row - 1)))


class Route(ConfigModel):
    """Static backends, and the hand-name globs the gateway routes to them."""

    hands: string_list("must be a list of hand-name globs") = ("*",)
    backends: Annotated[tuple[str, ...], BeforeValidator(_addresses)] = Field(
        description="list the host:port of each backend"
    )


class GatewayConfig(ConfigModel):
    """Everything the gateway needs, fixed at start."""

    listen: Address = "127.0.0.1:50051"
    metrics: Address | None = "127.0.0.1:9464"  # host:port of the Prometheus HTTP server; None (or false) turns it off
    max_message_bytes: whole(1024) = DEFAULT_MAX_MESSAGE_BYTES
    health_check_interval: Duration = 5.0
    health_check_timeout: Duration = 2.0
    eject_after_failures: whole(1) = 3
    eject_backoff: Backoff = Backoff()
    default_lease_ttl: Duration = 15.0
    max_lease_ttl: Duration = 300.0
    max_attempts: whole(1) = 3  # per call, across replicas; the caller's deadline bounds them too
    describe_timeout: Duration = 5.0
    # A static backend given by name (not an IP) is one backend per address it resolves to, re-resolved this often.
    dns_refresh: Duration = 5.0
    # After start, a hand name the gateway does not know yet is UNAVAILABLE (replicas may still be registering),
    # not NOT_FOUND; 0 turns it off.
    startup_grace: DurationOrOff = 10.0
    routes: tuple[Route, ...] = ()
    # Who may call, over what, and how much (gateway/tls.py, gateway/tenants.py, gateway/quotas/).
    tls: TlsConfig = TlsConfig()
    tenants: Tenants = Tenants()  # none: an open gateway
    quota_store: Store = "memory"  # or redis://host:port/db, shared by replicas
    quota_lease: Duration = 30.0  # how long a dead gateway's concurrency slots stay taken
    fail_open: Flag = False  # admit calls when the quota store is down
    mcp: Address | None = None  # host:port of the MCP front (streamable HTTP, gateway/mcp_front.py); None: no MCP front
    # Who may register backends (and for which hands), and who may list them (gateway/roles.py). With no
    # registrants, RegistryService takes only loopback callers: the embedded stack.
    registrants: tuple[Registrant, ...] = ()
    operators: tuple[Operator, ...] = ()
    # Where leases of registered backends live (gateway/leases/): 'memory' (this process) or a redis:// URL that
    # every replica shares. None: the quota store's Redis when that is Redis, else memory.
    registry_store: Store | None = None
    registry_prefix: str = Field("brainhands:registry", min_length=1)  # of the registry's Redis keys
    registry_refresh: Duration = 0.25  # how often a replica reads the shared leases (ids and expiries; records once)
    # The HMAC key of the delegations the gateway signs for forwarded calls (gateway/delegation.py); None: a
    # random key per start, which replicas do not share (give them all the same env:VAR).
    delegation_key: Annotated[bytes | None, BeforeValidator(_secret_from_env)] = Field(None, repr=False)
    delegation_ttl: Duration = 600.0  # longest a delegation lives; a call's deadline bounds it further

    @field_validator("metrics", "mcp", mode="before")
    @classmethod
    def _false_is_off(cls, value: Any) -> Any:
        return None if value is False else value

    @field_validator("routes", "tls", "tenants", "registrants", "operators", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any, info) -> Any:
        return cls.model_fields[info.field_name].default if value is None else value

    @model_validator(mode="after")
    def _consistent(self) -> GatewayConfig:
        if self.mcp is not None and self.tls.cert is not None:
            # The MCP front reaches the gRPC front on loopback with the caller's key, over plaintext for now.
            raise invalid("mcp", "the MCP front needs a plaintext gRPC front; remove tls.cert or the mcp key")
        names = [r.name for r in self.registrants]
        if len(set(names)) != len(names):
            raise invalid("registrants", "two registrants have the same name")
        if any(r.cert_subjects for r in self.registrants) and self.tls.client_ca is None:
            raise invalid("registrants", "cert_subjects need client certificates; set tls.client_ca")
        if self.default_lease_ttl > self.max_lease_ttl:
            raise invalid("default_lease_ttl", f"must be at most max_lease_ttl ({self.max_lease_ttl:g}s)")
        return self

    @property
    def registry(self) -> str:
        """The registry store in use: registry_store, else the quota store when that is Redis, else memory."""
        if self.registry_store is not None:
            return self.registry_store
        return self.quota_store if self.quota_store != "memory" else "memory"

    @property
    def listen_host(self) -> str:
        return split_address(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_address(self.listen)[1]


def parse_config(raw: Any, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate a parsed YAML document; ConfigError names the first bad key. env: keys are read now, once."""
    return GatewayConfig.parse(raw, context={"environ": os.environ if environ is None else environ})


def load_config(path: str | pathlib.Path) -> GatewayConfig:
    """Read and validate a config file; ConfigError says what is wrong and where."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read gateway config {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    try:
        return parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}", key=exc.key, reason=exc.reason) from None
