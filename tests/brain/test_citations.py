"""Research sessions whose answers cite sources: the web hands through a real gateway, and Anthropic's server tools
through the real SDK; the brain checks every [n] against the URLs the session saw."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from brain import Brain, BrainConfig, ScriptedModel, open_store
from brain.agent import AgentConfig, make_agent_hands
from brain.events import SessionState
from brain.model import AnthropicModel
from brain.timeline import load_timeline
from brainhands.procs import free_port
from brainhands.scripted_api import (
    cited_text,
    server_tool_reply,
    text_reply,
    web_fetch_blocks,
    web_search_blocks,
)
from gateway.config import parse_config
from gateway.server import start_gateway
from hands.builtin.web import WebConfig, make_web_hands
from tests.hands.fake_web import ARTICLE, FakeHTTP, Reply, json_reply, redirect

NEVER_FETCHED = "https://journal.example/made-up-study"


def show(sessions: str, session_id: str) -> str:
    done = subprocess.run([sys.executable, "-m", "brainhands", "sessions", "show", session_id, "--sessions", sessions],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def by_label(plans: dict[str, list[dict]]) -> ScriptedModel:
    """One model for the orchestrator and its workers: the plan is picked by the label word in the session's task."""

    def answer(request):
        task = request["messages"][0]["content"][0]["text"]
        label = next(word for word in plans if re.search(rf"\b{word}\b", task))
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return plans[label][min(turn, len(plans[label]) - 1)]

    return ScriptedModel([answer] * 50)


@pytest.fixture
def fake_web():
    """Two articles (one behind a redirect) and a SearXNG instance whose results point at them."""
    with FakeHTTP() as web:
        vents, worms, other = web.url("/vents"), web.url("/worms"), web.url("/other")
        web.routes.update({
            "/vents": Reply(200, ARTICLE),
            "/old-worms": redirect("/worms", 301),
            "/worms": Reply(200, ARTICLE.replace("Hydrothermal vents", "Giant tube worms")),
            "/other": Reply(200, ARTICLE),
            "/search": json_reply({"results": [
                {"title": "Hydrothermal vents", "url": vents, "content": "Fissures on the sea floor."},
                {"title": "Vent fauna", "url": other, "content": "What lives there."},
            ]}),
        })  # fmt: skip
        web.pages = {"vents": vents, "worms": worms, "old_worms": web.url("/old-worms"), "other": other}
        yield web


async def test_a_research_session_fans_out_cites_its_sources_and_the_check_finds_the_one_never_fetched(
    tmp_path, hand_service, fake_web
):
    pages = fake_web.pages
    synthesis = (
        "Hydrothermal vents discharge water at up to 400 C [1]. Tube worms live on them by chemosynthesis [2], "
        "and a 2031 study claims they live 300 years [3]. Other fauna are listed in [4].\n\n"
        f"Sources:\n[1] {pages['vents']}\n[2] {pages['worms']}\n[3] {NEVER_FETCHED}\n[4] {pages['other']}"
    )
    model = by_label({
        "ROOT": [
            {"tool_calls": [["web_search", {"query": "hydrothermal vents"}], ["web_search", {"query": "vent fauna"}]]},
            {"tool_calls": [
                ["agent", {"task": "VENTS: read the vents article", "tools": ["web_fetch"]}],
                ["agent", {"task": "WORMS: read the tube worms article", "tools": ["web_fetch"]}],
            ]},
            {"text": synthesis},
        ],
        # Workers fetch, and return their findings with the source (in words: only the fetch itself counts).
        "VENTS": [{"tool_calls": [["web_fetch", {"url": pages["vents"]}]]}, {"text": "400 C water. Source: the vents page"}],
        "WORMS": [{"tool_calls": [["web_fetch", {"url": pages["old_worms"]}]]}, {"text": "Chemosynthesis. Source: the worms page"}],
    })  # fmt: skip
    # The operator's way of letting the web hands reach a loopback web and search API.
    web = WebConfig.from_env({"BRAINHANDS_WEB_ALLOW": "127.0.0.1", "BRAINHANDS_SEARXNG_URL": fake_web.url("")})
    sessions = str(tmp_path / "sessions.db")
    port = free_port()
    agent = AgentConfig(gateway=f"127.0.0.1:{port}", sessions=sessions, max_depth=1, call_timeout=30)
    backend = await hand_service([*make_web_hands(web), *make_agent_hands(agent, model=model)])
    gw = await start_gateway(parse_config({
        "listen": f"127.0.0.1:{port}", "metrics": None, "routes": [{"hands": ["*"], "backends": [backend.address]}],
    }))  # fmt: skip
    store = await open_store(sessions)
    brain = Brain(target=gw.address, model=model, store=store, config=BrainConfig(call_timeout=60))
    try:
        result = await brain.run("ROOT: what lives at hydrothermal vents? cite sources")
        assert result.ok, result.text
        events = await store.events(result.session_id)
        page = await load_timeline(store, result.session_id)
    finally:
        await brain.close()
        await store.close()
        await gw.server.stop(0)
        await gw.close()

    # The orchestrator was asked for [n] citations and a sources list.
    assert "[n] URL" in model.requests[0]["system"]
    # The searches fanned out in one turn, and the workers really fetched (the worms page through its redirect).
    assert sum(1 for s in fake_web.seen if s.path == "/search") == 2
    assert {s.path for s in fake_web.seen} >= {"/vents", "/old-worms", "/worms"}

    # [1] was fetched by a worker and returned by a search, [2] only fetched (its final URL, in a sub-session),
    # [4] only returned by a search; [3] no hand ever saw.
    assert result.citations is not None
    assert [(c["n"], c["url"]) for c in result.citations.checked] == [
        (1, pages["vents"]), (2, pages["worms"]), (4, pages["other"])]
    [unknown] = result.citations.unknown
    assert (unknown["n"], unknown["url"]) == (3, NEVER_FETCHED)

    # Recorded with the session: the log's last event, the fold, `sessions show` and the timeline.
    assert events[-1].type == "session_finished"
    assert events[-1].data["citations"]["unknown"][0]["url"] == NEVER_FETCHED
    assert SessionState.from_events(result.session_id, events).citations == result.citations
    shown = show(sessions, result.session_id)
    assert "citations: 3 checked, 1 unknown" in shown
    assert re.search(rf"UNKNOWN\s+\[3\] {re.escape(NEVER_FETCHED)}", shown)
    assert "Citations: 3 checked, 1 unknown" in page and NEVER_FETCHED in page


async def test_an_answer_without_citations_records_none(make_brain, store):
    brain = make_brain(ScriptedModel([{"text": "The sum is 4. a[0] is the first item."}]))
    result = await brain.run("what is 2+2?")
    assert result.ok and result.citations is None
    [*_, last] = await store.events(result.session_id)
    assert "citations" not in last.data


async def test_server_tools_through_the_sdk_are_requested_kept_across_turns_counted_and_checked(
    messages_api, make_brain, store, tmp_path
):
    vents, fauna = "https://ocean.example/vents", "https://ocean.example/fauna"
    searched = web_search_blocks("hydrothermal vents", [(vents, "Hydrothermal vents"), (fauna, "Vent fauna")])
    fetched = web_fetch_blocks(vents, "Hydrothermal vents discharge water at up to 400 degrees.", "Hydrothermal vents")
    # The API runs its tools, pauses the turn, and is asked to go on: the second request must carry the blocks back.
    messages_api.script(
        server_tool_reply([{"type": "text", "text": "Let me look that up."}, *searched, *fetched],
                          stop_reason="pause_turn"),
        server_tool_reply([
            cited_text("Vents discharge water at up to 400 degrees [1].", vents, "Hydrothermal vents",
                       "discharge water at up to 400 degrees"),
            {"type": "text", "text": f"\n\nSources:\n[1] {vents}\n[2] {NEVER_FETCHED}"},
        ]),
    )  # fmt: skip
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=messages_api.base_url, api_key="test-key", max_retries=0)
    model = AnthropicModel("claude-sonnet-4-5", max_tokens=1024, client=client)
    brain = make_brain(model, server_tools=("web_search", "web_fetch"), server_tool_max_uses=3)
    result = await brain.run("how hot are hydrothermal vents?")
    assert result.ok, result.text

    first, second = messages_api.bodies
    tools = {t["name"]: {k: v for k, v in t.items() if k != "cache_control"} for t in first["tools"]}
    assert tools["web_search"] == {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}
    assert tools["web_fetch"] == {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 3,
                                  "citations": {"enabled": True}}
    assert "echo" in tools  # the hands stay alongside
    # The paused turn went back whole: server_tool_use and both result blocks, ids and URLs intact.
    sent = [{k: v for k, v in b.items() if k != "cache_control"} for b in second["messages"][1]["content"]]
    assert [b["type"] for b in sent] == ["text", "server_tool_use", "web_search_tool_result",
                                         "server_tool_use", "web_fetch_tool_result"]
    assert sent[1:] == [*searched, *fetched]

    # The log keeps the citation block; usage counts the server tools as tool calls.
    events = await store.events(result.session_id)
    state = SessionState.from_events(result.session_id, events)
    assert state.turns[-1].content[0]["citations"][0]["url"] == vents
    assert result.usage["server_tool_use"] == {"web_search_requests": 1, "web_fetch_requests": 1}
    assert result.usage["tool_calls"] == 2
    # [1] and the API's own citation name a search result; [2] nothing in the session returned.
    assert [(c["n"], c["url"]) for c in result.citations.checked] == [(1, vents), (None, vents)]
    assert [(c["n"], c["url"]) for c in result.citations.unknown] == [(2, NEVER_FETCHED)]

    shown = show(str(tmp_path / "sessions.db"), result.session_id)
    assert f"web_search 'hydrothermal vents' -> 2 results: {vents}, {fauna}" in shown
    assert f"web_fetch '{vents}' -> fetched {vents}" in shown
    assert "citations: 2 checked, 1 unknown" in shown


async def test_server_tool_requests_count_against_max_tool_calls(messages_api, make_brain):
    two_searches = [*web_search_blocks("q1", [("https://a.example/", "A")]), *web_search_blocks("q2", [])]
    echo = {"type": "tool_use", "id": "toolu_echo_1", "name": "echo", "input": {"text": "one"}}
    messages_api.script(
        server_tool_reply([*two_searches, echo], stop_reason="tool_use"),
        server_tool_reply([{**echo, "id": "toolu_echo_2"}], stop_reason="tool_use"),
        text_reply("synthesis at the limit"),
    )
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=messages_api.base_url, api_key="test-key", max_retries=0)
    brain = make_brain(AnthropicModel("claude-sonnet-4-5", client=client), server_tools=("web_search",),
                       max_tool_calls=3)
    result = await brain.run("search")
    # Two searches and one echo spent the three calls: the second echo is not run.
    assert result.cut_short and result.reason == "max_tool_calls"
    assert result.usage["tool_calls"] == 3 and result.usage["server_tool_use"]["web_search_requests"] == 2


def test_an_unknown_server_tool_is_one_clear_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "brainhands", "run", "look it up", "--server-tools", "web_search,browser",
                           "--sessions", str(tmp_path / "s.db")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ANTHROPIC_API_KEY": "k"})  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "brainhands: --server-tools browser: unknown; the server tools are web_search and web_fetch")
