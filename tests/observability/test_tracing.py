"""One trace per session: brain turn -> tool call -> gateway -> hand -> worker agent's turns and calls, in-process."""

from __future__ import annotations

import re

import pytest

from brain import Brain, BrainConfig, ScriptedModel, open_store
from brain.agent import AgentConfig, make_agent_hands
from brainhands.stack import free_port
from gateway.config import parse_config
from gateway.server import start_gateway
from hands import hand, tracing

ROOT_PLAN = [
    {"tool_calls": [["echo", {"text": "a"}], ["shout", {"text": "b"}],
                    ["agent", {"task": "CHILD: look twice", "tools": ["echo", "shout"]}]],
     "usage": {"input_tokens": 120, "output_tokens": 30, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}},
    {"text": "ROOT done"},
]  # fmt: skip
CHILD_PLAN = [
    {"tool_calls": [["echo", {"text": "c1"}], ["shout", {"text": "c2"}]]},
    {"text": "CHILD done"},
]


def two_level_model() -> ScriptedModel:
    def answer(request):
        task = request["messages"][0]["content"][0]["text"]
        plan = CHILD_PLAN if re.search(r"\bCHILD\b", task) else ROOT_PLAN
        turn = sum(1 for m in request["messages"] if m["role"] == "assistant")
        return plan[min(turn, len(plan) - 1)]

    return ScriptedModel([answer] * 20, id="claude-test-model")


@hand(description="Echo the text back.")
async def echo(text: str) -> str:
    return f"echo: {text}"


@hand(description="Shout the text back.")
async def shout(text: str) -> str:
    return text.upper()


@pytest.fixture
async def stack(tmp_path, hand_service):
    """A gateway routing echo, shout and agent to one hand service; the agent's brain calls the same gateway."""
    gateway_port = free_port()
    sessions = str(tmp_path / "sessions.db")
    model = two_level_model()
    config = AgentConfig(gateway=f"127.0.0.1:{gateway_port}", sessions=sessions, call_timeout=20)
    backend = await hand_service([*make_agent_hands(config, model=model), echo, shout])
    gw = await start_gateway(parse_config({
        "listen": f"127.0.0.1:{gateway_port}", "metrics": None, "routes": [{"hands": ["*"], "backends": [backend.address]}],
    }))  # fmt: skip
    store = await open_store(sessions)
    yield gw, store, model
    await store.close()
    await gw.server.stop(0)
    await gw.close()


def by_id(spans):
    return {s.context.span_id: s for s in spans}


def parent_of(span, index):
    return index.get(span.parent.span_id) if span.parent is not None else None


def chain(span, index) -> list[str]:
    """The span's name and its ancestors' names, root last."""
    names = []
    while span is not None:
        names.append(span.name)
        span = parent_of(span, index)
    return names


async def test_a_fan_out_with_a_worker_agent_is_one_trace_nested_call_by_call(spans, stack):
    gw, store, model = stack
    brain = Brain(target=gw.address, model=model, store=store, config=BrainConfig(call_timeout=30))
    try:
        result = await brain.run("ROOT: audit the project")
    finally:
        await brain.close()
    assert result.ok, result.text
    finished = spans()
    assert len({s.context.trace_id for s in finished}) == 1, sorted({s.name for s in finished})
    index = by_id(finished)
    [root] = [s for s in finished if s.parent is None]
    assert root.name == "invoke_agent brainhands"
    assert root.attributes["gen_ai.conversation.id"] == result.session_id

    # The root's first turn, with the GenAI attributes of the response.
    turns = [s for s in finished if s.name == "chat claude-test-model" and parent_of(s, index) is root]
    assert len(turns) == 2
    first = min(turns, key=lambda s: s.start_time)
    a = first.attributes
    assert a["gen_ai.request.model"] == "claude-test-model" and a["gen_ai.operation.name"] == "chat"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (120, 30)
    assert (a["gen_ai.usage.cache_read.input_tokens"], a["gen_ai.usage.cache_creation.input_tokens"]) == (100, 7)
    assert a["gen_ai.response.finish_reasons"] == ("tool_use",)

    # Three tool calls under that turn, each -> gateway -> attempt -> hand.
    calls = [s for s in finished if s.name.startswith("execute_tool ") and parent_of(s, index) is first]
    assert sorted(s.attributes["gen_ai.tool.name"] for s in calls) == ["agent", "echo", "shout"]
    for call in calls:
        [gateway_span] = [s for s in finished if parent_of(s, index) is call]
        name = call.attributes["gen_ai.tool.name"]
        assert gateway_span.name == f"gateway {name}"
        g = gateway_span.attributes
        assert g["brainhands.tenant"] == "anonymous" and g["brainhands.attempts"] == 1 and g["brainhands.code"] == "OK"
        assert g["brainhands.quota.decision"] == "no_quota" and g["brainhands.backend"]
        [attempt] = [s for s in finished if parent_of(s, index) is gateway_span]
        assert attempt.attributes["brainhands.attempt"] == 1
        [hand_span] = [s for s in finished if parent_of(s, index) is attempt]
        assert hand_span.name == f"hand {name}" and hand_span.attributes["gen_ai.tool.call.id"] == call.attributes["gen_ai.tool.call.id"]

    # The agent's own session, its turns and its two calls nest under the agent hand's span.
    [agent_call] = [s for s in calls if s.attributes["gen_ai.tool.name"] == "agent"]
    child_calls = [s for s in finished if s.name.startswith("execute_tool ") and s is not agent_call and s not in calls]
    assert sorted(s.attributes["gen_ai.tool.name"] for s in child_calls) == ["echo", "shout"]
    for child in child_calls:
        assert chain(child, index) == [
            child.name, "chat claude-test-model", "invoke_agent agent", "hand agent", "attempt 1 agent",
            "gateway agent", "execute_tool agent", "chat claude-test-model", "invoke_agent brainhands",
        ]
        # ... and each child call reaches its hand through the gateway too.
        [g] = [s for s in finished if parent_of(s, index) is child]
        assert g.name == f"gateway {child.attributes['gen_ai.tool.name']}"


async def test_the_session_records_its_trace_and_a_woken_session_links_to_it(spans, stack):
    gw, store, model = stack
    brain = Brain(target=gw.address, model=model, store=store, config=BrainConfig(call_timeout=30))
    try:
        result = await brain.run("ROOT: audit the project")
    finally:
        await brain.close()
    events = await store.events(result.session_id)
    recorded = events[0].data["trace"]
    [root] = [s for s in spans() if s.parent is None and s.name == "invoke_agent brainhands"]
    assert recorded == {"trace_id": format(root.context.trace_id, "032x"), "span_id": format(root.context.span_id, "016x")}

    # A session cut off before its end (its log ends after the first turn's calls) is woken in a new trace.
    sid = await store.create_session("ROOT: again", {}, None)
    for event in events[:-2]:
        await store.append(sid, event.seq, event.type, event.data)
    before = len(spans())
    brain = Brain(target=gw.address, model=model, store=store, config=BrainConfig(call_timeout=30))
    try:
        woken = await brain.wake(sid)
    finally:
        await brain.close()
    assert woken.ok
    [wake_root] = [s for s in spans()[before:] if s.parent is None and s.name == "invoke_agent brainhands"]
    assert wake_root.context.trace_id != root.context.trace_id
    assert [(link.context.trace_id, link.context.span_id) for link in wake_root.links] == [
        (root.context.trace_id, root.context.span_id)
    ]


async def test_with_tracing_off_no_exporter_is_made_and_no_traceparent_is_sent(monkeypatch, hand_service, tmp_path):
    for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(key, raising=False)
    # What every entry point does: without an endpoint, nothing is made.
    assert tracing.configure_tracing("brainhands-test") is False
    assert not tracing.enabled() and tracing.exporter() is None and tracing.server_interceptors() == []
    # OTEL_SDK_DISABLED=true wins over an endpoint, as the OpenTelemetry conventions say.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.configure_tracing("brainhands-test") is False and tracing.exporter() is None
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.delenv("OTEL_SDK_DISABLED")
    # The same stack, untraced: no traceparent goes out, no trace is recorded with the session.
    model = two_level_model()
    gateway_port = free_port()
    sessions = str(tmp_path / "sessions.db")
    config = AgentConfig(gateway=f"127.0.0.1:{gateway_port}", sessions=sessions, call_timeout=20)
    backend_all = await hand_service([*make_agent_hands(config, model=model), echo, shout])
    gw = await start_gateway(parse_config({
        "listen": f"127.0.0.1:{gateway_port}", "metrics": None, "routes": [{"hands": ["*"], "backends": [backend_all.address]}],
    }))  # fmt: skip
    store = await open_store(sessions)
    seen = []

    @hand(description="Record the metadata.")
    async def peek(ctx) -> str:
        seen.append(dict(ctx.metadata))
        return "ok"

    backend = await hand_service([peek])
    from hands import HandClient

    async with HandClient(backend.address) as client:
        await client.execute("peek", {})
    assert "traceparent" not in seen[0]
    brain = Brain(target=gw.address, model=model, store=store, config=BrainConfig(call_timeout=30))
    try:
        result = await brain.run("ROOT: audit the project")
    finally:
        await brain.close()
    try:
        assert result.ok
        assert "trace" not in (await store.events(result.session_id))[0].data
        assert tracing.exporter() is None
    finally:
        await store.close()
        await gw.server.stop(0)
        await gw.close()


async def test_a_call_retried_on_another_replica_shows_both_attempts(spans, hand_service):
    @hand(name="whoami", description="Say which replica answered.", idempotent=True)
    async def whoami_a() -> str:
        return "a"

    @hand(name="whoami", description="Say which replica answered.", idempotent=True)
    async def whoami_b() -> str:
        return "b"

    a = await hand_service([whoami_a])
    b = await hand_service([whoami_b])
    gw = await start_gateway(parse_config({
        "listen": "127.0.0.1:0", "metrics": None, "routes": [{"hands": ["*"], "backends": [a.address, b.address]}],
    }))  # fmt: skip
    from hands import HandClient

    try:
        await b.server.stop(0)  # b's port refuses connections now; the health check has not noticed yet
        async with HandClient(gw.address) as client:
            for _ in range(6):  # ties between replicas alternate: within a few calls one goes to b first
                with tracing.start_span("caller"):
                    assert (await client.execute("whoami", {}, timeout=5)).output == "a"
                if any(s.attributes.get("brainhands.attempts") == 2 for s in spans()):
                    break
    finally:
        await gw.server.stop(0)
        await gw.close()
    finished = spans()
    index = by_id(finished)
    [routed] = [s for s in finished if s.name == "gateway whoami" and s.attributes["brainhands.attempts"] == 2]
    attempts = sorted((s for s in finished if parent_of(s, index) is routed), key=lambda s: s.attributes["brainhands.attempt"])
    assert [s.attributes["brainhands.backend"] for s in attempts] == [b.address, a.address]
    assert attempts[0].attributes["error.type"] == "UNAVAILABLE" and attempts[0].status.status_code.name == "ERROR"
    assert attempts[1].status.status_code.name == "UNSET"
    [hand_span] = [s for s in finished if parent_of(s, index) is attempts[1]]
    assert hand_span.name == "hand whoami"
    assert routed.attributes["brainhands.backend"] == a.address and routed.attributes["brainhands.code"] == "OK"


async def test_every_log_line_in_a_traced_call_carries_the_trace_id(spans, hand_service):
    from structlog.testing import capture_logs

    from hands import HandClient
    from hands.logs import add_trace_id

    backend = await hand_service([echo])
    # The services' own processor, run on each line as configure_logging() runs it.
    with capture_logs(processors=[add_trace_id]) as lines:
        async with HandClient(backend.address) as client:
            with tracing.start_span("caller") as caller:
                await client.execute("echo", {"text": "x"}, timeout=5)
            await client.execute("echo", {"text": "untraced"}, timeout=5)
    calls = [line for line in lines if line.get("event") == "call"]
    [hand_span] = [s for s in spans() if s.name == "hand echo" and s.parent is not None]
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert calls[0]["trace_id"] == trace_id and calls[0]["span_id"] == format(hand_span.context.span_id, "016x")
    # A call from an untraced caller starts its own trace at the hand: its line names that one.
    assert calls[1]["trace_id"] != trace_id and len(calls[1]["trace_id"]) == 32


async def test_sessions_show_prints_the_sessions_trace_id(spans, stack, tmp_path):
    import asyncio
    import os
    import sys

    gw, store, model = stack
    brain = Brain(target=gw.address, model=model, store=store, config=BrainConfig(call_timeout=30))
    try:
        result = await brain.run("ROOT: audit the project")
    finally:
        await brain.close()
    [root] = [s for s in spans() if s.parent is None]
    show = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brainhands", "sessions", "show", result.session_id, "--sessions", str(tmp_path / "sessions.db"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await asyncio.wait_for(show.communicate(), 120)
    assert show.returncode == 0, err.decode()
    assert f"trace {format(root.context.trace_id, '032x')}" in out.decode()


async def test_a_call_refused_by_a_quota_shows_the_decision_on_the_gateway_span(spans, hand_service):
    import grpc

    from gateway.tenants import hash_key
    from hands import HandClient

    backend = await hand_service([echo])
    gw = await start_gateway(parse_config({
        "listen": "127.0.0.1:0", "metrics": None, "routes": [{"hands": ["*"], "backends": [backend.address]}],
        "tenants": [{"name": "team-a", "api_keys": [hash_key("key-a")], "allow": ["*"],
                     "quotas": [{"hands": "echo", "calls": "1/h"}]}],
    }))  # fmt: skip
    try:
        async with HandClient(gw.address, api_key="key-a") as client:
            await client.execute("echo", {"text": "first"}, timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.execute("echo", {"text": "second"}, timeout=5)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await gw.server.stop(0)
        await gw.close()
    admitted, denied = sorted((s for s in spans() if s.name == "gateway echo"), key=lambda s: s.start_time)
    assert admitted.attributes["brainhands.quota.decision"] == "admitted"
    assert admitted.attributes["brainhands.tenant"] == "team-a" and admitted.attributes["brainhands.code"] == "OK"
    assert denied.attributes["brainhands.quota.decision"] == "denied"
    assert denied.attributes["brainhands.quota.rule"] == "quotas[0].calls"
    assert denied.attributes["brainhands.code"] == "RESOURCE_EXHAUSTED"
    assert denied.attributes["error.type"] == "RESOURCE_EXHAUSTED" and denied.status.status_code.name == "ERROR"
    assert not [s for s in spans() if s.name == "hand echo" and s.start_time > denied.start_time]  # never reached the hand
