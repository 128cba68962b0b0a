"""Live session pages: one BrainService Watch per open session (and per sub-agent of it), shared by every page of
it, and the page's live part drawn from the one fold of the log once per change for all of those pages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable

import grpc
import structlog

from brain.sessions import Event, SessionInfo
from brain.timeline import tree_order
from brainhands.console.clients import ConsoleClients, to_info

#: A live session is drawn again at most this often (seconds). Events that come in between ride along with the
#: next drawing: a whole page is re-drawn from the whole log each time (a few ms of CPU and tens of kB), and one
#: drawing per event is what made fifty busy pages fall seconds behind in one process (bench/console_bench.py).
REDRAW_INTERVAL = 0.3
#: The sub-agent list of a live session is looked up again at most this often (seconds), and this often while
#: nothing else happens in it.
CHILDREN_REFRESH = 2.0
#: Once a session has ended, how long its page waits for its sub-agents' logs to end too before the last drawing.
CHILDREN_GRACE = 5.0

logger = structlog.get_logger("brainhands.console")

Children = dict[str, tuple[SessionInfo, list[Event]]]
#: Draws the live part of a page (HTML) for a key: (key, session, its log, its sub-agents) -> (html, status).
Draw = Callable[[str, SessionInfo, list[Event], Children], tuple[str, str]]


class Log:
    """One session's events as a Watch brings them, from the first; `changed` is called after each one."""

    def __init__(self, clients: ConsoleClients, key: str, session_id: str, changed: Callable[[], None]):
        self.events: list[Event] = []
        self.ended = False
        self._changed = changed
        self.task = asyncio.create_task(self._read(clients, key, session_id))

    async def _read(self, clients: ConsoleClients, key: str, session_id: str) -> None:
        try:
            async for event in clients.session_events(key, session_id, 0):
                self.events.append(event)
                self._changed()
        except grpc.aio.AioRpcError:
            pass  # the brain went away or refused: the page stops being live and says what it last knew
        finally:
            self.ended = True
            self._changed()


class LiveSession:
    """A session open in one or more pages signed in with the same key: its Watch, its sub-agents' Watches, and the
    newest drawing of its live part, which every page of it sends on."""

    def __init__(self, hub: LiveSessions, key: str, info: SessionInfo):
        self.hub, self.key, self.info = hub, key, info
        self.pages = 0
        self.update: dict | None = None  # the newest drawing, as a server-sent event
        self.version = 0  # how many drawings there have been
        self.ended = False
        self._changed = asyncio.Event()
        self._drawn = asyncio.Event()
        self.log = Log(hub.clients, key, info.id, self._changed.set)
        self.children: dict[str, tuple[SessionInfo, Log]] = {}
        self._task = asyncio.create_task(self._draw_on_change())

    async def _draw_on_change(self) -> None:
        try:
            await self._draw_while_live()
        except Exception:
            logger.exception("console.live_draw_failed", session_id=self.info.id)
        finally:
            if not self.ended:  # failed (or closed): the pages stop following instead of waiting for ever
                self.ended = True
                self.version += 1
                self._drawn.set()

    async def _draw_while_live(self) -> None:
        children_at = float("-inf")
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), CHILDREN_REFRESH)
            except TimeoutError:
                # Quiet (a parent waiting on its workers is): look for new sub-agents; their events wake a drawing.
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._follow_children(fresh=False)
                children_at = time.monotonic()
                continue
            self._changed.clear()
            ended = self.log.ended
            seq = self.log.events[-1].seq if self.log.events else 0
            if not ended and seq < self.info.last_seq:
                continue  # still reading the log as it was when the page opened: draw once it is all there
            if ended or time.monotonic() - children_at > CHILDREN_REFRESH:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await self._follow_children(fresh=ended)
                children_at = time.monotonic()
            if ended:
                pending = [log.task for _, log in self.children.values() if not log.ended]
                if pending:
                    await asyncio.wait(pending, timeout=CHILDREN_GRACE)
            self._draw(ended)
            if ended:
                return
            await asyncio.sleep(REDRAW_INTERVAL)

    async def _follow_children(self, *, fresh: bool) -> None:
        for _, info in tree_order(self.info.id, await self.hub.listing(self.key, fresh=fresh)):
            known = self.children.get(info.id)
            log = known[1] if known else Log(self.hub.clients, self.key, info.id, self._changed.set)
            self.children[info.id] = (info, log)

    def _draw(self, ended: bool) -> None:
        events = list(self.log.events)
        children = {sid: (info, list(log.events)) for sid, (info, log) in self.children.items()}
        html, status = self.hub.draw(self.key, self.info, events, children)
        last = events[-1] if events else None
        seq = last.seq if last else 0
        self.update = {"event": "update", "id": str(seq),
                       "data": json.dumps({"seq": seq, "ts": last.ts if last else 0.0, "status": status, "html": html})}
        self.version += 1
        self.ended = ended
        self._drawn.set()
        self._drawn = asyncio.Event()

    async def updates(self, after: int) -> AsyncIterator[dict]:
        """This page's server-sent events: each drawing from the first that has events after `after` (what the
        page shows already) on, a sub-agent's progress included, then `end`."""
        seen, caught_up = 0, False
        while True:
            while self.version == seen:
                await self._drawn.wait()
            seen = self.version
            update = self.update
            seq = int(update["id"]) if update else after
            caught_up = caught_up or seq > after or self.ended
            if update is not None and caught_up:
                yield update
                after = seq
            if self.ended:
                yield {"event": "end", "data": json.dumps({"seq": after})}
                return

    async def close(self) -> None:
        # Every task is cancelled before the first await: the page's own task may be cancelled already (its browser
        # went away), and then each await here raises again.
        tasks = [self._task, self.log.task, *(log.task for _, log in self.children.values())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LiveSessions:
    """The sessions open in pages of this console, one LiveSession per (key, session): pages of one session signed
    in with one key share its Watch and its drawings; another key never shares them (the brain checks each key)."""

    def __init__(self, clients: Callable[[], ConsoleClients], draw: Draw):
        self._clients = clients
        self.draw = draw
        self._open: dict[tuple[str, str], LiveSession] = {}
        self._listings: dict[str, tuple[float, asyncio.Future]] = {}

    async def _list(self, key: str) -> list[SessionInfo]:
        return [to_info(s) for s in await self.clients.list_sessions(key, page_size=1000)]

    @property
    def clients(self) -> ConsoleClients:
        return self._clients()

    @contextlib.asynccontextmanager
    async def open(self, key: str, info: SessionInfo) -> AsyncIterator[LiveSession]:
        live = self._open.get((key, info.id))
        if live is None:
            live = self._open[(key, info.id)] = LiveSession(self, key, info)
        live.pages += 1
        try:
            yield live
        finally:
            live.pages -= 1
            if live.pages == 0 and self._open.get((key, info.id)) is live:
                del self._open[(key, info.id)]
                await live.close()

    async def follow(self, key: str, info: SessionInfo, after: int) -> AsyncIterator[dict]:
        async with self.open(key, info) as live:
            async for update in live.updates(after):
                yield update

    def watching(self) -> int:
        """How many Watches the open sessions hold (theirs and their sub-agents')."""
        return sum(1 + len(live.children) for live in self._open.values())

    async def listing(self, key: str, *, fresh: bool = False) -> list[SessionInfo]:
        """The newest sessions this key sees, shared by every live page of the key for CHILDREN_REFRESH seconds
        (fifty open pages ask the brain once, not fifty times)."""
        now = time.monotonic()
        cached = self._listings.get(key)
        if cached is None or fresh or now - cached[0] >= CHILDREN_REFRESH:
            cached = self._listings[key] = (now, asyncio.ensure_future(self._list(key)))
        try:
            return await asyncio.shield(cached[1])
        except BaseException:
            if self._listings.get(key) is cached:
                self._listings.pop(key, None)
            raise

