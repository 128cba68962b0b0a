"""The orchestrator loop with a scripted model against a real hand service: fan-out, limits, failures, stop reasons."""

from __future__ import annotations

import pytest

from brain import ScriptedModel
from brain.events import SessionState


def tool_results(request):
    last = request["messages"][-1]
    assert last["role"] == "user"
    return [b for b in last["content"] if b["type"] == "tool_result"]


def texts(request):
    return [b["text"] for b in request["messages"][-1]["content"] if b["type"] == "text"]


async def events_of(store, session_id):
    return [e.type for e in await store.events(session_id)]


async def test_one_tool_call_then_an_answer(make_brain, recorder, store):
    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": "hello"}]]},
        {"text": "The hand said hello."},
    ])
    result = await make_brain(model).run("Say hello through a tool.")
    assert result.ok and not result.cut_short
    assert result.text == "The hand said hello."
    call_id = "toolu_s000_000"
    assert recorder.runs == {call_id: 1}
    assert recorder.metadata[call_id]["x-brainhands-session-id"] == result.session_id
    assert recorder.metadata[call_id]["x-brainhands-depth"] == "0"
    [res] = tool_results(model.requests[1])
    assert res == {"type": "tool_result", "tool_use_id": call_id, "content": "echo: hello", "is_error": False}
    assert await events_of(store, result.session_id) == [
        "session_started", "model_response", "tool_call_started", "tool_call_finished", "model_response", "session_finished",
    ]
    assert [t["name"] for t in model.requests[0]["tools"]] == ["broken", "echo", "gate", "hangs_once", "spender", "stuck"]
    assert "objective" in model.requests[0]["system"] and "output format" in model.requests[0]["system"]
    assert result.usage["tool_calls"] == 1 and result.usage["turns"] == 2


async def test_twelve_calls_in_one_turn_run_concurrently_and_come_back_in_one_message(make_brain, recorder):
    recorder.gate_at = 12
    model = ScriptedModel([
        {"tool_calls": [["gate", {"item": i}] for i in range(12)]},
        {"text": "All twelve are done."},
    ])
    result = await make_brain(model, max_parallel=16).run("Do twelve things.")
    assert result.text == "All twelve are done."
    assert recorder.peak == 12
    results = tool_results(model.requests[1])
    assert [r["content"] for r in results] == [f"item {i} done" for i in range(12)]
    assert [r["tool_use_id"] for r in results] == [f"toolu_s000_{i:03d}" for i in range(12)]


async def test_max_parallel_bounds_the_fan_out(make_brain, recorder):
    recorder.gate_at = 3
    model = ScriptedModel([{"tool_calls": [["gate", {"item": i}] for i in range(12)]}, {"text": "done"}])
    result = await make_brain(model, max_parallel=3).run("Twelve things, three at a time.")
    assert result.ok and len(recorder.runs) == 12
    assert recorder.peak == 3


async def test_two_hundred_calls_in_one_turn_are_held_to_max_tool_calls(make_brain, recorder, store):
    recorder.gate_at = 5
    model = ScriptedModel([
        {"tool_calls": [["gate", {"item": i}] for i in range(200)]},
        {"text": "Synthesis of the 30 results I got.", "tool_calls": [["gate", {"item": 999}]]},
    ])
    result = await make_brain(model, max_parallel=5, max_tool_calls=30).run("Do everything.")
    assert len(recorder.runs) == 30 and recorder.peak == 5
    assert result.ok and result.cut_short and result.reason == "max_tool_calls"
    assert result.text == "Synthesis of the 30 results I got."
    synthesis = model.requests[1]
    results = tool_results(synthesis)
    assert len(results) == 200
    assert sum(r["is_error"] for r in results) == 170
    assert "limit of 30 tool calls" in results[-1]["content"]
    assert synthesis["tool_choice"] == {"type": "none"}
    assert any("Do not call tools" in t for t in texts(synthesis))
    assert result.usage["tool_calls"] == 30
    assert "toolu_s001_001" not in recorder.runs, "the synthesis turn's tool call must not run"


async def test_a_model_that_never_stops_calling_tools_is_held_to_max_turns(make_brain, recorder):
    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": "again"}]], "repeat": True},
    ])
    result = await make_brain(model, max_turns=3).run("Loop forever.")
    assert result.cut_short and result.reason == "max_turns"
    assert len(model.requests) == 4  # three turns, then the synthesis
    assert len(recorder.runs) == 3
    assert model.requests[-1]["tool_choice"] == {"type": "none"}
    assert "no final answer" in result.text


async def test_hand_tokens_count_against_the_token_budget(make_brain, recorder):
    recorder.token_usage = 1000
    model = ScriptedModel([
        {"tool_calls": [["spender", {}] for _ in range(3)], "usage": {"input_tokens": 100, "output_tokens": 10}},
        {"text": "What I have.", "usage": {"input_tokens": 100, "output_tokens": 10}},
    ])
    # After the 3000 hand tokens, another working turn and a synthesis no longer fit in 5000: the limit comes early.
    result = await make_brain(model, token_budget=5000).run("Spend.")
    assert result.cut_short and result.reason == "token_budget"
    assert len(recorder.runs) == 3 and len(model.requests) == 2
    assert result.text == "What I have."
    assert result.usage["hand_usage"]["input_tokens"] == 3000
    assert result.usage["total_tokens"] == 3000 + 220


async def test_failing_hands_are_error_results_and_the_session_goes_on(make_brain):
    model = ScriptedModel([
        {"tool_calls": [["broken", {}], ["stuck", {}], ["no_such_hand", {}], ["over_quota", {}], ["no_replica", {}], ["echo", {"text": "ok"}]]},
        {"text": "Worked around the failures."},
    ])
    result = await make_brain(model, call_timeout=0.5).run("Try everything.")
    assert result.ok and result.text == "Worked around the failures."
    broken, stuck, missing, quota, unavailable, echo = tool_results(model.requests[1])
    assert broken["is_error"] and broken["content"] == "the disk is on fire"
    assert stuck["is_error"] and "did not finish within 0.5s" in stuck["content"] and "DEADLINE_EXCEEDED" in stuck["content"]
    assert missing["is_error"] and "no hand named no_such_hand" in missing["content"] and "NOT_FOUND" in missing["content"]
    assert quota["is_error"] and "RESOURCE_EXHAUSTED" in quota["content"] and "retry after 1.5s" in quota["content"]
    assert unavailable["is_error"] and "unavailable (UNAVAILABLE: no healthy replica); retry later" in unavailable["content"]
    assert not echo["is_error"]
    assert all("\n" not in r["content"] for r in (stuck, missing, quota, unavailable))


async def test_bad_credentials_end_the_session(make_brain, keyed_target, store):
    model = ScriptedModel([{"tool_calls": [["echo", {"text": "x"}]]}, {"text": "never reached"}])
    result = await make_brain(model, target=keyed_target, api_key="wrong-key").run("Try.")
    assert result.status == "failed" and "BRAINHANDS_API_KEY" in result.text
    assert (await store.get_session(result.session_id)).status == "failed"
    ok = await make_brain(ScriptedModel(model.steps), target=keyed_target, api_key="right-key").run("Try.")
    assert ok.ok and ok.text == "never reached"


async def test_max_tokens_continues_once_and_never_runs_a_cut_off_tool_call(make_brain, recorder):
    model = ScriptedModel([
        {"content": [{"type": "text", "text": "Part one, "}, {"type": "tool_use", "name": "echo", "input": {}}], "stop_reason": "max_tokens"},
        {"text": "part two.", "stop_reason": "end_turn"},
    ])
    result = await make_brain(model).run("Write a lot.")
    assert result.ok and not result.cut_short and result.text == "Part one, part two."
    assert recorder.runs == {}
    second = model.requests[1]
    assert [b["type"] for b in second["messages"][1]["content"]] == ["text"], "the cut-off tool_use is not sent back"
    assert "cut off" in texts(second)[0] and "not run" in texts(second)[0]


async def test_max_tokens_twice_in_a_row_finishes_cut_short(make_brain):
    model = ScriptedModel([{"text": "a", "stop_reason": "max_tokens"}, {"text": "b", "stop_reason": "max_tokens"}])
    result = await make_brain(model).run("Write even more.")
    assert result.cut_short and result.reason == "max_tokens" and result.text == "ab"


async def test_pause_turn_sends_the_content_back_and_continues(make_brain):
    paused = [{"type": "text", "text": "Searching... "}]
    model = ScriptedModel([{"content": paused, "stop_reason": "pause_turn"}, {"text": "found it."}])
    result = await make_brain(model).run("Search.")
    assert result.text == "Searching... found it."
    assert model.requests[1]["messages"][-1] == {"role": "assistant", "content": paused}


@pytest.mark.parametrize("stop_reason", ["end_turn", "stop_sequence"])
async def test_the_model_ending_its_turn_ends_the_session(make_brain, stop_reason):
    result = await make_brain(ScriptedModel([{"text": "42", "stop_reason": stop_reason}])).run("Answer.")
    assert result.ok and result.text == "42" and not result.cut_short


async def test_a_refusal_ends_the_session_saying_so(make_brain):
    result = await make_brain(ScriptedModel([{"text": "I can't help with that.", "stop_reason": "refusal"}])).run("Bad.")
    assert result.ok and result.reason == "refusal"
    assert result.text.startswith("The model refused") and "I can't help with that." in result.text


@pytest.mark.parametrize("overflow", [
    {"raise": "context_window_exceeded"},
    {"text": "", "stop_reason": "model_context_window_exceeded"},
])
async def test_an_overflowing_context_gets_one_synthesis_on_a_trimmed_conversation(make_brain, overflow):
    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": "x" * 5000}]]},
        overflow,
        {"text": "Synthesized from the digest."},
    ])
    # The digest request has one user message, so the scripted model reads it as step 0: answer by callable.
    steps = model.steps
    model.steps = [lambda req: steps[2] if len(req["messages"]) == 1 and "digest" in req["messages"][0]["content"][0]["text"] else steps[0], steps[1]]
    result = await make_brain(model).run("Big task.")
    assert result.cut_short and result.reason == "context_window" and result.text == "Synthesized from the digest."
    digest = model.requests[-1]["messages"][0]["content"][0]["text"]
    assert "Big task." in digest and "echo: " in digest and "more characters cut" not in digest
    assert model.requests[-1]["tool_choice"] == {"type": "none"}


async def test_a_context_that_overflows_even_trimmed_fails_cleanly(make_brain):
    model = ScriptedModel([{"raise": "context_window_exceeded", "repeat": True}])
    result = await make_brain(model).run("Huge.")
    assert result.status == "failed" and "context window" in result.text


async def test_the_log_alone_rebuilds_the_conversation(make_brain, store):
    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": "a"}], ["echo", {"text": "b"}]]},
        {"tool_calls": [["echo", {"text": "c"}]]},
        {"text": "done"},
    ])
    result = await make_brain(model).run("Rebuild me.")
    state = SessionState.from_events(result.session_id, await store.events(result.session_id))
    # The last request the model saw is exactly the conversation rebuilt from the log, minus the final answer.
    state.turns.pop()
    assert state.messages() == model.requests[-1]["messages"]


async def test_a_synthesis_that_overflows_the_context_is_retried_once_on_the_digest(make_brain, recorder):
    recorder.token_usage = 10_000
    steps = [
        {"tool_calls": [["spender", {}]]},
        {"raise": "context_window_exceeded"},
    ]

    def answer(request):
        if len(request["messages"]) == 1 and "digest" in request["messages"][0]["content"][0]["text"]:
            return {"text": "From the digest."}
        return steps[0]

    model = ScriptedModel([answer, steps[1]])
    result = await make_brain(model, token_budget=5000).run("Spend, then overflow.")
    assert result.ok and result.cut_short and result.text == "From the digest."
    assert len(model.requests) == 3 and len(recorder.runs) == 1
