"""Tenants of the gateway: API keys (hashed or from the environment), allowed hands and quota rules."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    RootModel,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hands.config import ConfigError, ConfigModel, config_error, invalid, string_list

#: The tenant of an open gateway (no tenants configured): may use every hand, no quotas.
ANONYMOUS = "anonymous"

QuotaKind = Literal["rate", "concurrency", "calls", "tokens"]
QUOTA_KINDS: tuple[QuotaKind, ...] = ("rate", "concurrency", "calls", "tokens")

WINDOWS = {"s": 1.0, "m": 60.0, "h": 3600.0, "day": 86400.0}
_PER_WINDOW = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h|day)\s*$")  # 50/s, 5/2s, 1000/12h
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY_FORMS = "'sha256:<hex>' or 'env:VAR'"

class TenantConfigError(ConfigError):
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


def _per_window(value: Any) -> tuple[int, float]:
    """``"50/s"`` -> (50, 1.0), ``"5/2s"`` -> (5, 2.0); windows s, m, h, day, optionally a whole number of them."""
    match = _PER_WINDOW.match(value) if isinstance(value, str) else None
    if not match or int(match.group(1)) <= 0 or int(match.group(2) or 1) <= 0:
        raise ValueError(f"expected N/s|m|h|day (or N/Ks, N/Km, ...) with N, K > 0, got {value!r}")
    return int(match.group(1)), int(match.group(2) or 1) * WINDOWS[match.group(3)]


def _reserve(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"expected a whole number of tokens >= 0, got {value!r}")
    return value


def _slots(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"expected a whole number > 0, got {value!r}")
    return value


def _glob(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a hand-name glob like 'llm_*'")
    return value


def _tenant_name(value: Any) -> str:
    if not isinstance(value, str) or not _TENANT_NAME.match(value):
        raise ValueError(f"expected a name like 'team-a' (letters, digits, _ . -), got {value!r}")
    return value


def _key_digest(value: Any, info: ValidationInfo) -> bytes:
    """The sha256 digest of a key given as ``sha256:<hex>`` or ``env:VAR`` (read from the context's environ, once)."""
    if isinstance(value, bytes) and len(value) == hashlib.sha256().digest_size:
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {_KEY_FORMS}")
    if value.startswith("sha256:"):
        hexdigest = value[len("sha256:") :].strip().lower()
        if not _SHA256.match(hexdigest):
            raise ValueError("expected 'sha256:' followed by 64 hex digits")
        return bytes.fromhex(hexdigest)
    if value.startswith("env:"):
        var = value[len("env:") :].strip()
        if not var:
            raise ValueError("expected 'env:VAR' naming an environment variable")
        environ = (info.context or {}).get("environ")
        key = (os.environ if environ is None else environ).get(var)
        if not key:
            raise ValueError(f"environment variable {var} is not set (or empty)")
        return hashlib.sha256(key.encode()).digest()
    # Never echo the value: it may be a plain key pasted by mistake.
    raise ValueError(f"expected {_KEY_FORMS} (plain keys are not accepted)")


PerWindow = Annotated[tuple[int, float], BeforeValidator(_per_window)]
Slots = Annotated[int, BeforeValidator(_slots)]


class QuotaEntry(ConfigModel):
    """One entry of a tenant's ``quotas`` list, e.g. ``{hands: "llm_*", concurrency: 8, tokens: 2000000/day}``."""

    hands: Annotated[str, BeforeValidator(_glob)] = "*"
    rate: PerWindow | None = None
    burst: Slots | None = None  # rate only: the bucket's capacity (default: the rate)
    concurrency: Slots | None = None
    calls: PerWindow | None = None
    tokens: PerWindow | None = None
    reserve: Annotated[int, BeforeValidator(_reserve)] | None = None  # tokens only: reserved per call while it runs

    @model_validator(mode="after")
    def _some_limit(self) -> QuotaEntry:
        if self.burst is not None and self.rate is None:
            raise invalid("burst", "only meaningful with rate")
        if self.reserve is not None and self.tokens is None:
            raise invalid("reserve", "only meaningful with tokens")
        if all(getattr(self, kind) is None for kind in QUOTA_KINDS):
            raise ValueError("expected at least one of rate, concurrency, calls, tokens")
        return self

    def rules(self, tenant: str, index: int) -> list[QuotaRule]:
        """One QuotaRule per limit; the entry's index makes the rule ids (``quotas[1].tokens``)."""
        rules = []
        for kind in QUOTA_KINDS:
            value = getattr(self, kind)
            if value is None:
                continue
            rule_id = f"quotas[{index}].{kind}"
            if kind == "concurrency":
                rules.append(QuotaRule(tenant, rule_id, self.hands, kind, value))
            else:
                limit, window = value
                burst = (self.burst or limit) if kind == "rate" else 0
                reserve = (self.reserve or 0) if kind == "tokens" else 0
                rules.append(QuotaRule(tenant, rule_id, self.hands, kind, limit, window, burst, reserve))
        return rules


_QUOTA_ENTRIES = TypeAdapter(tuple[QuotaEntry, ...])


class Tenant(ConfigModel):
    """A tenant: who it is, the digests of its keys, what it may call, and its quotas."""

    name: Annotated[str, BeforeValidator(_tenant_name)]
    # The sha256 digests of its keys; the config gives each as 'sha256:<hex>' or 'env:VAR'.
    api_keys: tuple[Annotated[bytes, BeforeValidator(_key_digest)], ...] = Field((), repr=False)
    allow: string_list("expected a list of hand-name globs like 'fs_*'") = ("*",)
    # One rule per limit; the config gives entries such as {hands: "llm_*", concurrency: 8, tokens: 2000000/day}.
    quotas: tuple[InstanceOf[QuotaRule], ...] = ()

    @field_validator("quotas", mode="before")
    @classmethod
    def _rules_of_entries(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list | tuple) and all(isinstance(v, QuotaRule) for v in value):
            return value
        entries = _QUOTA_ENTRIES.validate_python(value, context=info.context)
        name = info.data.get("name", "")
        return tuple(rule for index, entry in enumerate(entries) for rule in entry.rules(name, index))

    def may_use(self, hand: str) -> bool:
        return any(fnmatch.fnmatchcase(hand, pattern) for pattern in self.allow)

    def rules_for(self, hand: str) -> tuple[QuotaRule, ...]:
        return tuple(rule for rule in self.quotas if rule.matches(hand))

    def __repr__(self) -> str:  # never print key digests either
        return f"Tenant(name={self.name!r}, allow={self.allow!r}, quotas={len(self.quotas)})"

    __str__ = __repr__


class Tenants(RootModel[tuple[Tenant, ...]]):
    """All tenants (the config's ``tenants`` list); with none the gateway is open and every caller is ANONYMOUS."""

    model_config = ConfigDict(frozen=True)

    root: tuple[Tenant, ...] = ()

    @model_validator(mode="after")
    def _distinct(self) -> Tenants:
        seen_names: set[str] = set()
        seen_keys: dict[bytes, str] = {}
        for i, tenant in enumerate(self.root):
            if tenant.name == ANONYMOUS:
                raise invalid((i, "name"), f"{ANONYMOUS!r} is the caller of an open gateway; choose another name")
            if tenant.name in seen_names:
                raise invalid((i, "name"), f"duplicate tenant {tenant.name!r}")
            seen_names.add(tenant.name)
            if not tenant.api_keys:
                raise invalid((i, "api_keys"), f"expected a non-empty list of {_KEY_FORMS}")
            for digest in tenant.api_keys:
                if digest in seen_keys:
                    raise invalid(
                        (i, "api_keys"), f"a key of {tenant.name!r} is also a key of {seen_keys[digest]!r}"
                    )
                seen_keys[digest] = tenant.name
        return self

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return self.root

    @property
    def open(self) -> bool:
        return not self.root

    def authenticate(self, api_key: str | None) -> Tenant | None:
        """The tenant owning api_key, or None. Compares sha256 digests in constant time."""
        if self.open:
            return Tenant(name=ANONYMOUS)
        if not api_key:
            return None
        digest = hashlib.sha256(api_key.encode()).digest()
        found = None
        # Compare against every key so the time taken does not say which tenant came close.
        for tenant in self.root:
            for known in tenant.api_keys:
                if hmac.compare_digest(digest, known) and found is None:
                    found = tenant
        return found

    def get(self, name: str) -> Tenant | None:
        return next((t for t in self.root if t.name == name), None)


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


def parse_tenants(raw: Any, environ: Mapping[str, str] | None = None, where: str = "tenants") -> Tenants:
    """Build Tenants from the config's ``tenants`` list; env: keys are read here, once."""
    try:
        return Tenants.model_validate(() if raw is None else raw, context={"environ": environ})
    except ValidationError as exc:
        raise config_error(exc, prefix=where, error=TenantConfigError) from None


def _window_name(window: float) -> str:
    return next((name for name, seconds in WINDOWS.items() if seconds == window), f"{window:g}s")
