"""The token budget ahead of time: what the next prompt will cost, and how much output a turn may have so that a synthesis still fits."""

from __future__ import annotations

import json

from brain.events import SessionState, Turn

#: Output tokens kept for the final synthesis until the end: the limit triggers while this much still fits.
SYNTHESIS_RESERVE = 1024
#: The synthesis always gets at least this much output, even when a hand spent past its share.
SYNTHESIS_FLOOR = 256
#: A working turn with less output room than this is not worth asking for: the synthesis comes instead.
TURN_FLOOR = 512
#: Characters per token when estimating text not yet seen by the model. English prose runs near 4 and
#: JSON and code near 3, so 3 over-estimates most text; it is an estimate, not a bound (CJK text runs lower).
CHARS_PER_TOKEN = 3
#: Tokens for the request's framing around the estimated text (roles, block headers).
PROMPT_MARGIN = 64


def approx_tokens(value: object) -> int:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return -(-len(text) // CHARS_PER_TOKEN)


def next_prompt(state: SessionState) -> int:
    """Input tokens the next request will take: the last request's prompt and answer exactly (the API counted
    them), plus an estimate of what was added after them (tool results, notes); all estimated before any turn."""
    messages = state.messages()
    last = state.last_turn
    trimmed = bool(state.limit is not None and state.limit.trimmed)
    if last is None or trimmed:
        return approx_tokens(state.system) + approx_tokens(state.tools) + approx_tokens(messages) + PROMPT_MARGIN
    seen = last.usage.total  # its input (cached or not) and its output, now part of the prompt
    answered = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return seen + approx_tokens(messages[answered + 1 :]) + PROMPT_MARGIN


def prompt_after(turn: Turn) -> int:
    """next_prompt while some of the turn's calls are still running: the turn and the results in so far."""
    results = [c.result_block() for c in turn.calls if c.finished is not None]
    return turn.usage.total + approx_tokens(results) + PROMPT_MARGIN


def turn_room(budget: int, used: int, prompt: int) -> int:
    """The output a working turn may have so that it, a synthesis after it and the synthesis' reserve fit:
    the turn's output is paid twice (as output, then as prompt of the synthesis), its prompt likewise."""
    return (budget - used - 2 * prompt - SYNTHESIS_RESERVE) // 2


def calls_room(budget: int, used: int, prompt: int) -> int:
    """Tokens the calls of a turn may spend between them, leaving the synthesis its prompt and reserve."""
    return budget - used - prompt - SYNTHESIS_RESERVE


def synthesis_room(budget: int, used: int, prompt: int) -> int:
    """The synthesis' output: whatever is left once its prompt is paid."""
    return budget - used - prompt
