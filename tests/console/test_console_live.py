"""Live session pages over a real brain process: pages of one session share one Watch and one drawing."""

from __future__ import annotations

import asyncio
import json

import pytest

from brainhands.console import views
from brainhands.console.clients import ConsoleClients
from brainhands.console.live import LiveSessions
from tests.console.conftest import fan_out

pytestmark = pytest.mark.system


async def test_pages_of_one_session_share_one_watch_per_key(brain, scripts, runs):
    clients = ConsoleClients(brain.address, None)
    watched = []
    follow_log = clients.session_events

    def counted(key, session_id, after_seq):
        watched.append((key, session_id))
        return follow_log(key, session_id, after_seq)

    clients.session_events = counted
    drawings = []

    def draw(key, info, events, children):
        drawings.append(key)
        return f"{len(events)} events", views.session_page(info, events, children).status

    hub = LiveSessions(lambda: clients, draw)
    try:
        sid = await runs.start(scripts.add("Two quick workers.", *fan_out(0.3, 0.6)))
        info = (await clients.get_session("key-1", sid)).info

        async def page(key):
            return [update async for update in hub.follow(key, info, 0)]

        pages = await asyncio.wait_for(asyncio.gather(page("key-1"), page("key-1"), page("key-1"), page("key-2")), 60)
    finally:
        await clients.close()
    assert sorted(watched) == [("key-1", sid), ("key-2", sid)]  # one Watch per key, not per page
    assert pages[0] == pages[1] == pages[2]  # the same drawings, sent on to each page
    last = json.loads(pages[0][-2]["data"])
    assert pages[0][-1]["event"] == "end" and last["status"] == "finished"
    assert drawings.count("key-1") == len(pages[0]) - 1  # drawn once for the three pages, not three times
    assert hub.watching() == 0  # closed once their pages were
