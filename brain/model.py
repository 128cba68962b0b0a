"""The model the brain talks to: a small protocol, and AnthropicModel over the real anthropic SDK."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import anthropic
from anthropic.types import Message

from hands.config import DEFAULT_MODEL

EPHEMERAL = {"type": "ephemeral"}

Thinking = Literal["adaptive", "off"]
Effort = Literal["low", "medium", "high"]
#: Called with each piece of a turn's text as the model writes it (not logged: the log keeps whole messages).
OnText = Callable[[str], None]


class ContextWindowExceeded(Exception):
    """The request does not fit the model's context window."""


class ModelError(Exception):
    """The model could not answer (after the SDK's retries): one line that says why."""


@runtime_checkable
class Model(Protocol):
    """What the loop needs from a model: one Messages-API call returning an anthropic Message."""

    id: str

    async def create(
        self,
        *,
        system: str,
        tools: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tool_choice: dict[str, Any] | None = None,
        max_tokens: int | None = None,  # this turn's output cap, when the token budget bounds it below the model's own
        thinking: Thinking = "off",  # "adaptive": the model decides when and how much to think
        effort: Effort | None = None,  # None: the model's own default
        on_text: OnText | None = None,  # the turn's text as it arrives
    ) -> Message: ...


def with_cache_breakpoints(
    system: str, tools: list[dict[str, Any]], messages: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Copies of the request parts with cache_control breakpoints (4 at most, the API's limit).

    1. the last tool and 2. the system block: the stable prefix, byte-identical every turn;
    3. the last block of the newest message: the moving breakpoint that caches the conversation;
    4. the last block of the user message before it: where the previous request's breakpoint was,
       so this request reads what that one wrote even when a turn adds more than 20 blocks.
    """
    system_blocks = [{"type": "text", "text": system, "cache_control": EPHEMERAL}]
    tools = [dict(t) for t in tools]
    if tools:
        tools[-1]["cache_control"] = EPHEMERAL
    messages = list(messages)
    user_indexes = [i for i, m in enumerate(messages) if m["role"] == "user"]
    marks = {len(messages) - 1}
    if len(user_indexes) >= 2:
        marks.add(user_indexes[-2] if user_indexes[-1] == len(messages) - 1 else user_indexes[-1])
    for i in marks:
        message = messages[i]
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        content = [*content[:-1], {**copy.deepcopy(content[-1]), "cache_control": EPHEMERAL}]
        messages[i] = {**message, "content": content}
    return system_blocks, tools, messages


class AnthropicModel:
    """Claude through anthropic.AsyncAnthropic: key and base URL from the environment, SDK retries."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        max_tokens: int = 8192,
        client: anthropic.AsyncAnthropic | None = None,
        max_retries: int = 4,
        timeout: float = 600.0,
    ):
        self.id = model
        self.max_tokens = max_tokens
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself, and retries 408/409/429/5xx
        # (overloaded included) with backoff that honours retry-after.
        self._client = client or anthropic.AsyncAnthropic(max_retries=max_retries, timeout=timeout)
        if client is None and not _has_credentials(self._client):
            # Said now, before a session exists, rather than as the SDK's TypeError on the first turn.
            raise ModelError("ANTHROPIC_API_KEY is not set: export it (or ANTHROPIC_AUTH_TOKEN) before starting the brain")

    async def create(
        self,
        *,
        system: str,
        tools: list[dict[str, Any]],
        messages: list[dict[str, Any]],
        tool_choice: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        thinking: Thinking = "off",
        effort: Effort | None = None,
        on_text: OnText | None = None,
    ) -> Message:
        system_blocks, tools, messages = with_cache_breakpoints(system, tools, messages)
        kwargs: dict[str, Any] = {
            "model": self.id,
            "max_tokens": self.max_tokens if max_tokens is None else max(1, min(self.max_tokens, max_tokens)),
            "system": system_blocks,
            "messages": messages,
        }
        if tools:
            kwargs["tools"] = tools
            if tool_choice:
                kwargs["tool_choice"] = tool_choice
        if thinking == "adaptive":
            kwargs["thinking"] = {"type": "adaptive"}
        if effort is not None:
            kwargs["output_config"] = {"effort": effort}
        try:
            # Streamed, as the SDK advises for long requests (it refuses a plain call whose max_tokens implies
            # more than ten minutes); the final message is the same Message a plain call returns.
            async with self._client.messages.stream(**kwargs) as stream:
                if on_text is not None:
                    async for text in stream.text_stream:
                        on_text(text)
                return await stream.get_final_message()
        except anthropic.BadRequestError as exc:
            if _is_context_overflow(exc):
                raise ContextWindowExceeded(_message(exc)) from exc
            raise ModelError(f"the model API rejected the request: {_message(exc)}") from exc
        except anthropic.AuthenticationError as exc:
            raise ModelError(f"the model API refused the key ({_message(exc)}); set ANTHROPIC_API_KEY") from exc
        except anthropic.APIStatusError as exc:
            raise ModelError(f"the model API answered {exc.status_code}: {_message(exc)}") from exc
        except anthropic.APIConnectionError as exc:
            raise ModelError(f"cannot reach the model API ({exc}); check ANTHROPIC_BASE_URL and the network") from exc

    async def close(self) -> None:
        await self._client.close()


def _has_credentials(client: anthropic.AsyncAnthropic) -> bool:
    return any(getattr(client, name, None) is not None for name in ("api_key", "auth_token", "credentials", "_token_cache"))


def _message(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else body
    return str((error or {}).get("message") or exc.message).splitlines()[0][:300]


def _is_context_overflow(exc: anthropic.BadRequestError) -> bool:
    text = _message(exc).lower()
    return "prompt is too long" in text or "context window" in text or "context_window" in text
