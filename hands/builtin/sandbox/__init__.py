"""The sandbox hands: run Python or shell in a throwaway directory under limits, isolated by bubblewrap when possible."""

from hands.builtin.sandbox.config import SandboxConfig
from hands.builtin.sandbox.service import HANDS, make_sandbox_hands

__all__ = ["HANDS", "SandboxConfig", "make_sandbox_hands"]
