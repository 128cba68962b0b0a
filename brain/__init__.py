"""The brain: an orchestrator loop over Claude that fans tool calls out to hands, on a durable session log."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Exports load on first use (PEP 562): `brainhands` imports brain.cli for every command, and the
# anthropic SDK alone takes a second to import; commands that never talk to a model should not pay it.
_EXPORTS = {
    "AnthropicModel": "brain.model",
    "ContextWindowExceeded": "brain.model",
    "Model": "brain.model",
    "ModelError": "brain.model",
    "Brain": "brain.loop",
    "LeaseLost": "brain.loop",
    "RunResult": "brain.loop",
    "SessionBusy": "brain.loop",
    "BrainConfig": "brain.config",
    "CallOutcome": "brain.dispatch",
    "Dispatcher": "brain.dispatch",
    "HandsUnauthenticated": "brain.dispatch",
    "HandsUnreachable": "brain.dispatch",
    "ScriptedModel": "brain.scripted",
    "SessionNotFound": "brain.sessions",
    "SessionStore": "brain.sessions",
    "open_store": "brain.sessions",
}

__all__ = [
    "AnthropicModel",
    "Brain",
    "BrainConfig",
    "CallOutcome",
    "ContextWindowExceeded",
    "Dispatcher",
    "HandsUnauthenticated",
    "HandsUnreachable",
    "LeaseLost",
    "Model",
    "ModelError",
    "RunResult",
    "ScriptedModel",
    "SessionBusy",
    "SessionNotFound",
    "SessionStore",
    "open_store",
]

if TYPE_CHECKING:
    from brain.config import BrainConfig
    from brain.dispatch import CallOutcome, Dispatcher, HandsUnauthenticated, HandsUnreachable
    from brain.loop import Brain, LeaseLost, RunResult, SessionBusy
    from brain.model import AnthropicModel, ContextWindowExceeded, Model, ModelError
    from brain.scripted import ScriptedModel
    from brain.sessions import SessionNotFound, SessionStore, open_store


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'brain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
