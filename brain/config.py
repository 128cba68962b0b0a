"""BrainConfig: the orchestrator's limits, validated once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
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
    thinking: str = "off"  # "adaptive": the model decides when and how much to think; "off": no thinking
    effort: str | None = None  # "low" | "medium" | "high": the model's effort; None: its default

    #: the settings that are words, not numbers: each with the values it may take
    CHOICES = {"thinking": ("adaptive", "off"), "effort": (None, "low", "medium", "high")}

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in self.CHOICES:
                if value not in self.CHOICES[f.name]:
                    words = " or ".join(c for c in self.CHOICES[f.name] if c)
                    raise ValueError(f"brain config {f.name}: expected {words}, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"brain config {f.name}: expected a number, got {value!r}")
            minimum = 0 if f.name == "max_continuations" else 1
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"brain config {f.name}: expected a whole number, got {value!r}")
            if value < minimum if f.type == "int" else value <= 0:
                raise ValueError(f"brain config {f.name}: must be {'at least ' + str(minimum) if f.type == 'int' else 'positive'}, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
