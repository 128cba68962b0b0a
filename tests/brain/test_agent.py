"""The agent hand: workers that orchestrate, nested through a real gateway, inside the root session's budget."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from brain import Brain, BrainConfig, ScriptedModel, open_store
from brain import budget as tb
from brain.agent import AgentConfig, make_agent_hands
from brain.timeline import load_timeline
from brainhands.procs import free_port
from gateway.config import parse_config
from gateway.server import start_gateway
from gateway.tenants import hash_key
from gateway.v1 import gateway_pb2, gateway_pb2_grpc
from hands import Context, HandClient, hand
from hands import metadata as md


@dataclass
class Seen:
    depths: list[int] = field(default_factory=list)


def scripted(plans: dict[str, list[dict]], *, greedy: frozenset[str] = frozenset()) -> ScriptedModel:
    """One model for every level: the plan is picked by the marker word in the session's task.

    greedy: the labels whose every answer, and every synthesis at all levels, would be a million tokens long,
    so each is as long as its request's max_tokens allows.
    """

    def answer(request):
        task = request["messages"][0]["content"][0]["text"]
        label = next(word for word in plans if re.search(rf"\b{word}\b", task))
        if request["tool_choice"] == {"type": "none"}:
            step = {"text": f"{label}: synthesis at the limit"}
        else:
            plan = plans[label]
            turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
            step = plan[min(turn, len(plan) - 1)]
        greedy_now = label in greedy or request["tool_choice"] == {"type": "none"}
        return {**step, "usage": {"output_tokens": 1_000_000}} if greedy_now and greedy else step

    return ScriptedModel([answer] * 200)


@pytest.fixture
async def tree(tmp_path, hand_service):
    """`run(plans, **limits)`: a root Brain calling, through an open gateway, the agent hand and an echo hand."""
    seen = Seen()

    @hand(description="Echo the text back.")
    async def echo(text: str, ctx: Context) -> str:
        seen.depths.append(ctx.depth)
        return f"echo: {text}"

    sessions = str(tmp_path / "sessions.db")
    gateway_port = free_port()
    started = []

    async def run(plans, *, max_depth=1, greedy=frozenset(), tenants=None, api_key=None, tenant=None, **limits):
        model = scripted(plans, greedy=greedy)
        config = AgentConfig(gateway=f"127.0.0.1:{gateway_port}", gateway_api_key=api_key, sessions=sessions,
                             max_depth=max_depth, call_timeout=20)  # fmt: skip
        backend = await hand_service([*make_agent_hands(config, model=model), echo])
        gw = await start_gateway(parse_config({
            "listen": f"127.0.0.1:{gateway_port}", "metrics": None, "routes": [{"hands": ["*"], "backends": [backend.address]}],
            **({"tenants": tenants} if tenants else {}),
        }))  # fmt: skip
        started.append(gw)
        run.gateway = gw
        store = await open_store(sessions)
        brain = Brain(target=gw.address, api_key=api_key, model=model, store=store, config=BrainConfig(call_timeout=30, **limits))
        try:
            result = await brain.run("ROOT: audit the project", **({"tenant": tenant} if tenant else {}))
            return result, store
        finally:
            await brain.close()

    run.seen = seen
    run.sessions = sessions
    yield run
    for gw in started:
        await gw.server.stop(0)
        await gw.close()


async def session_tree(store, root_id):
    """Every session under root_id (root included), each with its events, in creation order."""
    out, frontier = [], [root_id]
    everything = await store.list_sessions(limit=1000)
    while frontier:
        sid = frontier.pop(0)
        info = await store.get_session(sid)
        out.append((info, await store.events(sid)))
        frontier += [s.id for s in sorted(everything, key=lambda s: s.created_at) if s.parent_id == sid]
    return out


def own_calls(events) -> int:
    return sum(1 for e in events if e.type == "tool_call_started")


def own_tokens(events) -> int:
    """The session's own model tokens, without what its hands reported."""
    return sum(sum(e.data["usage"].values()) for e in events if e.type == "model_response")


def finished(events, name):
    return [e.data for e in events if e.type == "tool_call_finished" and e.data["name"] == name]


async def test_a_depth_2_tree_stays_inside_the_root_budget_is_refused_past_max_depth_and_is_one_tree(tree):
    plans = {
        "ROOT": [{"tool_calls": [["agent", {"task": "LEVEL1: audit the auth module"}]]}, {"text": "root: done"}],
        "LEVEL1": [
            {"tool_calls": [["agent", {"task": "LEVEL2: read the token code"}], ["echo", {"text": "one"}]]},
            {"text": "level1: done"},
        ],
        # The deepest worker asks for a third level (refused), then keeps calling tools until its budget stops it.
        "LEVEL2": [
            {"tool_calls": [["agent", {"task": "LEVEL3: too deep"}], ["echo", {"text": "two"}]]},
            {"tool_calls": [["echo", {"text": "more"}], ["echo", {"text": "more"}]], "repeat": True},
        ],
        "LEVEL3": [{"text": "never runs"}],
    }
    result, store = await tree(plans, max_depth=1, max_tool_calls=12, token_budget=300_000)
    assert result.ok and result.text == "root: done"

    [(root, root_events), (child, child_events), (grand, grand_events)] = await session_tree(store, result.session_id)
    assert (child.parent_id, grand.parent_id) == (root.id, child.id)

    # Refused at depth max+1, with an error the model can act on.
    [refused] = finished(grand_events, "agent")
    assert refused["is_error"] and "past the maximum of 1 nested workers" in refused["output"]
    assert sorted(set(tree.seen.depths)) == [1, 2]  # echo called by the depth-1 and depth-2 agents' brains

    # Budgets carved out of the caller's: 12 - 1 (the agent call itself) for the child; the child's two calls
    # share what is left after both: (11 - 2) // 2 each.
    assert child_events[0].data["config"]["max_tool_calls"] == 11
    assert grand_events[0].data["config"]["max_tool_calls"] == 4
    assert grand.status == "finished" and "synthesis at the limit" in grand_events[-1].data["result"]
    assert own_calls(grand_events) == 4

    # The root's totals include everything below it, and stay inside its budget.
    calls = [own_calls(events) for _, events in ((root, root_events), (child, child_events), (grand, grand_events))]
    assert result.usage["tool_calls"] == sum(calls) == 1 + 2 + 4
    assert result.usage["tool_calls"] <= 12
    tokens = own_tokens(root_events) + own_tokens(child_events) + own_tokens(grand_events)
    assert result.usage["total_tokens"] == tokens <= 300_000
    [agent_call] = finished(root_events, "agent")
    assert agent_call["usage"]["tool_calls"] == 6
    # The agent reports its own model's tokens as its usage and its workers' as nested: the root counts both.
    assert agent_call["usage"]["input_tokens"] + agent_call["usage"]["output_tokens"] == own_tokens(child_events)
    assert agent_call["usage"]["nested_tokens"] == own_tokens(grand_events)

    # Drawn as one tree: the root's timeline shows the child's and the grandchild's calls, each in its own lane.
    html = await load_timeline(store, root.id)
    for sub, events in ((child, child_events), (grand, grand_events)):
        statuses = re.findall(rf'data-kind="tool-call"[^>]*data-status="([\w-]+)"[^>]*data-session="{sub.id}"', html)
        assert len([s for s in statuses if s != "not-run"]) == own_calls(events)
    lanes = re.findall(r'data-kind="session-row"[^>]*data-session="(\w+)" data-parent="(\w+)" data-depth="(\d)"', html)
    assert lanes == [(child.id, root.id, "1"), (grand.id, child.id, "2")]
    await store.close()
    # And so does `brainhands sessions show --html`, and `sessions show` as text.
    page = tree.sessions + ".html"
    out = await _sessions_show(root.id, tree.sessions, "--html", page)
    assert re.findall(rf'data-kind="tool-call"[^>]*data-session="{grand.id}"', Path(page).read_text())
    text = await _sessions_show(root.id, tree.sessions)
    assert "2 sub-agent sessions, drawn under their calls" in text
    # Nested: the child's session under the root's agent call, the grandchild's under the child's, deeper each time.
    lines = text.splitlines()
    child_at = next(i for i, line in enumerate(lines) if f"sub-agent {child.id[:12]}" in line)
    grand_at = next(i for i, line in enumerate(lines) if f"sub-agent {grand.id[:12]}" in line)
    assert "agent" in lines[child_at - 1] and child_at < grand_at
    indent = [len(lines[i]) - len(lines[i].lstrip(" │├└─")) for i in (child_at - 1, child_at, grand_at)]
    assert indent[0] < indent[1] < indent[2]
    below = text[text.index(grand.id[:12]):]  # the grandchild's own calls are listed under its line,
    below = below[:below.index("limit reached")]  # down to its own summary line (its parent's calls follow)
    # its calls: echo ran 3 times, and its refused agent call shows as an error
    assert below.count("✓ echo") == own_calls(grand_events) - 1 and "✗ agent" in below and "LEVEL3: too deep" in below
    assert out.strip() == str(Path(page).resolve())


async def _sessions_show(session_id: str, sessions: str, *args: str) -> str:
    shown = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brainhands", "sessions", "show", session_id, "--sessions", sessions, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "160"},
    )
    try:
        stdout, stderr = await asyncio.wait_for(shown.communicate(), 60)
    finally:
        if shown.returncode is None:
            shown.kill()
            await shown.wait()
    assert shown.returncode == 0, stderr.decode()
    return stdout.decode()


async def test_a_tight_token_budget_holds_across_a_depth_2_tree_of_greedy_workers(tree):
    # The root and the deepest worker never stop on their own, and the deepest worker and every synthesis answer
    # as long as max_tokens lets them: the root's total (its brain's tokens and everything its hands reported,
    # the tree below included) still stays inside the root's budget.
    budget = 45_000
    plans = {
        "ROOT": [
            {"tool_calls": [["agent", {"task": "LEVEL1: audit the auth module"}]]},
            {"tool_calls": [["echo", {"text": "root: more"}]], "repeat": True},
        ],
        "LEVEL1": [
            {"tool_calls": [["agent", {"task": "LEVEL2: read the token code"}], ["echo", {"text": "one"}]]},
            {"text": "level1: done"},
        ],
        "LEVEL2": [{"tool_calls": [["echo", {"text": "more"}]], "repeat": True}],
    }
    result, store = await tree(plans, greedy=frozenset({"LEVEL2"}), token_budget=budget, max_turns=100)
    assert result.cut_short and result.reason == "token_budget"  # the root too kept going until its budget stopped it
    [(root, root_events), (child, child_events), (grand, grand_events)] = await session_tree(store, result.session_id)
    assert (child.parent_id, grand.parent_id) == (root.id, child.id)
    assert grand_events[-1].data["cut_short"] and grand_events[-1].data["reason"] == "token_budget"  # the budget bit
    assert own_calls(grand_events) >= 1
    tokens = own_tokens(root_events) + own_tokens(child_events) + own_tokens(grand_events)
    assert result.usage["total_tokens"] == tokens <= budget
    assert tokens > budget - 2_000  # and its synthesis had the rest: the reserve is kept, not wasted
    # Each level inside the budget its caller carved for it, its synthesis included.
    for events in (child_events, grand_events):
        assert events[-1].data["totals"]["total_tokens"] <= events[0].data["config"]["token_budget"]
    # The greedy answers were cut at the max_tokens their requests were given: that is what kept the total inside.
    outputs = [e.data["usage"]["output_tokens"] for e in grand_events if e.type == "model_response"]
    assert all(500 < n < budget for n in outputs)
    await store.close()


async def test_the_gateway_charges_a_nested_trees_tokens_to_the_tenant_once(tree):
    key = "tree-tenant-key-0123456789"
    plans = {
        "ROOT": [{"tool_calls": [["agent", {"task": "LEVEL1: audit the auth module"}]]}, {"text": "root: done"}],
        "LEVEL1": [{"tool_calls": [["agent", {"task": "LEVEL2: read the token code"}]]}, {"text": "level1: done"}],
        "LEVEL2": [{"tool_calls": [["echo", {"text": "two"}]]}, {"text": "level2: done"}],
    }
    tenants = [{"name": "acme", "api_keys": [hash_key(key)], "allow": ["*"],
                "quotas": [{"hands": "*", "tokens": "1000000/day"}]}]  # fmt: skip
    result, store = await tree(plans, tenants=tenants, api_key=key)
    assert result.ok
    [(root, root_events), (child, child_events), (grand, grand_events)] = await session_tree(store, result.session_id)
    client = HandClient(tree.gateway.address, api_key=key)
    try:
        usage = await gateway_pb2_grpc.QuotaServiceStub(client.channel).GetUsage(
            gateway_pb2.GetUsageRequest(), metadata=(("authorization", f"Bearer {key}"),)
        )
    finally:
        await client.close()
    [charged] = [q.used for q in usage.quotas if q.kind == gateway_pb2.QUOTA_KIND_TOKENS]
    # The root's brain calls its model directly; the two agent calls went through the gateway, each reporting
    # its own model's tokens: every token below the root charged once, not once per level above it.
    assert charged == own_tokens(child_events) + own_tokens(grand_events)
    assert result.usage["total_tokens"] == own_tokens(root_events) + charged
    await store.close()


async def test_a_worker_agents_session_belongs_to_its_callers_tenant_at_every_depth(tree):
    plans = {
        "ROOT": [{"tool_calls": [["agent", {"task": "LEVEL1: audit the auth module"}]]}, {"text": "root: done"}],
        "LEVEL1": [{"tool_calls": [["agent", {"task": "LEVEL2: read the token code"}]]}, {"text": "level1: done"}],
        "LEVEL2": [{"text": "level2: done"}],
    }
    result, store = await tree(plans, max_depth=2, tenant="team-a")
    assert result.ok
    sessions = await session_tree(store, result.session_id)
    assert [info.tenant for info, _ in sessions] == ["team-a"] * 3  # so team-a, and only team-a, sees the tree
    await store.close()


async def test_a_worker_agent_that_never_stops_is_held_to_the_callers_remaining_calls(tree):
    plans = {
        "ROOT": [
            {"tool_calls": [["agent", {"task": "LOOP: keep checking"}]]},
            {"tool_calls": [["echo", {"text": "root wants more"}]]},
            {"text": "root: done"},
        ],
        "LOOP": [{"tool_calls": [["echo", {"text": "again"}]], "repeat": True}],
    }
    result, store = await tree(plans, max_tool_calls=5)
    [(root, root_events), (loop, loop_events)] = await session_tree(store, result.session_id)
    assert loop_events[0].data["config"]["max_tool_calls"] == 4
    assert len(tree.seen.depths) == 4  # the echo hand really ran 4 times for the agent, and never for the root
    # The agent's 4 calls plus the call to it use up the root's 5: the root's own echo is not run.
    [not_run] = finished(root_events, "echo")
    assert not_run["status"] == "NOT_RUN" and not_run["reason"] == "max_tool_calls"
    assert result.usage["tool_calls"] == 5
    assert result.cut_short and result.reason == "max_tool_calls"
    await store.close()


async def test_an_agent_gets_only_the_callers_remaining_tokens(tree):
    plans = {
        "ROOT": [{"tool_calls": [["agent", {"task": "LOOP: keep checking"}]]}, {"text": "root: done"}],
        "LOOP": [{"tool_calls": [["echo", {"text": "again"}]], "repeat": True}],
    }
    result, store = await tree(plans, token_budget=8_000)
    [(root, root_events), (loop, loop_events)] = await session_tree(store, result.session_id)
    share = loop_events[0].data["config"]["token_budget"]
    used = own_tokens(root_events[:2])
    # Half of what was left after the root's first turn, less the root's synthesis: its prompt (the first
    # turn's prompt and answer, and a margin) and its output reserve; the other half pays for the answer.
    assert share == (8_000 - used - (used + tb.approx_tokens([]) + tb.PROMPT_MARGIN) - tb.SYNTHESIS_RESERVE) // 2
    loop_end = loop_events[-1].data
    assert loop_end["cut_short"] and loop_end["reason"] == "token_budget"
    [agent_call] = finished(root_events, "agent")
    assert sum(agent_call["usage"].get(k, 0) for k in ("input_tokens", "output_tokens", "nested_tokens")) == loop_end["totals"]["total_tokens"]
    assert result.usage["total_tokens"] == own_tokens(root_events) + loop_end["totals"]["total_tokens"]
    await store.close()


async def test_no_calls_left_means_no_worker_agent(tree):
    plans = {
        "ROOT": [
            {"tool_calls": [["agent", {"task": "LEVEL1: look"}]]},
            {"text": "root: done"},
        ],
        "LEVEL1": [{"text": "never runs"}],
    }
    result, store = await tree(plans, max_tool_calls=1)
    [(root, root_events)] = await session_tree(store, result.session_id)
    [call] = finished(root_events, "agent")
    assert call["is_error"] and "no tool calls left" in call["output"]
    await store.close()


async def test_the_budget_and_depth_headers_come_from_the_dispatcher(hand_service, hand_client, tmp_path):
    @hand(description="Report the budget headers.")
    async def headers(ctx: Context) -> str:
        return f"{ctx.depth} {ctx.metadata.get(md.BUDGET_TOKENS)} {ctx.metadata.get(md.BUDGET_CALLS)}"

    running = await hand_service([headers])
    model = ScriptedModel([{"tool_calls": [["headers", {}], ["headers", {}]]}, {"text": "ok"}])
    store = await open_store(str(tmp_path / "s.db"))
    brain = Brain(target=running.address, model=model, store=store, config=BrainConfig(max_tool_calls=10, token_budget=50_000), depth=2)
    result = await brain.run("look")
    await brain.close()
    events = await store.events(result.session_id)
    used = own_tokens(events[:2])
    outputs = {e.data["output"] for e in events if e.type == "tool_call_finished"}
    share = tb.calls_room(50_000, used, used + tb.approx_tokens([]) + tb.PROMPT_MARGIN) // (2 * 2)
    assert outputs == {f"2 {share} {(10 - 2) // 2}"}
    await store.close()
