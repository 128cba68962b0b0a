"""API keys in config files: the ``sha256:<hex>`` and ``env:VAR`` forms, bearer tokens, constant-time lookup."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ValidationInfo

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
KEY_FORMS = "'sha256:<hex>' or 'env:VAR'"

T = TypeVar("T")


def key_digest(value: Any, info: ValidationInfo) -> bytes:
    """The sha256 digest of a key given as ``sha256:<hex>`` or ``env:VAR`` (read from the context's environ, once)."""
    if isinstance(value, bytes) and len(value) == hashlib.sha256().digest_size:
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {KEY_FORMS}")
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
    raise ValueError(f"expected {KEY_FORMS} (plain keys are not accepted)")


#: One key of a config's ``api_keys`` list, held as its sha256 digest.
KeyDigest = Annotated[bytes, BeforeValidator(key_digest)]


def bearer_token(authorization: str | None) -> str | None:
    """The key in an ``authorization: Bearer <key>`` value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def hash_key(api_key: str) -> str:
    """The config form of a key: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


def owner_of(api_key: str | None, owners: Iterable[T], digests=lambda owner: owner.api_keys) -> T | None:
    """The owner whose digests include api_key's, or None; compares with every digest in constant time."""
    if not api_key:
        return None
    digest = hashlib.sha256(api_key.encode()).digest()
    found = None
    # Compare against every key so the time taken does not say which owner came close.
    for owner in owners:
        for known in digests(owner):
            if hmac.compare_digest(digest, known) and found is None:
                found = owner
    return found
