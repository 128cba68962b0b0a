"""The llm_worker hand, served over real gRPC, talking to the fake Messages API through the real anthropic SDK."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from brainhands.scripted_api import HTTPError, ScriptedMessagesAPI, text_reply, tool_reply, tool_results
from hands import Context, HandResult, Usage, hand
from hands import metadata as md
from hands.builtin.llm import SYSTEM_PROMPT, LLMWorkerConfig, make_llm_hands
from tests.procs import ROOT, start_service


@pytest.fixture
def start_worker(messages_api, hand_service, hand_client):
    """Serve llm_worker over gRPC with a config aimed at the fake API; returns a client to it."""

    async def _start(**overrides):
        config = LLMWorkerConfig(**{"api_key": "sk-test", "base_url": messages_api.base_url, **overrides})
        running = await hand_service(make_llm_hands(config))
        return hand_client(running.address)

    return _start


async def test_a_task_is_answered_and_the_api_saw_the_worker_prompt_model_and_task(messages_api, start_worker):
    messages_api.script(text_reply("1. fast\n2. typed\n3. small", input_tokens=120, output_tokens=30))
    client = await start_worker(model="claude-test-worker")
    response = await client.execute(
        "llm_worker",
        {
            "task": "List three strengths of gRPC.",
            "context": "The reader builds microservices.",
            "output_format": "a numbered list",
        },
    )
    assert not response.is_error, response.output
    assert response.output == "1. fast\n2. typed\n3. small"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (120, 30)
    [seen] = messages_api.requests
    assert seen.body["model"] == "claude-test-worker"
    assert seen.body["system"] == SYSTEM_PROMPT
    prompt = seen.body["messages"][0]["content"]
    assert "List three strengths of gRPC." in prompt
    assert "The reader builds microservices." in prompt
    assert "a numbered list" in prompt
    assert "tools" not in seen.body
    assert seen.api_key == "sk-test"


async def test_a_429_is_retried_by_the_sdk_and_the_call_succeeds(messages_api, start_worker):
    messages_api.script(HTTPError(429, retry_after=0), text_reply("done after a retry"))
    client = await start_worker()
    response = await client.execute("llm_worker", {"task": "say done"})
    assert not response.is_error, response.output
    assert response.output == "done after a retry"
    assert len(messages_api.requests) == 2


async def test_rate_limited_past_the_retries_is_an_error_the_model_can_read(messages_api, start_worker):
    messages_api.script(*[HTTPError(429, retry_after=0)] * 2)
    client = await start_worker(max_retries=1)
    response = await client.execute("llm_worker", {"task": "say done"})
    assert response.is_error
    assert "rate-limited" in response.output
    assert len(messages_api.requests) == 2


async def test_overloaded_past_the_retries_is_an_error(messages_api, start_worker):
    messages_api.script(*[HTTPError(529, retry_after=0)] * 3)
    client = await start_worker(max_retries=2)
    response = await client.execute("llm_worker", {"task": "say done"})
    assert response.is_error
    assert "overloaded" in response.output
    assert len(messages_api.requests) == 3


async def test_no_key_is_an_error_at_call_time_and_no_request_is_sent(messages_api, start_worker):
    client = await start_worker(api_key=None)
    response = await client.execute("llm_worker", {"task": "anything"})
    assert response.is_error
    assert response.output == "ANTHROPIC_API_KEY is not set for the llm hand"
    assert messages_api.requests == []


async def test_a_wrong_key_says_the_workers_key_was_refused(hand_service, hand_client):
    with ScriptedMessagesAPI(api_key="sk-right") as api:
        config = LLMWorkerConfig(api_key="sk-wrong", base_url=api.base_url)
        running = await hand_service(make_llm_hands(config))
        response = await hand_client(running.address).execute("llm_worker", {"task": "anything"})
    assert response.is_error
    assert "ANTHROPIC_API_KEY" in response.output and "refused" in response.output
    assert "sk-wrong" not in response.output
    assert len(api.requests) == 1  # a 401 is not retried


async def test_a_refusal_is_an_error(messages_api, start_worker):
    messages_api.script(text_reply("I can't help with that.", stop_reason="refusal"))
    client = await start_worker()
    response = await client.execute("llm_worker", {"task": "something it refuses"})
    assert response.is_error
    assert "refused" in response.output
    assert response.usage.output_tokens == 5


async def test_max_tokens_returns_the_partial_answer_marked_cut_short(messages_api, start_worker):
    messages_api.script(text_reply("The first half of", stop_reason="max_tokens"))
    client = await start_worker()
    response = await client.execute("llm_worker", {"task": "write a lot"})
    assert not response.is_error
    assert response.output.startswith("The first half of")
    assert "cut short" in response.output


async def test_depth_past_the_maximum_is_refused_without_calling_the_model(messages_api, start_worker):
    client = await start_worker(max_depth=2)
    response = await client.execute("llm_worker", {"task": "nest"}, metadata={md.DEPTH: "3"})
    assert response.is_error
    assert "depth 3" in response.output and "maximum of 2" in response.output
    assert messages_api.requests == []

    messages_api.script(text_reply("at the limit"))
    at_limit = await client.execute("llm_worker", {"task": "nest"}, metadata={md.DEPTH: "2"})
    assert not at_limit.is_error
    assert at_limit.output == "at the limit"


async def test_invalid_input_is_refused_by_the_schema(messages_api, start_worker):
    client = await start_worker()
    response = await client.execute("llm_worker", {"context": "no task"})
    assert response.is_error
    assert "task" in response.output
    assert messages_api.requests == []


def _tool_hands(seen: list[dict]):
    @hand(description="Repeat the text back in capitals.")
    async def shout(text: str, *, ctx: Context) -> HandResult:
        seen.append({"text": text, "depth": ctx.depth, "session_id": ctx.session_id, "call_id": ctx.call_id})
        return HandResult(text.upper(), usage=Usage(input_tokens=100, output_tokens=50))

    @hand(description="Delete everything. Never offered unless asked for.")
    async def wipe() -> str:
        raise AssertionError("the worker called a tool it was not given")

    return [shout, wipe]


async def test_tool_loop_calls_the_hand_one_level_deeper_and_sums_usage(messages_api, hand_service, start_worker):
    seen: list[dict] = []
    gateway = await hand_service(_tool_hands(seen))  # a hand service speaks the gateway's HandService
    messages_api.script(
        tool_reply([("shout", {"text": "hello"})], text="Let me shout.", input_tokens=40, output_tokens=12),
        lambda body: text_reply(
            f"The tool said {tool_results(body)[0]['content']}", input_tokens=70, output_tokens=9
        ),
    )
    client = await start_worker(gateway=gateway.address)
    response = await client.execute(
        "llm_worker",
        {"task": "Shout hello with the tool and report what it said.", "tools": ["shout"]},
        session_id="session-42",
        metadata={md.DEPTH: "1"},
    )
    assert not response.is_error, response.output
    assert response.output == "The tool said HELLO"
    assert [(s["text"], s["depth"], s["session_id"]) for s in seen] == [("hello", 2, "session-42")]
    first, second = messages_api.bodies
    assert [t["name"] for t in first["tools"]] == ["shout"]  # only what was asked for
    assert first["tools"][0]["input_schema"]["properties"]["text"] == {"type": "string"}
    tool_use = second["messages"][1]["content"][-1]
    assert tool_use["type"] == "tool_use" and seen[0]["call_id"] == tool_use["id"]
    [result] = tool_results(second)
    assert result["tool_use_id"] == tool_use["id"] and not result.get("is_error")
    # Two model turns plus what the hand reported.
    assert (response.usage.input_tokens, response.usage.output_tokens) == (40 + 70 + 100, 12 + 9 + 50)


async def test_a_failing_tool_reaches_the_model_as_an_error_result(messages_api, hand_service, start_worker):
    gateway = await hand_service(_tool_hands([]))
    messages_api.script(
        tool_reply([("shout", {"txt": "wrong field"})]),
        lambda body: text_reply("tool error was: " + str(tool_results(body)[0].get("is_error"))),
    )
    client = await start_worker(gateway=gateway.address)
    response = await client.execute("llm_worker", {"task": "shout", "tools": ["shout"]})
    assert response.output == "tool error was: True"


async def test_a_tool_the_worker_was_not_given_is_refused(messages_api, hand_service, start_worker):
    gateway = await hand_service(_tool_hands([]))
    messages_api.script(
        tool_reply([("wipe", {})]),
        lambda body: text_reply(tool_results(body)[0]["content"]),
    )
    client = await start_worker(gateway=gateway.address)
    response = await client.execute("llm_worker", {"task": "shout", "tools": ["shout"]})
    assert "not given" in response.output


async def test_tools_the_gateway_lacks_are_an_error_naming_them(messages_api, hand_service, start_worker):
    gateway = await hand_service(_tool_hands([]))
    client = await start_worker(gateway=gateway.address)
    response = await client.execute("llm_worker", {"task": "x", "tools": ["shout", "fs_read"]})
    assert response.is_error
    assert "fs_read" in response.output and "shout, wipe" in response.output
    assert messages_api.requests == []


async def test_tools_without_a_gateway_are_an_error(messages_api, start_worker):
    client = await start_worker()
    response = await client.execute("llm_worker", {"task": "x", "tools": ["fs_read"]})
    assert response.is_error
    assert "BRAINHANDS_GATEWAY" in response.output


async def test_a_worker_that_never_finishes_stops_at_max_turns(messages_api, hand_service, start_worker):
    gateway = await hand_service(_tool_hands([]))
    messages_api.script(*[tool_reply([("shout", {"text": "again"})]) for _ in range(3)])
    client = await start_worker(gateway=gateway.address, max_turns=3)
    response = await client.execute("llm_worker", {"task": "loop", "tools": ["shout"]})
    assert response.is_error
    assert "3 turns" in response.output
    assert len(messages_api.requests) == 3
    assert response.usage.output_tokens == 3 * 5 + 3 * 50


def test_config_from_env_reads_once_and_names_a_bad_key():
    config = LLMWorkerConfig.from_env(
        {"ANTHROPIC_API_KEY": "sk-secret-1", "BRAINHANDS_WORKER_MODEL": "m", "BRAINHANDS_MAX_DEPTH": "1"}
    )
    assert (config.api_key, config.model, config.max_depth, config.gateway) == ("sk-secret-1", "m", 1, None)
    assert "sk-secret-1" not in repr(config)  # the key is kept out of logs and reprs
    assert LLMWorkerConfig.from_env({}).model == "claude-sonnet-5-5"
    with pytest.raises(ValueError, match="BRAINHANDS_MAX_DEPTH"):
        LLMWorkerConfig.from_env({"BRAINHANDS_MAX_DEPTH": "deep"})
    with pytest.raises(ValueError, match="BRAINHANDS_WORKER_MAX_TURNS"):
        LLMWorkerConfig.from_env({"BRAINHANDS_WORKER_MAX_TURNS": "0"})


@pytest.mark.system
async def test_served_as_a_process_it_answers_and_warns_at_start_without_a_key(messages_api, hand_client):
    messages_api.script(text_reply("from the process", input_tokens=3, output_tokens=2))
    env = {"ANTHROPIC_API_KEY": "sk-proc", "ANTHROPIC_BASE_URL": messages_api.base_url}
    service = start_service(["serve", "hand", "hands.builtin.llm", "--port", "0"], env=env)
    try:
        response = await hand_client(service.address).execute("llm_worker", {"task": "hi"}, timeout=30)
        assert (response.output, response.is_error, response.usage.output_tokens) == ("from the process", False, 2)
        assert messages_api.requests[0].api_key == "sk-proc"
    finally:
        service.stop()

    keyless = start_service(
        ["serve", "hand", "hands.builtin.llm", "--port", "0"],
        env={"ANTHROPIC_API_KEY": "", "ANTHROPIC_BASE_URL": messages_api.base_url},
    )
    try:
        warnings = [json.loads(line) for line in keyless.log if line.startswith("{")]
        assert any(w.get("level") == "warning" and "ANTHROPIC_API_KEY" in w["event"] for w in warnings)
        response = await hand_client(keyless.address).execute("llm_worker", {"task": "hi"}, timeout=30)
        assert response.is_error and "ANTHROPIC_API_KEY is not set" in response.output
    finally:
        keyless.stop()


def test_module_entry_point_rejects_a_bad_config_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "hands.builtin.llm", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "BRAINHANDS_MAX_DEPTH": "-1"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "BRAINHANDS_MAX_DEPTH" in result.stderr
    assert "Traceback" not in result.stderr

