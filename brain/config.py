"""BrainConfig: the orchestrator's limits, validated once."""

from __future__ import annotations

import fnmatch
from typing import Any, Literal

from pydantic import field_validator

from hands import metadata as md
from hands.config import ConfigModel, Duration, whole


class BrainConfig(ConfigModel):
    """Hard limits that back up the system prompt's discipline, and timeouts."""

    config_name = "brain config"

    max_turns: whole(1) = 20  # model responses, not counting the final synthesis after a limit
    max_parallel: whole(1) = 8  # tool calls in flight at once
    max_tool_calls: whole(1) = 100  # tool calls in the whole session
    token_budget: whole(1) = 2_000_000  # model tokens (input, cached, output) plus what hands report
    call_timeout: Duration = 300.0  # seconds: the deadline of each tool call
    max_continuations: whole(0) = 1  # times the model may continue after hitting max_tokens in a row
    lease_ttl: Duration = 30.0  # seconds a brain holds a session without renewing (renewed every ttl/3)
    describe_timeout: Duration = 10.0
    #: Anthropic server tools the model runs itself instead of the hands of the same name, and how often per request
    server_tools: tuple[Literal["web_search", "web_fetch"], ...] = ()
    server_tool_max_uses: whole(1) = 5
    store_retry: Duration = 30.0  # seconds an append is retried while the session store is unreachable; then the brain stops
    thinking: Literal["adaptive", "off"] = "off"  # "adaptive": the model decides when and how much to think
    effort: Literal["low", "medium", "high"] | None = None  # the model's effort; None: the model's own default
    #: hand-name globs (fnmatch: fs_write, fs_*, *) whose calls wait for a person's approval before they run
    approve: tuple[str, ...] = ()
    #: the session workspace's source, sent with every call as x-brainhands-workspace: an absolute directory on the
    #: hands' machine or a git URL[@REF] ("": none named; the hands' own default)
    workspace: str = ""
    #: each worker the session starts gets its own git branch of the session's workspace (x-brainhands-worker-workspaces)
    worker_workspaces: bool = False

    @field_validator("workspace")
    @classmethod
    def _source(cls, value: str) -> str:
        # It travels as a gRPC metadata value: printable ASCII only.
        if value and (len(value) > 2048 or not all(" " <= c <= "~" for c in value)):
            raise ValueError("must be printable ASCII of at most 2048 characters")
        if value and not (value.startswith("/") or "://" in value):
            raise ValueError(f"expected an absolute directory or a git URL, got {value[:200]!r}")
        return value

    def workspace_metadata(self) -> dict[str, str]:
        """The headers that name the session's workspace to the fs and sandbox hands (hands/workspaces.py)."""
        meta = {md.WORKSPACE: self.workspace} if self.workspace else {}
        if self.worker_workspaces:
            meta[md.WORKER_WORKSPACES] = "branch"
        return meta

    @field_validator("approve", mode="before")
    @classmethod
    def _globs(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("expected a list of hand-name globs, not one string")
        if isinstance(value, list | tuple):
            if not all(isinstance(g, str) and g.strip() for g in value):
                raise ValueError("every glob must be a non-empty string")
            return tuple(g.strip() for g in value)
        return value

    def approval_rule(self, hand: str) -> str | None:
        """The approve: glob a call to this hand matches (it then waits for a person), or None."""
        return next((glob for glob in self.approve if fnmatch.fnmatchcase(hand, glob)), None)

    def as_dict(self) -> dict[str, Any]:
        data = self.model_dump()
        data["approve"] = list(self.approve)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainConfig:
        """The limits a session's log recorded; keys this version does not know are left out."""
        return cls(**{k: v for k, v in data.items() if k in cls.model_fields})
