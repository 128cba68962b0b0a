"""The brain with the real anthropic SDK against a local Messages-API server: fan-out, prompt caching, errors."""

from __future__ import annotations

import json

import pytest

from brain import AnthropicModel
from brainhands.scripted_api import HTTPError, text_reply, tool_reply, tool_results


@pytest.fixture
def model(messages_api, monkeypatch):
    # The SDK reads both from the environment, as it would in production.
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_api.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    return AnthropicModel("claude-sonnet-5-5", max_tokens=1024)


def strip_marks(messages):
    return json.dumps(messages).replace(', "cache_control": {"type": "ephemeral"}', "")


def breakpoints(body) -> int:
    return json.dumps(body).count('"cache_control"')


async def test_one_tool_call_through_the_real_sdk(make_brain, model, messages_api, recorder, store):
    messages_api.script(
        tool_reply([("echo", {"text": "hi"})], input_tokens=500, output_tokens=20, cache_creation=400),
        text_reply("The echo hand said hi.", input_tokens=520, output_tokens=8, cache_read=400),
    )
    result = await make_brain(model).run("Say hi via a tool.")
    assert result.ok and result.text == "The echo hand said hi."
    first, second = messages_api.bodies
    assert first["model"] == "claude-sonnet-5-5" and first["max_tokens"] == 1024
    assert messages_api.requests[0].api_key == "sk-test"
    [res] = tool_results(second)
    call_id = first and next(iter(recorder.runs))
    assert res["tool_use_id"] == call_id and res["content"] == "echo: hi" and res["is_error"] is False
    responses = [e for e in await store.events(result.session_id) if e.type == "model_response"]
    assert [r.data["usage"]["cache_read_input_tokens"] for r in responses] == [0, 400]
    assert result.usage["model_usage"]["input_tokens"] == 1020


async def test_twelve_parallel_calls_then_a_synthesis(make_brain, model, messages_api, recorder):
    recorder.gate_at = 12
    messages_api.script(
        tool_reply([("gate", {"item": i}) for i in range(12)]),
        text_reply("Twelve results, synthesized."),
    )
    result = await make_brain(model, max_parallel=12).run("Twelve independent things.")
    assert result.text == "Twelve results, synthesized."
    assert recorder.peak == 12
    second = messages_api.bodies[1]
    results = tool_results(second)
    assert sorted(r["content"] for r in results) == sorted(f"item {i} done" for i in range(12))
    asked = [b["id"] for b in messages_api.bodies[1]["messages"][1]["content"] if b["type"] == "tool_use"]
    assert [r["tool_use_id"] for r in results] == asked
    assert second["messages"][-1]["role"] == "user" and len(second["messages"]) == 3


async def test_the_stable_prefix_is_cached_and_byte_identical_every_turn(make_brain, model, messages_api):
    messages_api.script(
        tool_reply([("echo", {"text": "a"})]),
        tool_reply([("echo", {"text": "b"}), ("echo", {"text": "c"})]),
        text_reply("done"),
    )
    await make_brain(model).run("Three turns.")
    bodies = messages_api.bodies
    assert len(bodies) == 3
    prefixes = {json.dumps([b["tools"], b["system"]], sort_keys=False) for b in bodies}
    assert len(prefixes) == 1, "tools + system changed between turns: the cache would miss"
    raw = [r.raw for r in messages_api.requests]
    tools_bytes = [r[r.index(b'"tools"'):] for r in raw]
    assert tools_bytes[0][:200] == tools_bytes[1][:200] == tools_bytes[2][:200]
    for body in bodies:
        assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert all("cache_control" not in t for t in body["tools"][:-1])
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}, "no moving breakpoint"
        assert breakpoints(body) <= 4
    # The breakpoint the previous request ended on is still there, so this request reads what that one wrote.
    assert bodies[2]["messages"][2]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    # The conversation grows by appending only: the previous request's messages are this one's prefix.
    assert strip_marks(bodies[2]["messages"][:3]) == strip_marks(bodies[1]["messages"])


async def test_a_prompt_too_long_error_gets_a_synthesis_on_a_trimmed_conversation(make_brain, model, messages_api):
    messages_api.script(
        tool_reply([("echo", {"text": "fact"})]),
        HTTPError(400, message="prompt is too long: 212345 tokens > 200000 maximum"),
        text_reply("Answer from the digest."),
    )
    result = await make_brain(model).run("Too much.")
    assert result.cut_short and result.reason == "context_window" and result.text == "Answer from the digest."
    last = messages_api.bodies[-1]
    assert len(last["messages"]) == 1 and "echo: fact" in last["messages"][0]["content"][0]["text"]
    assert last["tool_choice"] == {"type": "none"}


async def test_rate_limits_are_retried_by_the_sdk(make_brain, model, messages_api):
    messages_api.script(HTTPError(429, retry_after=0), HTTPError(529, retry_after=0), text_reply("after retries"))
    result = await make_brain(model).run("Busy API.")
    assert result.text == "after retries" and len(messages_api.bodies) == 3


async def test_a_bad_api_key_fails_the_session_with_one_clear_line(make_brain, model, messages_api):
    messages_api.api_key = "the-right-key"
    result = await make_brain(model).run("Anything.")
    assert result.status == "failed" and "ANTHROPIC_API_KEY" in result.text and "\n" not in result.text
    assert len(messages_api.bodies) == 1
