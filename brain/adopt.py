"""Adopting orphans: a brain service started with --adopt claims running sessions no brain drives and finishes them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

import structlog

from brain.config import BrainConfig
from brain.events import SessionState
from brain.sessions import Event, SessionInfo, SessionStore

log = structlog.get_logger("brain.adopt")

#: the longest a session whose adoptions keep failing (its gateway down, its model refused) waits for the next try
MAX_BACKOFF = 300.0


class Adopter:
    """Every interval, claims up to `most` orphaned sessions (store.orphaned_sessions) and wakes them here.

    The claim is the session's lease (acquire_lease, one atomic statement in either store): of several brains
    adopting at once exactly one gets each session, and the others skip it. The woken session re-issues its
    unfinished calls with their call_ids, so a hand service's exactly-once dedupe (hands/dedupe.py) answers a
    non-idempotent call that had already run with its stored result instead of running it again.

    Sessions waiting for a person are not orphans (status waiting, no lease by design): a decision continues them.
    A session keeps its tenant: adoption only appends to its log, under the limits the log recorded.
    """

    def __init__(
        self,
        store: SessionStore,
        owner: str,
        wake: Callable[[str, list[Event]], Awaitable[BaseException | None]],
        *,
        interval: float,
        most: int,
        driving: Callable[[str], bool] = lambda sid: False,
    ):
        """wake(session_id, events): start driving the session here, under the lease already taken; it returns an
        awaitable that ends with the drive (its error, None when the session ended). driving(session_id): True when
        this process already drives it."""
        self.store = store
        self.owner = owner
        self.interval = interval
        self.most = most
        self._wake = wake
        self._driving = driving
        self._adopted: dict[str, asyncio.Task] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # session id -> (not before, backoff) after a failed drive

    @property
    def adopted(self) -> list[str]:
        """The sessions adopted here that are still being driven."""
        return list(self._adopted)

    async def run(self) -> None:
        """Look for orphans every interval until cancelled; a failed look is logged and tried again."""
        while True:
            try:
                await self.scan()
            except Exception as exc:  # the store down: look again at the next beat
                log.warning("looking for orphaned sessions failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def scan(self) -> list[str]:
        """One look: claim orphans while fewer than `most` adopted sessions are driven here; the ids adopted."""
        room = self.most - len(self._adopted)
        if room <= 0:
            return []
        now = time.monotonic()
        adopted: list[str] = []
        # More candidates than room: another brain looking at the same moment takes some of the first ones.
        for info in await self.store.orphaned_sessions(limit=4 * room):
            if len(adopted) >= room:
                break
            if self._driving(info.id) or self._retry.get(info.id, (0.0, 0.0))[0] > now:
                continue
            if await self._claim(info):
                adopted.append(info.id)
        return adopted

    async def _claim(self, info: SessionInfo) -> bool:
        sid = info.id
        if not await self.store.acquire_lease(sid, self.owner, _lease_ttl(info)):
            return False  # another brain was first (or its holder came back)
        try:
            events = await self.store.events(sid)
            if self._driving(sid):
                # A Wake here took it up meanwhile. One owner for the whole process: the lease is that drive's now.
                return False
            if SessionState.from_events(sid, events).status != "running":
                # It ended, or went waiting, between the listing and the claim.
                await self.store.release_lease(sid, self.owner)
                return False
        except BaseException:
            if not self._driving(sid):
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release_lease(sid, self.owner))
            raise
        # The lease's owner is still the dead brain's when it expired; a brain that stopped cleanly released it.
        log.info("adopting session", session_id=sid, previous_holder=info.lease_owner, tenant=info.tenant,
                 last_seq=events[-1].seq)  # fmt: skip
        task = asyncio.ensure_future(self._wake(sid, events))
        self._adopted[sid] = task
        task.add_done_callback(lambda done: self._ended(sid, done))
        return True

    def _ended(self, sid: str, task: asyncio.Task) -> None:
        self._adopted.pop(sid, None)
        failed = task.cancelled() or task.exception() is not None or task.result() is not None
        if not failed:
            self._retry.pop(sid, None)
            return
        # Left running (the drive raised): try again later, each time twice as late, not at every beat.
        backoff = min(MAX_BACKOFF, 2 * self._retry.get(sid, (0.0, self.interval / 2))[1])
        self._retry[sid] = (time.monotonic() + backoff, backoff)


def _lease_ttl(info: SessionInfo) -> float:
    """The lease the session's own limits ask for (what its wake renews), the default when they are unreadable."""
    try:
        return BrainConfig.from_dict(info.config).lease_ttl
    except Exception:
        return BrainConfig().lease_ttl
