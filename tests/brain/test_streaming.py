"""The model client streams: a turn's text shows in the live view while the model is still writing it."""

from __future__ import annotations

import asyncio
import io
import threading

import pytest
from rich.console import Console

from brain import AnthropicModel, Brain, BrainConfig
from brain.live import LiveView
from brainhands.scripted_api import text_reply, tool_reply


@pytest.fixture
def model(messages_api, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", messages_api.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    return AnthropicModel("claude-sonnet-5-5", max_tokens=1024)


def shown(view: LiveView) -> str:
    out = Console(file=io.StringIO(), width=160, height=40, force_terminal=False, color_system=None)
    out.print(view.renderable())
    return out.file.getvalue()


async def poll(predicate, bound: float = 10.0):
    deadline = asyncio.get_running_loop().time() + bound
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


async def test_text_shows_in_the_live_view_before_the_turn_ends(model, messages_api, hands_target, store):
    answer = "The repository has three modules, each with its own tests and a short README of its own."
    messages_api.script(tool_reply([("echo", {"text": "hi"})]), text_reply(answer))
    messages_api.hold_stream = threading.Event()  # holds the first answer with text: the second turn
    view = LiveView(Console(file=io.StringIO(), width=160), live=False)
    brain = Brain(target=hands_target, model=model, store=store, config=BrainConfig(call_timeout=10.0),
                  on_event=view.on_event, on_text=view.on_text)
    try:
        run = asyncio.ensure_future(brain.run("Describe the repository."))
        await poll(lambda: view.streamed)
        mid_turn = shown(view)
        assert not run.done()
        assert answer[:12] in mid_turn and "writing" in mid_turn
        assert answer not in mid_turn  # only what has arrived so far
        assert len(view.view.turns) == 1  # the turn is not in the log yet
        messages_api.hold_stream.set()
        result = await asyncio.wait_for(run, 20)
    finally:
        messages_api.hold_stream.set()
        if not run.done():
            run.cancel()
        await asyncio.gather(run, return_exceptions=True)
        await brain.close()
    assert result.ok and result.text == answer
    assert view.streamed == ""  # the logged turn replaces the streamed text
    [_, last] = [e for e in await store.events(result.session_id) if e.type == "model_response"]
    assert last.data["content"] == [{"type": "text", "text": answer}]  # the log keeps the whole message
    assert all(body["stream"] is True for body in messages_api.bodies)


async def test_thinking_and_effort_reach_the_api_as_the_sdk_documents(model, messages_api, make_brain):
    messages_api.script(text_reply("done"), text_reply("done"))
    assert (await make_brain(model, thinking="adaptive", effort="low").run("Think.")).ok
    assert (await make_brain(model).run("Do not think.")).ok
    thought, plain = messages_api.bodies
    assert thought["thinking"] == {"type": "adaptive"} and thought["output_config"] == {"effort": "low"}
    assert "thinking" not in plain and "output_config" not in plain


def test_a_bad_thinking_or_effort_is_one_line():
    with pytest.raises(ValueError, match="brain config: effort: input should be .low., .medium. or .high."):
        BrainConfig(effort="extreme")
