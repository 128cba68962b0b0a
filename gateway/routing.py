"""The route table: hand name -> replicas, rebuilt when backends come and go, and the per-call pick."""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gateway.backends import Backend
from hands.v1 import hands_pb2


@dataclass(frozen=True, slots=True)
class HandRoute:
    """Where one hand can run, and whether a call may be re-run on another replica."""

    name: str
    backends: tuple[Backend, ...]
    idempotent: bool  # only when every replica says so


class RouteTable:
    """Every backend the gateway knows; the routes are rebuilt on changes, never per call."""

    def __init__(self) -> None:
        self.backends: dict[str, Backend] = {}
        self.routes: dict[str, HandRoute] = {}
        self.describe_bytes = hands_pb2.DescribeResponse().SerializeToString()
        self._turn = itertools.count()
        self._static_globs: tuple[str, ...] = ()

    def add(self, backend: Backend) -> None:
        self.backends[backend.address] = backend
        self.rebuild()

    def remove(self, address: str) -> Backend | None:
        backend = self.backends.pop(address, None)
        if backend is not None:
            self.rebuild()
        return backend

    def set_static_globs(self, globs: Iterable[str]) -> None:
        self._static_globs = tuple(globs)

    def rebuild(self) -> None:
        """Recompute name -> serving replicas and the Describe answer (the union of serving backends' hands)."""
        replicas: dict[str, list[Backend]] = {}
        specs: dict[str, hands_pb2.HandSpec] = {}
        idempotent: dict[str, bool] = {}
        for backend in self.backends.values():
            if not backend.serving:
                continue
            for name, spec in backend.specs.items():
                replicas.setdefault(name, []).append(backend)
                specs.setdefault(name, spec)
                idempotent[name] = idempotent.get(name, True) and spec.idempotent
        self.routes = {
            name: HandRoute(name=name, backends=tuple(found), idempotent=idempotent[name])
            for name, found in replicas.items()
        }
        self.describe_bytes = hands_pb2.DescribeResponse(
            hands=[specs[name] for name in sorted(specs)]
        ).SerializeToString()

    def pick(self, route: HandRoute, tried: Collection[Backend] = ()) -> Backend | None:
        """The usable replica with the fewest calls in flight; ties rotate so idle replicas share the load."""
        backends = route.backends
        if len(backends) == 1:
            only = backends[0]
            return only if only not in tried and only.usable() else None
        start = next(self._turn)
        count = len(backends)
        best: Backend | None = None
        for i in range(count):
            backend = backends[(start + i) % count]
            if (best is None or backend.in_flight < best.in_flight) and backend not in tried and backend.usable():
                best = backend
        return best

    def known_but_down(self, name: str) -> bool:
        """The hand exists somewhere (a backend that is down, or a static route not yet described)."""
        if any(name in b.specs for b in self.backends.values()):
            return True
        return any(fnmatch.fnmatchcase(name, g) for g in self._static_globs) and any(
            not b.specs for b in self.backends.values()
        )

    def hand_names(self) -> list[str]:
        return sorted(self.routes)
