"""The llm_worker hand: a worker Claude that does one delegated task, optionally with a few tools through the gateway."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

import anthropic
import grpc
import structlog
from pydantic import Field

from hands import Context, Hand, HandClient, HandResult, Usage, hand
from hands import metadata as md
from hands.config import DEFAULT_MODEL, ConfigModel, Duration, Text, whole

log = structlog.get_logger("hands.llm")

SYSTEM_PROMPT = """\
You are a worker agent. An orchestrator has delegated exactly one task to you; \
other workers handle the rest of the job, so do this task and nothing else.

- Stay in bounds: do not widen the task, do not start related work you were not asked for, \
and use only the tools you were given, only as far as the task needs them.
- Treat the context you are given as the facts to work from; do not invent facts, files, \
numbers or results that you did not see.
- Answer in the requested output format, with no preamble and no sign-off. \
If no format is requested, answer as briefly as the task allows.
- If you cannot do all or part of the task (information missing, a tool failed, the task \
is ambiguous or outside what you may do), say plainly what could not be done and why, \
instead of guessing.
"""

INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {
            "type": "string",
            "minLength": 1,
            "description": "The one objective for the worker, stated completely: what to do and where to stop.",
        },
        "context": {
            "type": "string",
            "description": "Facts the worker needs (excerpts, earlier results, constraints); it sees nothing else.",
        },
        "output_format": {
            "type": "string",
            "description": "The shape of the answer, e.g. 'a JSON list of file paths' or 'three bullet points'.",
        },
        "tools": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "Names of hands the worker may call (e.g. fs_read, fs_grep); none if omitted.",
        },
    },
    "required": ["task"],
    "additionalProperties": False,
}

DESCRIPTION = (
    "Delegate one well-defined subtask to a worker LLM and get its answer as text. "
    "Give it a complete objective (task), the facts it needs (context, since it sees nothing else), "
    "the shape of the answer (output_format) and, if it must look things up or act, the names of "
    "the hands it may use (tools). Use it for subtasks that need reading and judgement, "
    "run several in parallel for independent parts of a broad job."
)


#: What every worker hand (llm_worker, agent) reads from the same variables: its model endpoint, gateway and depth.
WORKER_ENV_VARS = {
    "api_key": "ANTHROPIC_API_KEY",
    "base_url": "ANTHROPIC_BASE_URL",
    "gateway": "BRAINHANDS_GATEWAY",
    "gateway_api_key": "BRAINHANDS_API_KEY",
    "max_depth": "BRAINHANDS_MAX_DEPTH",
}


class LLMWorkerConfig(ConfigModel):
    """Everything the llm hand needs, read once at start-up; requests never choose the key, model or gateway."""

    config_name = "llm config"
    env_vars = {
        **WORKER_ENV_VARS,
        "model": "BRAINHANDS_WORKER_MODEL",
        "max_turns": "BRAINHANDS_WORKER_MAX_TURNS",
        "max_tokens": "BRAINHANDS_WORKER_MAX_TOKENS",
    }

    api_key: str | None = Field(None, repr=False)
    base_url: str | None = None  # None: the SDK's default endpoint
    model: Text = DEFAULT_MODEL
    gateway: str | None = None  # where the worker's tools are called; None: no tools
    # Not used for calls: a worker calls as its caller (the delegation of the call it serves), never as itself.
    gateway_api_key: str | None = Field(None, repr=False)
    max_depth: whole(0) = 3  # deepest nesting of workers allowed; the brain's direct calls are depth 0
    max_turns: whole(1) = 8  # model calls per task, tool loop included
    max_tokens: whole(1) = 8192  # per model call
    max_retries: whole(0) = 2  # the SDK's retries on 429, 5xx, overloaded and connection errors
    tool_timeout: Duration = 120.0  # seconds one tool call may take, within the caller's deadline


def user_message(task: str, context: str, output_format: str) -> str:
    """The worker's first message: the task and what goes with it, in tags the model can tell apart."""
    parts = [f"<task>\n{task.strip()}\n</task>"]
    if context.strip():
        parts.append(f"<context>\n{context.strip()}\n</context>")
    if output_format.strip():
        parts.append(f"<output_format>\n{output_format.strip()}\n</output_format>")
    return "\n\n".join(parts)


def worker_session(ctx: Context) -> str:
    """The session a worker's tool calls belong to: its caller's, or with worker workspaces one of its own.

    With x-brainhands-worker-workspaces: branch, each worker (each llm_worker call) gets a session named after its
    caller's session and its call id, so its first fs or sandbox call branches a workspace of its own from the
    caller's (CallerClient sends the parent) and parallel workers never edit one tree. The same call retried gets
    the same session, so a retry continues the worker's branch instead of starting another.
    """
    if ctx.metadata.get(md.WORKER_WORKSPACES) != "branch" or not ctx.session_id or not ctx.call_id:
        return ctx.session_id
    return f"{ctx.session_id[:60]}.w-{re.sub(r'[^A-Za-z0-9_-]', '-', ctx.call_id)[:60]}"


class _Tally:
    """Tokens spent on one task: every model turn, plus what the hands it called reported."""

    def __init__(self) -> None:
        self.input_tokens = 0
        self.output_tokens = 0
        self.workspace = ""  # the worker's own session, once a tool call has used it (worker workspaces)

    def add_model(self, usage: Any) -> None:
        # Cache reads and writes are input the API processed too; the budget counts them.
        self.input_tokens += (
            (usage.input_tokens or 0)
            + (getattr(usage, "cache_read_input_tokens", None) or 0)
            + (getattr(usage, "cache_creation_input_tokens", None) or 0)
        )
        self.output_tokens += usage.output_tokens or 0

    def add_hand(self, usage: Any) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens

    def result(self, output: str, is_error: bool = False) -> HandResult:
        if self.workspace:  # the orchestrator merges the worker's branch by this id (workspace_merge)
            output += (f"\n\n[this worker worked in its own workspace, session {self.workspace}, branched from yours: "
                       "workspace_merge brings its change into yours]")
        return HandResult(output, is_error=is_error, usage=Usage(self.input_tokens, self.output_tokens))


def _api_error_message(exc: anthropic.APIError, config: LLMWorkerConfig) -> str:
    """One line the calling model can act on, for a failure of the Anthropic API."""
    if isinstance(exc, anthropic.AuthenticationError):
        return "the llm hand's ANTHROPIC_API_KEY was refused by the Anthropic API (missing or wrong key); fix the key in the llm hand's environment"
    if isinstance(exc, anthropic.PermissionDeniedError):
        return f"the llm hand's API key may not use this model or endpoint ({config.model}): {_detail(exc)}"
    if isinstance(exc, anthropic.RateLimitError):
        return f"the Anthropic API rate-limited the worker and {config.max_retries} retries did not get through; try again later or with fewer parallel workers"
    if isinstance(exc, anthropic.APIStatusError) and exc.status_code == 529:
        return f"the Anthropic API is overloaded and {config.max_retries} retries did not get through; try again later"
    if isinstance(exc, anthropic.APITimeoutError):
        return "the Anthropic API did not answer in time"
    if isinstance(exc, anthropic.APIConnectionError):
        return f"the llm hand cannot reach the Anthropic API at {config.base_url or 'the default endpoint'}: {exc}"
    if isinstance(exc, anthropic.APIStatusError):
        return f"the Anthropic API answered {exc.status_code}: {_detail(exc)}"
    return f"the Anthropic API call failed: {exc}"


def _detail(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(exc.message)


def _text_of(content: Sequence[Any]) -> str:
    return "\n".join(block.text for block in content if getattr(block, "type", None) == "text").strip()


class LLMWorker:
    """The state the llm_worker hand keeps across calls: one API client and one gateway channel, made on first use."""

    def __init__(self, config: LLMWorkerConfig):
        self.config = config
        self._client: anthropic.AsyncAnthropic | None = None

    def client(self) -> anthropic.AsyncAnthropic:
        # Made on first use, inside the serving loop, so its connection pool belongs to that loop.
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(
                api_key=self.config.api_key,
                base_url=self.config.base_url,
                max_retries=self.config.max_retries,
            )
        return self._client

    def gateway(self, ctx: Context) -> HandClient:
        """The gateway as the caller of ctx's call: its delegation, never this worker's own key."""
        return ctx.client(self.config.gateway)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def run(
        self, task: str, context: str, output_format: str, tools: Sequence[str], ctx: Context
    ) -> HandResult:
        config = self.config
        tally = _Tally()
        if ctx.depth > config.max_depth:
            return tally.result(
                f"refused: this worker would run at depth {ctx.depth}, past the maximum of {config.max_depth} "
                "nested workers; do this part without another worker",
                is_error=True,
            )
        if not config.api_key:
            return tally.result("ANTHROPIC_API_KEY is not set for the llm hand", is_error=True)
        tool_params: list[dict[str, Any]] = []
        if tools:
            found = await self._tool_params(tools, ctx)
            if isinstance(found, str):
                return tally.result(found, is_error=True)
            tool_params = found

        messages: list[dict[str, Any]] = [{"role": "user", "content": user_message(task, context, output_format)}]
        request: dict[str, Any] = {"model": config.model, "max_tokens": config.max_tokens, "system": SYSTEM_PROMPT}
        if tool_params:
            request["tools"] = tool_params
        for turn in range(1, config.max_turns + 1):
            try:
                remaining = ctx.time_remaining()
                response = await self.client().messages.create(
                    **request, messages=messages, **({"timeout": remaining} if remaining is not None else {})
                )
            except anthropic.APIError as exc:
                ctx.logger.warning("worker model call failed", error=type(exc).__name__, turn=turn)
                return tally.result(_api_error_message(exc, config), is_error=True)
            tally.add_model(response.usage)
            stop = response.stop_reason
            text = _text_of(response.content)
            ctx.logger.debug("worker turn", turn=turn, stop_reason=stop)
            if stop == "tool_use":
                uses = [block for block in response.content if block.type == "tool_use"]
                messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in response.content]})
                results = await asyncio.gather(*(self._call_tool(use, tools, ctx, tally) for use in uses))
                messages.append({"role": "user", "content": list(results)})
                continue
            if stop == "pause_turn":
                # The API paused a long turn; sending the content back lets it continue.
                messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in response.content]})
                continue
            if stop == "refusal":
                return tally.result(
                    "the worker model refused this task" + (f": {text}" if text else ""), is_error=True
                )
            if stop in ("max_tokens", "model_context_window_exceeded"):
                if not text:
                    return tally.result(f"the worker ran out of room ({stop}) before writing an answer", is_error=True)
                return tally.result(f"{text}\n\n[cut short: the worker hit {stop}]")
            # end_turn, stop_sequence: the answer.
            if not text:
                return tally.result("the worker ended its turn without an answer", is_error=True)
            return tally.result(text)
        return tally.result(
            f"the worker used all {config.max_turns} turns without finishing; split the task or give it more context",
            is_error=True,
        )

    async def _tool_params(self, names: Sequence[str], ctx: Context) -> list[dict[str, Any]] | str:
        """The requested hands as Claude tool definitions, or a message saying why they cannot be had."""
        if self.config.gateway is None:
            return f"tools {list(names)} were requested, but this llm hand has no gateway to call them (set BRAINHANDS_GATEWAY)"
        try:
            specs = await self.gateway(ctx).describe(timeout=min(10.0, ctx.time_remaining() or 10.0))
        except grpc.aio.AioRpcError as exc:
            return f"the worker cannot list its tools at the gateway {self.config.gateway}: {exc.code().name}: {exc.details()}"
        by_name = {spec.name: spec for spec in specs}
        missing = [name for name in names if name not in by_name]
        if missing:
            return f"tools not available to the worker: {', '.join(missing)} (the gateway offers: {', '.join(sorted(by_name)) or 'none'})"
        return [
            {
                "name": name,
                "description": by_name[name].description,
                "input_schema": json.loads(by_name[name].input_schema_json or '{"type": "object"}'),
            }
            for name in names
        ]

    async def _call_tool(self, use: Any, allowed: Sequence[str], ctx: Context, tally: _Tally) -> dict[str, Any]:
        """One tool_use through the gateway, one level deeper, as a tool_result block."""

        def result(content: str, is_error: bool = False) -> dict[str, Any]:
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use.id, "content": content}
            if is_error:
                block["is_error"] = True
            return block

        if use.name not in allowed:
            return result(f"tool {use.name!r} was not given to this worker", is_error=True)
        session = worker_session(ctx)
        try:  # one level deeper, within the call's deadline, as the caller (ctx.client())
            response = await self.gateway(ctx).execute(
                use.name, use.input, call_id=use.id, session_id=session, timeout=self.config.tool_timeout
            )
        except grpc.aio.AioRpcError as exc:
            ctx.logger.info("worker tool call failed", tool=use.name, code=exc.code().name)
            return result(f"{use.name} failed: {exc.code().name}: {exc.details()}", is_error=True)
        if session != ctx.session_id:
            tally.workspace = session
        tally.add_hand(response.usage)
        return result(response.output, is_error=response.is_error)


def make_llm_hands(config: LLMWorkerConfig) -> list[Hand]:
    """The llm_worker hand over one config (tests build their own; the service reads the environment)."""
    worker = LLMWorker(config)

    @hand(name="llm_worker", description=DESCRIPTION, input_schema=INPUT_SCHEMA)
    async def llm_worker(
        task: str, context: str = "", output_format: str = "", tools: list[str] | None = None, *, ctx: Context
    ) -> HandResult:
        result = await worker.run(task, context, output_format, tools or [], ctx)
        ctx.logger.info(
            "worker finished",
            model=config.model,
            is_error=result.is_error,
            input_tokens=result.usage.input_tokens,
            output_tokens=result.usage.output_tokens,
        )
        return result

    return [llm_worker]


#: The port `serve hand` listens on when --port is not given.
DEFAULT_PORT = 50073


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The llm_worker hand configured from this process's environment."""
    config = LLMWorkerConfig.from_env()
    if not config.api_key:
        log.warning("ANTHROPIC_API_KEY is not set: llm_worker calls will fail until the service restarts with a key")
    log.info(
        "llm hand configured",
        model=config.model,
        base_url=config.base_url or "default",
        gateway=config.gateway or "none (no tools)",
        max_depth=config.max_depth,
    )
    return make_llm_hands(config)


if __name__ == "__main__":
    from hands.cli import module_main

    raise SystemExit(module_main("hands.builtin.llm"))
