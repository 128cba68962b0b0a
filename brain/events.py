"""Session event types, and the fold that rebuilds a session's state and conversation from its events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from brain import prompts
from brain.sessions import TERMINAL_STATUS, Event

SESSION_STARTED = "session_started"
MODEL_RESPONSE = "model_response"
TOOL_CALL_STARTED = "tool_call_started"
TOOL_CALL_FINISHED = "tool_call_finished"
LIMIT_REACHED = "limit_reached"
SESSION_FINISHED = "session_finished"
SESSION_FAILED = "session_failed"
SESSION_CANCELLED = "session_cancelled"

#: status of a call the brain decided not to run (over a limit); it has a finished event and no started one.
NOT_RUN = "NOT_RUN"

USAGE_KEYS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


@dataclass
class Call:
    """One tool_use block of a response and what became of it."""

    call_id: str
    name: str
    input: Any
    starts: int = 0  # how many times a dispatch began (more than one after a wake re-issued it)
    finished: dict[str, Any] | None = None  # the tool_call_finished data

    @property
    def ran(self) -> bool:
        return self.starts > 0 or (self.finished is not None and self.finished.get("status") != NOT_RUN)

    def result_block(self) -> dict[str, Any]:
        assert self.finished is not None, "a tool_result needs a finished call"
        return {
            "type": "tool_result",
            "tool_use_id": self.call_id,
            "content": self.finished.get("output") or "(empty output)",
            "is_error": bool(self.finished.get("is_error")),
        }


@dataclass
class Turn:
    """One model response: its content as the API returned it, and the tool calls it asked for."""

    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: dict[str, int]
    calls: list[Call]
    synthesis: bool  # the answer to a request for a final synthesis (after a limit)

    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    def truncated(self) -> bool:
        return self.stop_reason in ("max_tokens", "model_context_window_exceeded")

    def sent_content(self) -> list[dict[str, Any]]:
        """The assistant message to send back: a cut-off tool_use is dropped (it was never run)."""
        blocks = [b for b in self.content if not (b.get("type") == "text" and not b.get("text"))]
        if self.truncated() or self.synthesis:
            blocks = [b for b in blocks if b.get("type") != "tool_use"]
        return blocks or [{"type": "text", "text": "(no output)"}]


@dataclass
class SessionState:
    """Everything the loop knows about a session: a fold over its events, nothing else."""

    session_id: str
    seq: int = 0
    task: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    system: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    turns: list[Turn] = field(default_factory=list)
    limit: dict[str, Any] | None = None  # the last limit_reached data: the next turn is a synthesis
    limit_after_turn: int = 0  # how many turns there were when the limit was reached
    status: str = "running"
    outcome: dict[str, Any] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)

    @classmethod
    def from_events(cls, session_id: str, events: list[Event]) -> SessionState:
        state = cls(session_id)
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: Event) -> None:
        self.seq = event.seq
        d = event.data
        if event.type == SESSION_STARTED:
            self.task, self.config, self.system = d["task"], d.get("config", {}), d["system"]
            self.tools, self.model = d.get("tools", []), d.get("model", "")
        elif event.type == MODEL_RESPONSE:
            synthesis = self.limit is not None
            calls = []
            if d.get("stop_reason") == "tool_use" and not synthesis:
                calls = [Call(b["id"], b["name"], b.get("input", {})) for b in d["content"] if b.get("type") == "tool_use"]
            for call in calls:
                self.calls[call.call_id] = call
            usage = {k: int(d.get("usage", {}).get(k) or 0) for k in USAGE_KEYS}
            self.turns.append(Turn(d["content"], d.get("stop_reason"), usage, calls, synthesis))
        elif event.type == TOOL_CALL_STARTED:
            self.calls[d["call_id"]].starts += 1
        elif event.type == TOOL_CALL_FINISHED:
            self.calls[d["call_id"]].finished = d
        elif event.type == LIMIT_REACHED:
            self.limit = d
            self.limit_after_turn = len(self.turns)
        elif event.type in TERMINAL_STATUS:
            self.status = TERMINAL_STATUS[event.type]
            self.outcome = d

    # --- derived views --------------------------------------------------------------------------

    @property
    def last_turn(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def model_turns(self) -> int:
        return sum(1 for t in self.turns if not t.synthesis)

    def calls_run(self, turns: list[Turn] | None = None) -> int:
        """Tool calls run, counting those a worker agent made for this session (reported in its usage)."""
        return sum(
            1 + int(((c.finished or {}).get("usage") or {}).get("tool_calls") or 0)
            for t in (self.turns if turns is None else turns)
            for c in t.calls
            if c.ran
        )

    def brain_usage(self, turns: list[Turn] | None = None) -> dict[str, int]:
        return {k: sum(t.usage[k] for t in (self.turns if turns is None else turns)) for k in USAGE_KEYS}

    def hand_usage(self, turns: list[Turn] | None = None) -> dict[str, int]:
        """Tokens the hands reported; nested_tokens: what a worker agent's own workers spent below it."""
        out = {"input_tokens": 0, "output_tokens": 0, "nested_tokens": 0}
        for t in self.turns if turns is None else turns:
            for c in t.calls:
                usage = (c.finished or {}).get("usage") or {}
                for key in out:
                    out[key] += int(usage.get(key) or 0)
        return out

    def tokens_used(self, turns: list[Turn] | None = None) -> int:
        """The budgeted total: every token the model processed plus what the hands reported."""
        return sum(self.brain_usage(turns).values()) + sum(self.hand_usage(turns).values())

    def totals(self) -> dict[str, Any]:
        return {
            "turns": len(self.turns),
            "tool_calls": self.calls_run(),
            "model_usage": self.brain_usage(),
            "hand_usage": self.hand_usage(),
            "total_tokens": self.tokens_used(),
        }

    def final_text(self) -> str:
        """The last response's text, joined to the responses it continued (after max_tokens or pause_turn)."""
        parts: list[str] = []
        for i in range(len(self.turns) - 1, -1, -1):
            parts.append(self.turns[i].text())
            if i == 0 or self.turns[i - 1].stop_reason not in ("max_tokens", "pause_turn") or self.turns[i - 1].calls:
                break
        return "".join(reversed(parts)).strip()

    # --- the conversation -----------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The Messages-API conversation for the next request, rebuilt from the log alone."""
        if self.limit and self.limit.get("trimmed"):
            return [self._digest(int(self.limit.get("digest_chars", 60_000)))]
        follow_ups: dict[int, list[dict[str, Any]]] = {}  # turn index -> user blocks after it (-1: the task)
        for i, turn in enumerate(self.turns):
            blocks = [c.result_block() for c in turn.calls]
            if turn.stop_reason == "max_tokens":
                dropped = any(b.get("type") == "tool_use" for b in turn.content)
                blocks.append(_text(prompts.CONTINUE_AFTER_MAX_TOKENS.format(dropped=prompts.DROPPED_TOOL_CALL if dropped else "")))
            follow_ups[i] = blocks
        if self.limit:
            what = prompts.LIMIT_NAMES.get(self.limit.get("reason", ""), "limit")
            follow_ups.setdefault(self.limit_after_turn - 1, []).append(_text(prompts.SYNTHESIZE_AT_LIMIT.format(what=what)))
        messages = [{"role": "user", "content": [_text(self.task), *follow_ups.get(-1, [])]}]
        for i, turn in enumerate(self.turns):
            messages.append({"role": "assistant", "content": turn.sent_content()})
            if follow_ups.get(i):
                messages.append({"role": "user", "content": follow_ups[i]})
        return messages

    def _digest(self, max_chars: int) -> dict[str, Any]:
        """One user message standing in for a conversation too long for the context window."""
        per_call = max(200, max_chars // max(1, len(self.calls)))
        lines = [prompts.DIGEST_INTRO, "", "Task:", self.task, "", "Tool results:"]
        used, omitted = 0, 0
        for call in self.calls.values():
            if not call.finished or call.finished.get("status") == NOT_RUN:
                continue
            output = call.finished.get("output") or ""
            if len(output) > per_call:
                output = output[:per_call] + f" [... {len(output) - per_call} more characters cut]"
            entry = f"- {call.name}({json.dumps(call.input)[:300]}){' [error]' if call.finished.get('is_error') else ''}: {output}"
            if used + len(entry) > max_chars:
                omitted += 1
                continue
            used += len(entry)
            lines.append(entry)
        if omitted:
            lines.append(f"({omitted} more results did not fit and are left out)")
        lines += ["", prompts.SYNTHESIZE_AT_LIMIT.format(what=prompts.LIMIT_NAMES["context_window"])]
        return {"role": "user", "content": [_text("\n".join(lines))]}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
