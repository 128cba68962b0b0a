"""Who may change the route table and who may look at it: registrants (hand services) and operators."""

from __future__ import annotations

import fnmatch
import ipaddress
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from hands.config import ConfigModel, invalid, string_list
from hands.keys import KeyDigest
from hands.keys import owner_of as _owner_of

_NAME_HINT = "expected a name like 'fs-hands' (letters, digits, _ . -)"


def _name(value: Any) -> str:
    import re

    if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", value):
        raise ValueError(f"{_NAME_HINT}, got {value!r}")
    return value


Name = Annotated[str, BeforeValidator(_name)]


class Registrant(ConfigModel):
    """A hand service that may register backends for the hands matching its globs (and only those)."""

    name: Name
    api_keys: tuple[KeyDigest, ...] = Field((), repr=False)
    hands: string_list("expected a list of hand-name globs like 'fs_*'")
    # mTLS: a client certificate whose common name, subject or a subject alternative name is one of these
    # stands for this registrant, with no key.
    cert_subjects: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _some_credential(self) -> Registrant:
        if not self.api_keys and not self.cert_subjects:
            raise invalid("api_keys", "expected a non-empty list of 'sha256:<hex>' or 'env:VAR' (or cert_subjects)")
        return self

    def may_register(self, hand: str) -> bool:
        return any(fnmatch.fnmatchcase(hand, glob) for glob in self.hands)

    def __repr__(self) -> str:
        return f"Registrant(name={self.name!r}, hands={self.hands!r})"

    __str__ = __repr__


class Operator(ConfigModel):
    """A person or tool that may list backends and read every tenant's usage."""

    name: Name
    api_keys: tuple[KeyDigest, ...] = Field(repr=False)

    def __repr__(self) -> str:
        return f"Operator(name={self.name!r})"

    __str__ = __repr__


def owner_of(api_key: str | None, owners):
    return _owner_of(api_key, owners)


def by_certificate(auth_context: dict[str, list[bytes]], registrants) -> Registrant | None:
    """The registrant a verified client certificate stands for (grpc puts only verified peers in auth_context)."""
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject", "x509_subject_alternative_name"):
        for value in auth_context.get(key, ()):
            names.add(value.decode(errors="replace"))
    return next((r for r in registrants if names.intersection(r.cert_subjects)), None)


def is_loopback_peer(peer: str) -> bool:
    """grpc's context.peer() ('ipv4:127.0.0.1:5555', 'ipv6:[::1]:5555', 'unix:...') names this machine."""
    kind, _, rest = peer.partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = rest.rpartition(":")[0].strip("[]")
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)
