"""Tool calls through a HandService (a gateway or a hand service): Describe to tools, Execute to outcomes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from brain.events import HandUsage, ToolCallFinished
from hands import HandClient
from hands import metadata as md


class HandsUnauthenticated(Exception):
    """The gateway refused the brain's credentials: no call can succeed, so the session ends."""


class HandsUnreachable(Exception):
    """Describe failed: the brain cannot learn its tools."""


@dataclass(frozen=True)
class CallOutcome:
    """What one tool call came to, as the log records it."""

    output: str
    is_error: bool
    status: str  # "OK" or the gRPC status name
    duration: float
    usage: HandUsage = field(default_factory=HandUsage)

    def finished(self, call_id: str, name: str) -> ToolCallFinished:
        """The tool_call_finished payload of the call this outcome ends."""
        return ToolCallFinished(call_id=call_id, name=name, output=self.output, is_error=self.is_error,
                                status=self.status, duration=round(self.duration, 4), usage=self.usage)


class Dispatcher:
    """Runs the model's tool calls as Execute calls, each with a deadline and its tool_use id as call_id."""

    def __init__(self, client: HandClient, *, call_timeout: float, depth: int = 0,
                 metadata: dict[str, str] | None = None):
        """metadata: headers every call of the session sends (its workspace: BrainConfig.workspace_metadata)."""
        self._client = client
        self._call_timeout = call_timeout
        self._depth = depth
        self._metadata = dict(metadata or {})

    async def tools(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The Claude tool list from Describe, sorted by name so the prompt prefix is stable."""
        try:
            specs = await self._client.describe(timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise HandsUnauthenticated(
                    f"{self._client.target} refused the credentials ({exc.details()}); set BRAINHANDS_API_KEY"
                ) from None
            raise HandsUnreachable(
                f"cannot list the hands at {self._client.target} ({exc.code().name}: {exc.details()});"
                " is the gateway running there?"
            ) from None
        tools = []
        for spec in sorted(specs, key=lambda s: s.name):
            schema = json.loads(spec.input_schema_json) if spec.input_schema_json else {"type": "object"}
            tools.append({"name": spec.name, "description": spec.description, "input_schema": schema})
        return tools

    async def call(
        self, session_id: str, call_id: str, name: str, input: Any, *, budget: tuple[int, int] | None = None
    ) -> CallOutcome:
        """One Execute. budget: (tokens, tool calls) of the session this call may spend, for a worker that orchestrates."""
        started = time.perf_counter()
        metadata = {**self._metadata, md.DEPTH: str(self._depth)}
        if budget is not None:
            metadata[md.BUDGET_TOKENS], metadata[md.BUDGET_CALLS] = str(budget[0]), str(budget[1])
        try:
            response = await self._client.execute(
                name,
                input if isinstance(input, str) else json.dumps(input),
                call_id=call_id,
                session_id=session_id,
                timeout=self._call_timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise HandsUnauthenticated(
                    f"{self._client.target} refused the brain's credentials for {name} ({exc.details()});"
                    " set BRAINHANDS_API_KEY to a valid key"
                ) from None
            return CallOutcome(explain(name, exc, self._call_timeout), True, exc.code().name, time.perf_counter() - started)
        usage = HandUsage.from_counts(response.usage)  # a worker agent's tool calls and nested tokens included
        return CallOutcome(response.output, response.is_error, "OK", time.perf_counter() - started, usage)


def _retry_after(exc: grpc.aio.AioRpcError) -> float | None:
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except (TypeError, ValueError):
                return None
    return None


def explain(name: str, exc: grpc.aio.AioRpcError, timeout: float) -> str:
    """One line, for the model, on a non-OK status: what happened and what it can do."""
    code = exc.code()
    detail = (exc.details() or "").splitlines()[0][:300] if exc.details() else ""
    status = f"{code.name}: {detail}" if detail else code.name
    S = grpc.StatusCode
    if code == S.NOT_FOUND:
        return f"there is no hand named {name} ({status}); use one of the tools you were given"
    if code == S.UNAVAILABLE:
        return f"hand {name} is unavailable ({status}); retry later or work around it"
    if code == S.DEADLINE_EXCEEDED:
        return f"hand {name} did not finish within {timeout:g}s ({status}); ask for less per call or work around it"
    if code == S.RESOURCE_EXHAUSTED:
        delay = _retry_after(exc)
        when = f"retry after {delay:g}s" if delay is not None else "retry later"
        return f"hand {name} is over quota ({status}); {when}, make fewer calls, or work around it"
    if code == S.PERMISSION_DENIED:
        return f"this session may not use hand {name} ({status}); work without it"
    if code == S.INVALID_ARGUMENT:
        return f"hand {name} rejected the request ({status}); fix the input and retry"
    if code == S.INTERNAL:
        return f"hand {name} failed with an internal error ({status}); retry once or work around it"
    if code == S.CANCELLED:
        return f"the call to hand {name} was cancelled ({status}); retry it if it is still needed"
    return f"hand {name} failed ({status}); retry or work around it"
