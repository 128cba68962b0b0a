"""The gateway's config file (YAML), read once into frozen, validated dataclasses."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from gateway.tenants import TenantConfigError, Tenants, parse_tenants
from gateway.tls import TlsConfig, TlsConfigError, parse_tls

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ConfigError(ValueError):
    """A bad gateway config; the message names the key, e.g. `routes[0].backends: ...`."""


@dataclass(frozen=True)
class Backoff:
    """How long an ejected backend stays out: base * 2**(ejections in a row - 1), at most max (seconds)."""

    base: float = 1.0
    max: float = 30.0

    def delay(self, ejections_in_a_row: int) -> float:
        return min(self.max, self.base * (2 ** max(0, ejections_in_a_row - 1)))


@dataclass(frozen=True)
class Route:
    """Static backends, and the hand-name globs the gateway routes to them."""

    hands: tuple[str, ...]
    backends: tuple[str, ...]


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs, fixed at start."""

    listen: str = "127.0.0.1:50051"
    metrics: str | None = "127.0.0.1:9464"  # host:port of the Prometheus HTTP server; None turns it off
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    health_check_interval: float = 5.0
    health_check_timeout: float = 2.0
    eject_after_failures: int = 3
    eject_backoff: Backoff = field(default_factory=Backoff)
    default_lease_ttl: float = 15.0
    max_lease_ttl: float = 300.0
    max_attempts: int = 3  # per call, across replicas; the caller's deadline bounds them too
    describe_timeout: float = 5.0
    routes: tuple[Route, ...] = ()
    # Who may call, over what, and how much (gateway/tls.py, gateway/tenants.py, gateway/quotas/).
    tls: TlsConfig = field(default_factory=TlsConfig)
    tenants: Tenants = field(default_factory=Tenants)  # none: an open gateway
    quota_store: str = "memory"  # or redis://host:port/db, shared by replicas
    quota_lease: float = 30.0  # how long a dead gateway's concurrency slots stay taken
    fail_open: bool = False  # admit calls when the quota store is down
    mcp: str | None = None  # host:port of the MCP front (streamable HTTP, gateway/mcp_front.py); None: no MCP front

    @property
    def listen_host(self) -> str:
        return split_address(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return split_address(self.listen)[1]


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_address(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    m = _ADDRESS.match(value)
    return bool(m) and int(m.group(2)) <= 65535


def _address(value: Any, key: str) -> str:
    if not is_address(value):
        raise ConfigError(f"{key}: must be host:port, got {value!r}")
    return value


def _duration(value: Any, key: str, *, positive: bool = True) -> float:
    """Seconds from a number or a string like '500ms', '2s', '1m'."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: must be a duration like 2s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(f"{key}: must be a duration like 2s or 500ms, got {value!r}")
    if positive and seconds <= 0:
        raise ConfigError(f"{key}: must be more than zero, got {value!r}")
    return seconds


def _int(value: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key}: must be an integer >= {minimum}, got {value!r}")
    return value


def _str_list(value: Any, key: str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a list of {what}")
    return tuple(value)


def _route(raw: Any, key: str) -> Route:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: must be a mapping with hands and backends")
    unknown = sorted(set(raw) - {"hands", "backends"})
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: unknown key (expected hands, backends)")
    hands = _str_list(raw.get("hands", ["*"]), f"{key}.hands", "hand-name globs")
    if "backends" not in raw:
        raise ConfigError(f"{key}.backends: missing; list the host:port of each backend")
    backends = raw["backends"]
    if isinstance(backends, str):
        backends = [backends]
    if not isinstance(backends, list) or not backends or not all(is_address(b) for b in backends):
        raise ConfigError(f"{key}.backends: must be a list of host:port, got {raw['backends']!r}")
    return Route(hands=hands, backends=tuple(backends))


_KEYS = {
    "listen", "metrics", "max_message_bytes", "health_check_interval", "health_check_timeout",
    "eject_after_failures", "eject_backoff", "default_lease_ttl", "max_lease_ttl", "max_attempts",
    "describe_timeout", "routes", "tls", "tenants", "quota_store", "quota_lease", "fail_open", "mcp",
}  # fmt: skip


def parse_config(raw: Any) -> GatewayConfig:
    """Validate a parsed YAML document; ConfigError names the first bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError("config: must be a mapping of keys (listen, routes, ...)")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    d = GatewayConfig()
    kw: dict[str, Any] = {}
    if "listen" in raw:
        kw["listen"] = _address(raw["listen"], "listen")
    if "metrics" in raw:
        kw["metrics"] = None if raw["metrics"] in (None, False) else _address(raw["metrics"], "metrics")
    if "max_message_bytes" in raw:
        kw["max_message_bytes"] = _int(raw["max_message_bytes"], "max_message_bytes", 1024)
    for key in ("health_check_interval", "health_check_timeout", "default_lease_ttl", "max_lease_ttl", "describe_timeout"):
        if key in raw:
            kw[key] = _duration(raw[key], key)
    if "eject_after_failures" in raw:
        kw["eject_after_failures"] = _int(raw["eject_after_failures"], "eject_after_failures")
    if "max_attempts" in raw:
        kw["max_attempts"] = _int(raw["max_attempts"], "max_attempts")
    if "eject_backoff" in raw:
        eb = raw["eject_backoff"]
        if not isinstance(eb, Mapping):
            raise ConfigError("eject_backoff: must be a mapping with base and max, e.g. {base: 1s, max: 30s}")
        bad = sorted(set(eb) - {"base", "max"})
        if bad:
            raise ConfigError(f"eject_backoff.{bad[0]}: unknown key (expected base, max)")
        base = _duration(eb.get("base", d.eject_backoff.base), "eject_backoff.base")
        top = _duration(eb.get("max", max(base, d.eject_backoff.max)), "eject_backoff.max")
        if top < base:
            raise ConfigError(f"eject_backoff.max: must be at least eject_backoff.base ({base:g}s)")
        kw["eject_backoff"] = Backoff(base=base, max=top)
    if "routes" in raw:
        routes = raw["routes"] or []
        if not isinstance(routes, list):
            raise ConfigError("routes: must be a list of {hands: [...], backends: [...]}")
        kw["routes"] = tuple(_route(r, f"routes[{i}]") for i, r in enumerate(routes))
    try:
        if "tls" in raw:
            kw["tls"] = parse_tls(raw["tls"])
        if "tenants" in raw:
            kw["tenants"] = parse_tenants(raw["tenants"])  # reads env: keys now, once
    except (TlsConfigError, TenantConfigError) as exc:
        raise ConfigError(str(exc)) from None
    if "quota_store" in raw:
        store = raw["quota_store"]
        if not isinstance(store, str) or not (store == "memory" or store.startswith(("redis://", "rediss://", "unix://"))):
            raise ConfigError(f"quota_store: must be 'memory' or a redis:// URL, got {store!r}")
        kw["quota_store"] = store
    if "quota_lease" in raw:
        kw["quota_lease"] = _duration(raw["quota_lease"], "quota_lease")
    if "fail_open" in raw:
        if not isinstance(raw["fail_open"], bool):
            raise ConfigError(f"fail_open: must be true or false, got {raw['fail_open']!r}")
        kw["fail_open"] = raw["fail_open"]
    if raw.get("mcp") not in (None, False):
        kw["mcp"] = _address(raw["mcp"], "mcp")
    config = GatewayConfig(**kw)
    if config.mcp is not None and config.tls.cert is not None:
        # The MCP front reaches the gRPC front on loopback with the caller's key, over plaintext for now.
        raise ConfigError("mcp: the MCP front needs a plaintext gRPC front; remove tls.cert or the mcp key")
    if config.default_lease_ttl > config.max_lease_ttl:
        raise ConfigError(f"default_lease_ttl: must be at most max_lease_ttl ({config.max_lease_ttl:g}s)")
    return config


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
        raise ConfigError(f"{path}: {exc}") from None
