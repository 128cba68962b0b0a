"""Delegations: the short-lived, signed identity the gateway adds to each call it forwards.

A hand that calls other hands for its caller (llm_worker, agent, any hand using ``ctx.client()``) presents the
delegation of the call it serves instead of an API key. The gateway verifies it and treats the nested call as
the original tenant's: its allow list, its quotas, its memory. A delegation never widens what its caller had:
the depth only grows, the budget only shrinks and it expires no later than the outer call's.

Token: ``v1.<payload>.<mac>``, both parts base64url without padding; payload is compact JSON
``{"t": tenant, "s": session, "d": depth, "e": expiry (ms since the epoch), "bt": tokens left, "bc": calls left,
"k": key id}``; mac is HMAC-SHA256 over ``v1.<payload>`` with the key named by ``k``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

VERSION = "v1"


class DelegationError(ValueError):
    """A delegation the gateway will not honour; the message says why (never the token)."""


@dataclass(frozen=True)
class Delegation:
    """Whom a forwarded call acts for, how deep it is, until when, and what is left of the budget."""

    tenant: str
    session: str = ""
    depth: int = 0
    expires: float = 0.0  # wall-clock seconds since the epoch
    budget_tokens: int | None = None
    budget_calls: int | None = None
    key_id: str = ""


class DelegationKeys(Protocol):
    """Where signing keys come from: one per process (StaticKeys), or a store every replica shares."""

    def signing_key(self) -> tuple[str, bytes]:
        """The key id and key to sign with now."""
        ...

    def lookup(self, key_id: str) -> bytes | None:
        """The key a token names, or None if unknown (rotated out, another gateway's)."""
        ...


class StaticKeys:
    """One HMAC key: from the config (shared by every replica given it) or random for this process."""

    def __init__(self, key: bytes | None = None):
        self.generated = key is None
        self._key = key if key is not None else secrets.token_bytes(32)
        self._id = hashlib.sha256(b"brainhands-delegation-key-id:" + self._key).hexdigest()[:12]

    def signing_key(self) -> tuple[str, bytes]:
        return self._id, self._key

    def lookup(self, key_id: str) -> bytes | None:
        return self._key if hmac.compare_digest(key_id, self._id) else None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Delegations:
    """Signs delegations for forwarded calls and verifies the ones nested calls present."""

    def __init__(self, keys: DelegationKeys, ttl: float = 600.0):
        self.keys = keys
        self.ttl = ttl

    def sign(self, delegation: Delegation) -> str:
        key_id, key = self.keys.signing_key()
        claims = {"t": delegation.tenant, "s": delegation.session, "d": delegation.depth,
                  "e": round(delegation.expires * 1000), "k": key_id}  # fmt: skip
        if delegation.budget_tokens is not None:
            claims["bt"] = delegation.budget_tokens
        if delegation.budget_calls is not None:
            claims["bc"] = delegation.budget_calls
        signed = f"{VERSION}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
        mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
        return f"{signed}.{_b64(mac)}"

    def verify(self, token: str, now: float | None = None) -> Delegation:
        """The delegation a token carries; DelegationError if it is malformed, forged or expired."""
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != VERSION or len(token) > 4096:
            raise DelegationError("the delegation is malformed")
        try:
            claims = json.loads(_unb64(parts[1]))
            mac = _unb64(parts[2])
        except (ValueError, UnicodeDecodeError):
            raise DelegationError("the delegation is malformed") from None
        if not isinstance(claims, dict):
            raise DelegationError("the delegation is malformed")
        key = self.keys.lookup(str(claims.get("k", "")))
        if key is None:
            raise DelegationError("the delegation was signed with a key this gateway does not have")
        expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise DelegationError("the delegation's signature is not valid")
        try:
            delegation = Delegation(
                tenant=str(claims["t"]),
                session=str(claims.get("s", "")),
                depth=int(claims["d"]),
                expires=int(claims["e"]) / 1000,
                budget_tokens=None if claims.get("bt") is None else int(claims["bt"]),
                budget_calls=None if claims.get("bc") is None else int(claims["bc"]),
                key_id=str(claims["k"]),
            )
        except (KeyError, TypeError, ValueError):
            raise DelegationError("the delegation is malformed") from None
        if delegation.expires <= (time.time() if now is None else now):
            raise DelegationError("the delegation has expired (the call it came with is over)")
        return delegation

    def for_forward(
        self,
        tenant: str,
        *,
        incoming: Delegation | None,
        session: str,
        depth: int,
        time_remaining: float | None,
        budget_tokens: int | None,
        budget_calls: int | None,
        now: float | None = None,
    ) -> Delegation:
        """The delegation to send with a call forwarded for tenant: never wider than the one it came with."""
        now = time.time() if now is None else now
        expires = now + self.ttl
        if time_remaining is not None:
            expires = min(expires, now + max(0.0, time_remaining))
        if incoming is not None:
            expires = min(expires, incoming.expires)
            depth = max(depth, incoming.depth + 1)
            budget_tokens = _smaller(budget_tokens, incoming.budget_tokens)
            budget_calls = _smaller(budget_calls, incoming.budget_calls)
            session = session or incoming.session
        return Delegation(
            tenant=tenant, session=session, depth=depth, expires=expires,
            budget_tokens=budget_tokens, budget_calls=budget_calls,
        )  # fmt: skip


def _smaller(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)
