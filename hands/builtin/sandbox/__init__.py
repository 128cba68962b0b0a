"""The sandbox hands: run Python or shell in a throwaway directory under limits, isolated by bubblewrap when possible."""

from hands.builtin.sandbox.config import SandboxConfig
from hands.builtin.sandbox.service import DEFAULT_PORT, HANDS, make_sandbox_hands

__all__ = ["DEFAULT_PORT", "HANDS", "SandboxConfig", "make_sandbox_hands"]
