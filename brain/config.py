"""BrainConfig: the orchestrator's limits, validated once."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class BrainConfig:
    """Hard limits that back up the system prompt's discipline, and timeouts."""

    max_turns: int = 20  # model responses, not counting the final synthesis after a limit
    max_parallel: int = 8  # tool calls in flight at once
    max_tool_calls: int = 100  # tool calls in the whole session
    token_budget: int = 2_000_000  # model tokens (input, cached, output) plus what hands report
    call_timeout: float = 300.0  # seconds: the deadline of each tool call
    max_continuations: int = 1  # times the model may continue after hitting max_tokens in a row
    lease_ttl: float = 30.0  # seconds a brain holds a session without renewing (renewed every ttl/3)
    describe_timeout: float = 10.0
    store_retry: float = 30.0  # seconds an append is retried while the session store is unreachable; then the brain stops
    #: hand-name globs (fnmatch: fs_write, fs_*, *) whose calls wait for a person's approval before they run
    approve: tuple[str, ...] = field(default=())

    def __post_init__(self):
        approve = self.approve
        if isinstance(approve, str) or not all(isinstance(g, str) and g.strip() for g in approve):
            raise ValueError(f"brain config approve: expected a list of hand-name globs, got {approve!r}")
        object.__setattr__(self, "approve", tuple(g.strip() for g in approve))
        for f in fields(self):
            if f.name == "approve":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"brain config {f.name}: expected a number, got {value!r}")
            minimum = 0 if f.name == "max_continuations" else 1
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"brain config {f.name}: expected a whole number, got {value!r}")
            if value < minimum if f.type == "int" else value <= 0:
                raise ValueError(f"brain config {f.name}: must be {'at least ' + str(minimum) if f.type == 'int' else 'positive'}, got {value!r}")

    def approval_rule(self, hand: str) -> str | None:
        """The approve: glob a call to this hand matches (it then waits for a person), or None."""
        return next((glob for glob in self.approve if fnmatch.fnmatchcase(hand, glob)), None)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["approve"] = list(self.approve)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "approve" in values:
            values["approve"] = tuple(values["approve"] or ())
        return cls(**values)
