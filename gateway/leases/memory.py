"""The in-process registry store: leases one gateway process holds, the embedded default."""

from __future__ import annotations

import dataclasses
import time

from gateway.leases import Lease, LeaseTaken


class MemoryRegistryStore:
    """Leases in a dict; exact for one process, invisible to any other."""

    shared = False

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._leases: dict[str, tuple[Lease, float]] = {}  # id -> (lease, expires at)
        self._by_address: dict[str, str] = {}

    def _live(self, lease_id: str, owner: str | None = None) -> Lease | None:
        held = self._leases.get(lease_id)
        if held is None or held[1] < self._clock() or (owner is not None and held[0].owner != owner):
            return None
        return held[0]

    def _end(self, lease: Lease) -> None:
        self._leases.pop(lease.id, None)
        if self._by_address.get(lease.address) == lease.id:
            del self._by_address[lease.address]

    async def grant(self, lease: Lease) -> None:
        old_id = self._by_address.get(lease.address)
        if old_id is not None:
            old = self._live(old_id)
            if old is not None and old.owner != lease.owner:
                raise LeaseTaken(lease.address)
            self._end(self._leases[old_id][0])
        self._leases[lease.id] = (lease, self._clock() + lease.ttl)
        self._by_address[lease.address] = lease.id

    async def renew(self, lease_id: str, owner: str) -> float | None:
        lease = self._live(lease_id, owner)
        if lease is None:
            return None
        self._leases[lease_id] = (lease, self._clock() + lease.ttl)
        return lease.ttl

    async def release(self, lease_id: str, owner: str) -> bool:
        held = self._leases.get(lease_id)
        if held is None or held[0].owner != owner:
            return False
        self._end(held[0])
        return True

    async def snapshot(self) -> list[Lease]:
        now = self._clock()
        for lease, expires in list(self._leases.values()):
            if expires < now:
                self._end(lease)
        return [dataclasses.replace(lease, expires_in=expires - now) for lease, expires in self._leases.values()]

    async def close(self) -> None:
        pass
