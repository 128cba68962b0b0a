"""The brain's spans: one per session, one per model turn (GenAI semantic conventions), one per tool call.

Each is a no-op while tracing is off (hands.tracing.enabled() is False): the loop pays one boolean test.
A session's span continues the current trace (a worker agent's session nests under the hand call that runs
it); a woken session starts a new trace with a link to the one its session_started event recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

from hands import tracing

#: The key of session_started's payload that holds {trace_id, span_id} of the session's first trace.
TRACE_KEY = "trace"
PROVIDER = "anthropic"

_OFF = contextlib.nullcontext(None)


def session_span(session_id: str, *, depth: int, woken_from: dict[str, str] | None, parent_id: str | None = None):
    """The session's root span (or, in a worker agent, its span under the calling hand's)."""
    if not tracing.enabled():
        return _OFF
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "brainhands" if depth == 0 else "agent",
        "gen_ai.conversation.id": session_id,
        "brainhands.session_id": session_id,
        "brainhands.depth": depth,
        "brainhands.woken": woken_from is not None,
    }
    if parent_id:
        attributes["brainhands.parent_session_id"] = parent_id
    links: Sequence[dict[str, str]] = [woken_from] if woken_from else ()
    # A woken session is a new run of an old session: a trace of its own, linked to the earlier one, unless
    # it runs inside a traced call (a BrainService Wake RPC), whose trace it then joins.
    return tracing.start_span(f"invoke_agent {attributes['gen_ai.agent.name']}", attributes=attributes, links=links)


def with_trace(first):
    """session_started (an events.SessionStarted) with the current session span's ids, so a later wake can link to it."""
    ids = tracing.ids() if first is not None else None
    return first if ids is None else dataclasses.replace(first, trace=ids)


def earlier_trace(events) -> dict[str, str] | None:
    """{trace_id, span_id} that a session's session_started recorded, if it was traced."""
    for event in events[:1]:
        ids = event.data.get(TRACE_KEY) if event.type == "session_started" else None
        if isinstance(ids, dict) and ids.get("trace_id") and ids.get("span_id"):
            return ids
    return None


def turn_span(model: str, turn: int, max_tokens: int):
    """A model turn: the GenAI `chat {model}` CLIENT span."""
    if not tracing.enabled():
        return _OFF
    return tracing.start_span(
        f"chat {model}" if model else "chat",
        kind="client",
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.system": PROVIDER,  # the name before semantic conventions 1.37; many backends still read it
            "gen_ai.request.model": model,
            "gen_ai.request.max_tokens": max_tokens,
            "brainhands.turn": turn,
        },
    )


def record_response(span, message) -> None:
    """What the model answered: its id and model, the stop reason and the tokens, cache tokens included."""
    if span is None:
        return
    usage = {k: getattr(message.usage, k, None) or 0 for k in (
        "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")}  # fmt: skip
    span.set_attributes({
        "gen_ai.response.id": message.id or "",
        "gen_ai.response.model": message.model or "",
        "gen_ai.response.finish_reasons": [message.stop_reason or ""],
        "gen_ai.usage.input_tokens": usage.get("input_tokens", 0),
        "gen_ai.usage.output_tokens": usage.get("output_tokens", 0),
        "gen_ai.usage.cache_read.input_tokens": usage.get("cache_read_input_tokens", 0),
        "gen_ai.usage.cache_creation.input_tokens": usage.get("cache_creation_input_tokens", 0),
    })  # fmt: skip


def record_failure(span, error: BaseException) -> None:
    if span is not None:
        tracing.mark_error(span, str(error), type(error).__name__)


def tool_span(name: str, call_id: str, attempt: int, target: str, parent=None):
    """A tool call: the brain's CLIENT span around Execute (traceparent goes out from it)."""
    if not tracing.enabled():
        return _OFF
    return tracing.start_span(
        f"execute_tool {name}",
        kind="client",
        parent=parent,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.call.id": call_id,
            "brainhands.hand": name,
            "brainhands.call_attempt": attempt,
            "rpc.system": "grpc",
            "rpc.service": "hands.v1.HandService",
            "rpc.method": "Execute",
            "server.address": target,
        },
    )


def record_outcome(span, outcome) -> None:
    """A finished tool call: its status, whether the hand reported an error, the tokens it reported."""
    if span is None:
        return
    span.set_attributes({
        "brainhands.status": outcome.status,
        "brainhands.is_error": outcome.is_error,
        "gen_ai.usage.input_tokens": int(getattr(outcome.usage, "input_tokens", 0) or 0),
        "gen_ai.usage.output_tokens": int(getattr(outcome.usage, "output_tokens", 0) or 0),
    })  # fmt: skip
    if outcome.status != "OK":
        tracing.mark_error(span, outcome.output, outcome.status)
    elif outcome.is_error:
        span.set_attribute("error.type", "tool_error")
