"""Tenants of the gateway: API keys (hashed or from the environment), allowed hands and quota rules."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

#: The tenant of an open gateway (no tenants configured): may use every hand, no quotas.
ANONYMOUS = "anonymous"

QuotaKind = Literal["rate", "concurrency", "calls", "tokens"]
QUOTA_KINDS: tuple[QuotaKind, ...] = ("rate", "concurrency", "calls", "tokens")

WINDOWS = {"s": 1.0, "m": 60.0, "h": 3600.0, "day": 86400.0}
_PER_WINDOW = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h|day)\s*$")  # 50/s, 5/2s, 1000/12h
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_RULE_KEYS = {"hands", "burst", "reserve", *QUOTA_KINDS}
_TENANT_KEYS = {"name", "api_keys", "allow", "quotas"}


class TenantConfigError(ValueError):
    """A bad tenants entry in the gateway config; the message names the key."""


@dataclass(frozen=True)
class QuotaRule:
    """One limit of one tenant over the hands matching a glob.

    A config entry such as ``{hands: "llm_*", concurrency: 8, tokens: 2000000/day}`` becomes
    one QuotaRule per limit; all calls matching the glob share the rule's counter.
    """

    tenant: str
    id: str  # stable across replicas with the same config, e.g. "quotas[1].concurrency"
    hands: str  # fnmatch glob over hand names
    kind: QuotaKind
    limit: int  # rate: tokens added per window; concurrency: slots; calls / tokens: per window
    window: float = 0.0  # seconds; 0 for concurrency
    burst: int = 0  # rate only: bucket capacity
    reserve: int = 0  # tokens only: what each call reserves while it runs, when it does not say (budget header)

    def matches(self, hand: str) -> bool:
        return fnmatch.fnmatchcase(hand, self.hands)

    def describe(self) -> str:
        """Words for a person reading a denial: what the limit is."""
        if self.kind == "concurrency":
            return f"at most {self.limit} calls in flight to {self.hands!r}"
        per = _window_name(self.window)
        if self.kind == "rate":
            return f"rate {self.limit}/{per} (burst {self.burst}) to {self.hands!r}"
        if self.kind == "calls":
            return f"{self.limit} calls per {per} to {self.hands!r}"
        return f"{self.limit} LLM tokens per {per} in {self.hands!r}"


@dataclass(frozen=True)
class Tenant:
    """A tenant: who it is, the digests of its keys, what it may call, and its quotas."""

    name: str
    key_digests: tuple[bytes, ...] = ()
    allow: tuple[str, ...] = ("*",)
    quotas: tuple[QuotaRule, ...] = ()

    def may_use(self, hand: str) -> bool:
        return any(fnmatch.fnmatchcase(hand, pattern) for pattern in self.allow)

    def rules_for(self, hand: str) -> tuple[QuotaRule, ...]:
        return tuple(rule for rule in self.quotas if rule.matches(hand))

    def __repr__(self) -> str:  # never print key digests either
        return f"Tenant(name={self.name!r}, allow={self.allow!r}, quotas={len(self.quotas)})"


@dataclass(frozen=True)
class Tenants:
    """All tenants; with none configured the gateway is open and every caller is ANONYMOUS."""

    tenants: tuple[Tenant, ...] = ()

    @property
    def open(self) -> bool:
        return not self.tenants

    def authenticate(self, api_key: str | None) -> Tenant | None:
        """The tenant owning api_key, or None. Compares sha256 digests in constant time."""
        if self.open:
            return Tenant(name=ANONYMOUS)
        if not api_key:
            return None
        digest = hashlib.sha256(api_key.encode()).digest()
        found = None
        # Compare against every key so the time taken does not say which tenant came close.
        for tenant in self.tenants:
            for known in tenant.key_digests:
                if hmac.compare_digest(digest, known) and found is None:
                    found = tenant
        return found

    def get(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def all_rules(self) -> tuple[QuotaRule, ...]:
        return tuple(rule for tenant in self.tenants for rule in tenant.quotas)


def bearer_token(authorization: str | None) -> str | None:
    """The key in an ``authorization: Bearer <key>`` value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def hash_key(api_key: str) -> str:
    """The config form of a key: ``sha256:<hex>`` (what `brainhands` users put in gateway.yaml)."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


def parse_per_window(value: Any, where: str) -> tuple[int, float]:
    """``"50/s"`` -> (50, 1.0), ``"5/2s"`` -> (5, 2.0); windows s, m, h, day, optionally a whole number of them."""
    match = _PER_WINDOW.match(str(value)) if isinstance(value, str) else None
    if not match or int(match.group(1)) <= 0 or int(match.group(2) or 1) <= 0:
        raise TenantConfigError(f"{where}: expected N/s|m|h|day (or N/Ks, N/Km, ...) with N, K > 0, got {value!r}")
    return int(match.group(1)), int(match.group(2) or 1) * WINDOWS[match.group(3)]


def parse_tenants(raw: Any, environ: Mapping[str, str] | None = None, where: str = "tenants") -> Tenants:
    """Build Tenants from the config's ``tenants`` list; env: keys are read here, once."""
    environ = os.environ if environ is None else environ
    if raw is None:
        return Tenants()
    if not isinstance(raw, list):
        raise TenantConfigError(f"{where}: expected a list of tenants")
    tenants: list[Tenant] = []
    seen_names: set[str] = set()
    seen_keys: dict[bytes, str] = {}
    for i, entry in enumerate(raw):
        tenant = _parse_tenant(entry, f"{where}[{i}]", environ)
        if tenant.name in seen_names:
            raise TenantConfigError(f"{where}[{i}].name: duplicate tenant {tenant.name!r}")
        seen_names.add(tenant.name)
        for digest in tenant.key_digests:
            if digest in seen_keys:
                raise TenantConfigError(
                    f"{where}[{i}].api_keys: a key of {tenant.name!r} is also a key of {seen_keys[digest]!r}"
                )
            seen_keys[digest] = tenant.name
        tenants.append(tenant)
    return Tenants(tuple(tenants))


def _parse_tenant(entry: Any, where: str, environ: Mapping[str, str]) -> Tenant:
    if not isinstance(entry, dict):
        raise TenantConfigError(f"{where}: expected a mapping with name, api_keys, allow, quotas")
    unknown = set(entry) - _TENANT_KEYS
    if unknown:
        raise TenantConfigError(
            f"{where}.{sorted(unknown)[0]}: unknown key (expected {', '.join(sorted(_TENANT_KEYS))})"
        )
    name = entry.get("name")
    if not isinstance(name, str) or not _TENANT_NAME.match(name) or name == ANONYMOUS:
        raise TenantConfigError(f"{where}.name: expected a name like 'team-a' (letters, digits, _ . -), got {name!r}")
    keys = entry.get("api_keys")
    if not isinstance(keys, list) or not keys:
        raise TenantConfigError(f"{where}.api_keys: expected a non-empty list of 'sha256:<hex>' or 'env:VAR'")
    digests = tuple(_parse_key(key, f"{where}.api_keys[{j}]", environ) for j, key in enumerate(keys))
    allow = entry.get("allow", ["*"])
    if isinstance(allow, str):
        allow = [allow]
    if not isinstance(allow, list) or not all(isinstance(a, str) and a for a in allow):
        raise TenantConfigError(f"{where}.allow: expected a list of hand-name globs like 'fs_*'")
    quotas_raw = entry.get("quotas", [])
    if not isinstance(quotas_raw, list):
        raise TenantConfigError(f"{where}.quotas: expected a list of rules")
    rules: list[QuotaRule] = []
    for j, rule in enumerate(quotas_raw):
        rules.extend(_parse_rule(rule, name, j, f"{where}.quotas[{j}]"))
    return Tenant(name=name, key_digests=digests, allow=tuple(allow), quotas=tuple(rules))


def _parse_key(value: Any, where: str, environ: Mapping[str, str]) -> bytes:
    if not isinstance(value, str):
        raise TenantConfigError(f"{where}: expected 'sha256:<hex>' or 'env:VAR'")
    if value.startswith("sha256:"):
        hexdigest = value[len("sha256:") :].strip().lower()
        if not _SHA256.match(hexdigest):
            raise TenantConfigError(f"{where}: expected 'sha256:' followed by 64 hex digits")
        return bytes.fromhex(hexdigest)
    if value.startswith("env:"):
        var = value[len("env:") :].strip()
        if not var:
            raise TenantConfigError(f"{where}: expected 'env:VAR' naming an environment variable")
        key = environ.get(var)
        if not key:
            raise TenantConfigError(f"{where}: environment variable {var} is not set (or empty)")
        return hashlib.sha256(key.encode()).digest()
    # Never echo the value: it may be a plain key pasted by mistake.
    raise TenantConfigError(f"{where}: expected 'sha256:<hex>' or 'env:VAR' (plain keys are not accepted)")


def _parse_rule(entry: Any, tenant: str, index: int, where: str) -> list[QuotaRule]:
    if not isinstance(entry, dict):
        raise TenantConfigError(f"{where}: expected a mapping like {{hands: 'llm_*', rate: 50/s, burst: 100}}")
    unknown = set(entry) - _RULE_KEYS
    if unknown:
        raise TenantConfigError(
            f"{where}.{sorted(unknown)[0]}: unknown key (expected hands, rate, burst, concurrency, calls, tokens, reserve)"
        )
    hands = entry.get("hands", "*")
    if not isinstance(hands, str) or not hands:
        raise TenantConfigError(f"{where}.hands: expected a hand-name glob like 'llm_*'")
    if "burst" in entry and "rate" not in entry:
        raise TenantConfigError(f"{where}.burst: only meaningful with rate")
    reserve = entry.get("reserve", 0)
    if "reserve" in entry and "tokens" not in entry:
        raise TenantConfigError(f"{where}.reserve: only meaningful with tokens")
    if not isinstance(reserve, int) or isinstance(reserve, bool) or reserve < 0:
        raise TenantConfigError(f"{where}.reserve: expected a whole number of tokens >= 0, got {reserve!r}")
    kinds = [kind for kind in QUOTA_KINDS if kind in entry]
    if not kinds:
        raise TenantConfigError(f"{where}: expected at least one of rate, concurrency, calls, tokens")
    rules = []
    for kind in kinds:
        rule_id = f"quotas[{index}].{kind}"
        value = entry[kind]
        if kind == "concurrency":
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise TenantConfigError(f"{where}.concurrency: expected a whole number > 0, got {value!r}")
            rules.append(QuotaRule(tenant, rule_id, hands, kind, value))
            continue
        limit, window = parse_per_window(value, f"{where}.{kind}")
        burst = 0
        if kind == "rate":
            burst = entry.get("burst", limit)
            if not isinstance(burst, int) or isinstance(burst, bool) or burst <= 0:
                raise TenantConfigError(f"{where}.burst: expected a whole number > 0, got {burst!r}")
        rules.append(
            QuotaRule(tenant, rule_id, hands, kind, limit, window, burst, reserve if kind == "tokens" else 0)
        )
    return rules


def _window_name(window: float) -> str:
    return next((name for name, seconds in WINDOWS.items() if seconds == window), f"{window:g}s")


def filter_allowed(tenant: Tenant, names: Sequence[str]) -> list[str]:
    """The hand names of names that tenant may use, in order."""
    return [name for name in names if tenant.may_use(name)]
