"""ScriptedModel: the Model interface answering from a script (a list or a JSON file), for tests and the offline demo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anthropic.types import Message

from brain.model import ContextWindowExceeded, ModelError

Step = dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]


class ScriptedModel:
    """Answers the Nth request of a conversation with step N of its script.

    N counts the assistant messages already in the request, not the calls made, so a session
    woken in a new process gets the step it would have got. A step is a dict (a Message, or a
    shorthand: {"text": ...}, {"tool_calls": [[name, input], ...]}, {"raise": "context_window_exceeded"})
    or a callable(request) -> dict. A step with "repeat": true answers every later request too.
    Every request is kept in .requests (system, tools, messages, tool_choice).
    """

    def __init__(self, steps: list[Step], *, id: str = "scripted", delay: float = 0.0):
        self.id = id
        self.steps = list(steps)
        self.delay = delay  # seconds per answer, to stand in for a model's latency in demos
        self.requests: list[dict[str, Any]] = []

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read model script {path}: {exc}") from None
        steps = data.get("steps") if isinstance(data, dict) else data
        if not isinstance(steps, list):
            raise ValueError(f"model script {path}: expected a JSON list of steps or {{\"steps\": [...]}}")
        delay = float(data.get("delay", 0.0)) if isinstance(data, dict) else 0.0
        return cls(steps, id=f"scripted:{path}", delay=delay)

    async def create(
        self,
        *,
        system: str,
        tools: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tool_choice: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        thinking: str = "off",
        effort: str | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Message:
        request = {"system": system, "tools": tools, "messages": messages, "tool_choice": tool_choice, "max_tokens": max_tokens,
                   "thinking": thinking, "effort": effort}
        self.requests.append(request)
        index = sum(1 for m in messages if m["role"] == "assistant")
        step = self._step(index)
        if callable(step):
            step = step(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if step.get("raise") == "context_window_exceeded":
            raise ContextWindowExceeded("prompt is too long (scripted)")
        if "raise" in step:
            raise ModelError(str(step["raise"]))
        message = to_message(step, index, request)
        if on_text is not None:
            for block in message.content:
                if block.type == "text" and block.text:
                    on_text(block.text)
        return message

    def _step(self, index: int) -> Step:
        if index < len(self.steps):
            return self.steps[index]
        for step in reversed(self.steps):
            if isinstance(step, dict) and step.get("repeat"):
                return step
        raise ModelError(f"the model script has {len(self.steps)} steps and request {index + 1} needs another")

    async def close(self) -> None:
        return None


def to_message(step: dict[str, Any], index: int, request: dict[str, Any]) -> Message:
    """A full anthropic Message from a step, filling what a script may leave out."""
    body = {k: v for k, v in step.items() if k != "repeat"}
    if "content" not in body:
        content: list[dict[str, Any]] = []
        if body.get("text"):
            content.append({"type": "text", "text": body["text"]})
        for name, tool_input in body.get("tool_calls", []):
            content.append({"type": "tool_use", "name": name, "input": tool_input})
        body = {
            "content": content,
            "stop_reason": body.get("stop_reason") or ("tool_use" if body.get("tool_calls") else "end_turn"),
            **({"usage": body["usage"]} if "usage" in body else {}),
        }
    content = []
    for i, block in enumerate(body["content"]):
        block = dict(block)
        if block.get("type") == "tool_use" and not block.get("id"):
            # Distinct per step and position, and the same in every process that replays the script.
            block["id"] = f"toolu_s{index:03d}_{i:03d}"
        content.append(block)
    # A plausible input size, so token budgets bite on scripted runs too.
    approx_input = len(json.dumps(request["messages"])) // 4 + len(request["system"]) // 4
    message = {
        "id": f"msg_scripted_{index:03d}",
        "type": "message",
        "role": "assistant",
        "model": "scripted",
        "stop_sequence": None,
        **body,
        "content": content,
        "usage": {"input_tokens": approx_input, "output_tokens": 20, **body.get("usage", {})},
    }
    message.setdefault("stop_reason", "end_turn")
    if request.get("max_tokens") is not None:  # as with a real model, the output never passes the request's cap
        message["usage"]["output_tokens"] = min(message["usage"]["output_tokens"], request["max_tokens"])
    return Message.model_validate(message)
