"""Where the registry's leases live: one gateway's memory, or Redis shared by every replica.

A lease says that a registrant's hand service at an address takes calls until it stops heartbeating. Every
replica reads the store's leases (``snapshot``) and routes to their backends, health-checking them on its own;
a lease that runs out, or is released through any replica, leaves every replica's route table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Lease", "LeaseTaken", "RegistryStore", "RegistryStoreUnavailable", "open_registry_store"]


@dataclass(frozen=True, slots=True)
class Lease:
    """One registered backend: who holds it, for how long, and the hands the registering gateway found there."""

    id: str
    address: str
    owner: str  # the registrant that holds it; only it may renew or release it
    ttl: float  # seconds a heartbeat extends it by
    allow: tuple[str, ...] = ("*",)  # the hand-name globs routed to it (its registrant's)
    specs: bytes = b""  # a hands.v1.DescribeResponse of those hands, so a replica knows them before its own probe
    expires_in: float = 0.0  # seconds left when the store was read


class LeaseTaken(Exception):
    """The address is held by another registrant's live lease."""


class RegistryStoreUnavailable(Exception):
    """The registry store could not be reached."""


class RegistryStore(Protocol):
    """Leases of registered backends; every operation is atomic, so replicas never disagree on who holds what."""

    #: True when other gateway processes see the same leases (so --workers may share it).
    shared: bool

    async def grant(self, lease: Lease) -> None:
        """Add lease; an older lease of the same owner on its address ends. LeaseTaken when another owner's holds it."""
        ...

    async def renew(self, lease_id: str, owner: str) -> float | None:
        """Extend owner's live lease by its ttl and return the ttl; None when it has expired, is unknown or not owner's."""
        ...

    async def release(self, lease_id: str, owner: str) -> bool:
        """End owner's lease; False when there is no such lease of owner's."""
        ...

    async def snapshot(self) -> list[Lease]:
        """Every live lease, with the seconds each has left; expired leases are removed on the way."""
        ...

    async def close(self) -> None: ...


def open_registry_store(spec: str, *, prefix: str = "brainhands:registry") -> RegistryStore:
    """``memory`` -> MemoryRegistryStore; ``redis://...`` / ``rediss://...`` / ``unix://...`` -> RedisRegistryStore."""
    if spec == "memory":
        from gateway.leases.memory import MemoryRegistryStore

        return MemoryRegistryStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from gateway.leases.redis import RedisRegistryStore

        return RedisRegistryStore.from_url(spec, prefix=prefix)
    raise ValueError(f"registry_store: expected 'memory' or a redis:// URL, got {spec!r}")
