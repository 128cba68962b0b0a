"""The agent hand: a worker that orchestrates, running the brain loop itself within a budget carved out of its caller's."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import structlog
from pydantic import Field

from hands import Context, Hand, HandClient, HandResult, Usage, hand
from hands import metadata as md
from hands.builtin.llm import INPUT_SCHEMA as LLM_INPUT_SCHEMA
from hands.builtin.llm import WORKER_ENV_VARS, user_message
from hands.config import DEFAULT_MODEL, ConfigModel, Duration, Text, whole

log = structlog.get_logger("hands.agent")

#: Below this many tokens a worker agent cannot get through one model turn and a synthesis: refuse instead.
MIN_TOKEN_BUDGET = 2_000

INPUT_SCHEMA: dict[str, Any] = {
    **LLM_INPUT_SCHEMA,
    "properties": {
        **LLM_INPUT_SCHEMA["properties"],
        "tools": {
            "type": "array",
            "items": {"type": "string"},
            "uniqueItems": True,
            "description": "Names of the hands the agent and its workers may call; every hand the gateway offers if omitted.",
        },
    },
}

DESCRIPTION = (
    "Delegate a broad subtask to a worker that orchestrates: it plans the subtask, runs its own workers "
    "and tools in parallel, and returns one synthesized answer. Use it only for a piece of work too big "
    "for one llm_worker call (e.g. auditing a whole module); brief it like a worker: the objective (task), "
    "the facts it needs (context), the answer's shape (output_format) and the hands it may use (tools). "
    "Its tokens and tool calls come out of this session's budget."
)


class AgentConfig(ConfigModel):
    """Everything the agent hand needs, read once at start-up; a request can only lower the limits."""

    config_name = "agent config"
    env_vars = {
        **WORKER_ENV_VARS,
        "sessions": "BRAINHANDS_SESSIONS",
        "model": ("BRAINHANDS_AGENT_MODEL", "BRAINHANDS_MODEL"),
        "max_turns": "BRAINHANDS_AGENT_MAX_TURNS",
        "max_tool_calls": "BRAINHANDS_AGENT_MAX_TOOL_CALLS",
        "token_budget": "BRAINHANDS_AGENT_TOKEN_BUDGET",
    }

    gateway: str | None = None  # where the agent's brain calls hands (its tools); required
    # Not used for calls: the agent calls as its caller (the delegation of the call it serves), never as itself.
    gateway_api_key: str | None = Field(None, repr=False)
    sessions: str | None = None  # the session store its sessions are written to (None: the default SQLite file)
    model: Text = DEFAULT_MODEL
    api_key: str | None = Field(None, repr=False)
    base_url: str | None = None
    max_depth: whole(0) = 3  # deepest nesting allowed; the root brain's direct calls are depth 0
    max_turns: whole(1) = 12
    max_parallel: whole(1) = 4
    max_tool_calls: whole(1) = 40  # per agent session, before the caller's budget caps it further
    token_budget: whole(MIN_TOKEN_BUDGET) = 400_000
    call_timeout: Duration = 300.0  # seconds each of its tool calls may take (and never past its own deadline)


def _header_int(metadata: Mapping[str, str], key: str) -> int | None:
    raw = metadata.get(key)
    try:
        return max(0, int(raw)) if raw is not None else None
    except ValueError:
        return None


class Agent:
    """What the agent hand keeps across calls: the gateway channel, the model client, the session store."""

    def __init__(self, config: AgentConfig, model=None, store=None):
        self.config = config
        self._model = model
        self._store = store
        self._own_store = store is None
        self._lock = asyncio.Lock()

    async def _resources(self):
        # Made on first use, inside the serving loop: channels and pools belong to the loop that made them.
        async with self._lock:
            if self._model is None:
                import anthropic

                from brain import AnthropicModel

                client = anthropic.AsyncAnthropic(api_key=self.config.api_key, base_url=self.config.base_url)
                self._model = AnthropicModel(self.config.model, client=client)
            if self._store is None:
                from brain import open_store

                self._store = await open_store(self.config.sessions)
        return self._model, self._store

    async def close(self) -> None:
        if self._own_store and self._store is not None:
            await self._store.close()

    def limits(self, ctx: Context):
        """The agent's BrainConfig: its own limits, capped by what the caller passed down; or why it cannot run."""
        from brain import BrainConfig

        c = self.config
        tokens, calls = c.token_budget, c.max_tool_calls
        passed_tokens = _header_int(ctx.metadata, md.BUDGET_TOKENS)
        passed_calls = _header_int(ctx.metadata, md.BUDGET_CALLS)
        if passed_tokens is not None:
            tokens = min(tokens, passed_tokens)
        if passed_calls is not None:
            calls = min(calls, passed_calls)
        if calls < 1:
            return "refused: the calling session has no tool calls left to give a worker agent; do this part without one"
        if tokens < MIN_TOKEN_BUDGET:
            return (f"refused: the calling session has {tokens} tokens left to give a worker agent, below the "
                    f"{MIN_TOKEN_BUDGET} it needs; do this part without one")  # fmt: skip
        remaining = ctx.time_remaining()
        timeout = c.call_timeout if remaining is None else max(0.001, min(c.call_timeout, remaining))
        return BrainConfig(max_turns=c.max_turns, max_parallel=c.max_parallel, max_tool_calls=calls,
                           token_budget=tokens, call_timeout=timeout)  # fmt: skip

    async def run(self, task: str, context: str, output_format: str, tools: Sequence[str] | None, ctx: Context) -> HandResult:
        from brain import Brain, HandsUnauthenticated, HandsUnreachable

        c = self.config
        if ctx.depth > c.max_depth:
            return HandResult(
                f"refused: this worker agent would run at depth {ctx.depth}, past the maximum of {c.max_depth} "
                "nested workers; do this part without another worker agent",
                is_error=True,
            )
        if not c.gateway:
            return HandResult("the agent hand has no gateway to call its tools (set BRAINHANDS_GATEWAY)", is_error=True)
        limits = self.limits(ctx)
        if isinstance(limits, str):
            return HandResult(limits, is_error=True)
        model, store = await self._resources()
        gateway = ctx.client(c.gateway)  # every nested call as the caller: its delegation, never the agent's key
        if tools:
            missing = await self._missing(gateway, tools)
            if missing:
                return HandResult(missing, is_error=True)
        # The caller's approval rules hold in the worker's session too; a request raised there is copied to the root
        # session (where the person watches) and the worker waits for the decision, its session holding no lease.
        approve, root, tenant = await self._caller_session(store, ctx.session_id)
        if approve:
            limits = limits.model_copy(update={"approve": approve})
        # One deeper than the call that reached us, and linked to the caller's session so the tree is one.
        brain = Brain(target=gateway, model=model, store=store, config=limits, depth=ctx.depth + 1, tools=tools or None,
                      wait_for_decisions=True, relay_to=root)
        try:
            result = await brain.run(user_message(task, context, output_format), parent_id=ctx.session_id or None,
                                     **({"tenant": tenant} if tenant else {}))  # the caller's session's tenant
        except (HandsUnauthenticated, HandsUnreachable) as exc:
            return HandResult(f"the worker agent could not start: {exc}", is_error=True)
        finally:
            await brain.close()
        totals = result.usage or {}
        own = {k: int(v or 0) for k, v in (totals.get("model_usage") or {}).items()}
        own_output = own.get("output_tokens", 0)
        own_input = sum(own.values()) - own_output
        total = int(totals.get("total_tokens", 0))
        # input + output: the agent's own model tokens, which only this call reports (the gateway charges them
        # to the caller's quota here); nested_tokens: what its workers and tools spent, each of which reported
        # it with its own call through the gateway. The caller's budget counts both: the session's whole total.
        usage = Usage(input_tokens=own_input, output_tokens=own_output, tool_calls=int(totals.get("tool_calls", 0)),
                      nested_tokens=total - own_input - own_output)  # fmt: skip
        ctx.logger.info("worker agent finished", agent_session=result.session_id, status=result.status,
                        cut_short=result.cut_short, tokens=total, tool_calls=usage.tool_calls)  # fmt: skip
        if not result.ok:
            return HandResult(f"the worker agent's session {result.session_id} {result.status}: {result.text}", True, usage)
        text = result.text
        if result.cut_short:
            text += f"\n\n[cut short: the worker agent reached its {result.reason}; this is what it had]"
        return HandResult(text, usage=usage)

    async def _caller_session(self, store, session_id: str | None) -> tuple[tuple[str, ...], str | None, str | None]:
        """The calling session's approve: rules, the root of its tree and its tenant, from the session store.

        The worker's session belongs to the caller's session's tenant, so that tenant (and only it) sees it."""
        if not session_id:
            return (), None, None
        try:
            info = await store.get_session(session_id)
        except Exception as exc:
            log.warning("cannot read the calling session", session_id=session_id, error=str(exc))
            return (), None, None
        if info is None:  # a caller whose log lives in another store: no rules to inherit, no root to show them on
            return (), None, None
        approve = tuple(info.config.get("approve") or ())
        root, seen = info, {info.id}
        while root.parent_id and root.parent_id not in seen:
            parent = await store.get_session(root.parent_id)
            if parent is None:
                break
            seen.add(parent.id)
            root = parent
        return approve, root.id, info.tenant

    async def _missing(self, gateway: HandClient, tools: Sequence[str]) -> str | None:
        try:
            offered = {spec.name for spec in await gateway.describe(timeout=10.0)}
        except grpc.aio.AioRpcError as exc:
            return f"the worker agent cannot list its tools at the gateway: {exc.code().name}: {exc.details()}"
        missing = [name for name in tools if name not in offered]
        if missing:
            return f"tools not available to the worker agent: {', '.join(missing)} (the gateway offers: {', '.join(sorted(offered))})"
        return None


def make_agent_hands(config: AgentConfig, *, model=None, store=None) -> list[Hand]:
    """The agent hand over one config; tests may pass the model and session store it uses."""
    agent = Agent(config, model, store)

    @hand(name="agent", description=DESCRIPTION, input_schema=INPUT_SCHEMA)
    async def agent_hand(
        task: str, context: str = "", output_format: str = "", tools: list[str] | None = None, *, ctx: Context
    ) -> HandResult:
        return await agent.run(task, context, output_format, tools, ctx)

    return [agent_hand]


#: The port `serve hand` listens on when --port is not given.
DEFAULT_PORT = 50075


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The agent hand configured from this process's environment."""
    config = AgentConfig.from_env()
    if not config.gateway:
        log.warning("BRAINHANDS_GATEWAY is not set: agent calls will fail until the service restarts with one")
    log.info("agent hand configured", model=config.model, gateway=config.gateway, max_depth=config.max_depth,
             sessions=config.sessions or "default")  # fmt: skip
    return make_agent_hands(config)


if __name__ == "__main__":
    from hands.cli import module_main

    raise SystemExit(module_main("brain.agent"))
