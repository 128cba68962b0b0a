"""Live session pages over a real brain process: pages of one session share one Watch and one drawing."""

from __future__ import annotations

import asyncio
import json

import httpx2
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


async def test_a_live_session_follows_its_sub_agent_as_it_runs(processes, hands, model_api, scripts, tmp_path):
    import grpc
    import yaml

    from brain.v1 import brain_pb2, brain_pb2_grpc
    from brainhands.procs import free_port
    from brainhands.scripted_api import text_reply, tool_reply
    from tests.console.conftest import MODEL, SCRUBBED, start_brain, start_console

    gateway_address = f"127.0.0.1:{free_port()}"
    env = {k: "" for k in SCRUBBED}
    env.update(ANTHROPIC_BASE_URL=model_api.base_url, ANTHROPIC_API_KEY="scripted-test-key", BRAINHANDS_MODEL=MODEL,
               BRAINHANDS_GATEWAY=gateway_address, BRAINHANDS_SESSIONS=str(tmp_path / "sessions.db"))
    agent = processes(["serve", "hand", "brain.agent", "--port", "0"], env=env)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"listen": gateway_address, "metrics": None, "routes": [
        {"hands": ["agent"], "backends": [agent.address]}, {"hands": ["*"], "backends": [hands.address]}]}))
    gateway = processes(["serve", "gateway", "--config", str(config)], ready_event="gateway serving")
    gateway.address = gateway_address
    brain = start_brain(processes, gateway, model_api, tmp_path)
    # The worker outlasts a live session's quiet-time look for new sub-agents (CHILDREN_REFRESH).
    scripts.add("WORKER: take a second.", tool_reply([("slow", {"seconds": 4})]), text_reply("worker done"))
    task = scripts.add("Hand it to one worker.", tool_reply([("agent", {"task": "WORKER: take a second."})]),
                       text_reply("root done"))
    clients = ConsoleClients(brain.address, None)
    watched = []
    follow_log = clients.session_events
    clients.session_events = lambda key, sid, after: watched.append(sid) or follow_log(key, sid, after)
    children_seen = []

    def draw(key, info, events, children):
        children_seen.append({sid: views.session_page(child, child_events, {}).status
                              for sid, (child, child_events) in children.items()})
        return "", views.session_page(info, events, children).status

    hub = LiveSessions(lambda: clients, draw)
    try:
        async with grpc.aio.insecure_channel(brain.address) as channel:
            run = brain_pb2_grpc.BrainServiceStub(channel).Run(brain_pb2.RunRequest(task=task), timeout=120)
            sid = (await run.read()).session_id
            info = (await clients.get_session("key", sid)).info
            updates = await asyncio.wait_for(_all(hub.follow("key", info, 0)), 90)
    finally:
        await clients.close()
    assert json.loads(updates[-2]["data"])["status"] == "finished"
    [child] = {c for seen in children_seen for c in seen}
    assert watched.count(child) == 1  # the sub-agent followed by its own Watch, not re-read on every refresh
    assert "running" in [seen.get(child) for seen in children_seen]  # drawn while it ran, not only at the end
    assert children_seen[-1] == {child: "finished"}
    console = start_console(processes, brain)  # the session's page links its sub-agent, and the sub-agent's links back
    async with httpx2.AsyncClient(base_url=f"http://{console.address}", cookies={"brainhands_key": "key"}) as http:
        root_page, child_page = (await http.get(f"/sessions/{sid}")), (await http.get(f"/sessions/{child}"))
    assert root_page.status_code == 200 and f'data-child="{child}"' in root_page.text
    assert child_page.status_code == 200 and f'id="parent-link" href="/sessions/{sid}"' in child_page.text


async def _all(updates):
    return [u async for u in updates]
