"""The brain: an orchestrator loop over Claude that fans tool calls out to hands, on a durable session log."""

from brain.config import BrainConfig
from brain.dispatch import CallOutcome, Dispatcher, HandsUnauthenticated, HandsUnreachable
from brain.loop import Brain, LeaseLost, RunResult, SessionBusy
from brain.model import AnthropicModel, ContextWindowExceeded, Model, ModelError
from brain.scripted import ScriptedModel
from brain.sessions import SessionNotFound, SessionStore, open_store

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
