"""MCP servers as hands: a bridge that serves each tool of an MCP server (stdio or streamable HTTP) as a hand."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Loaded on first use: `brainhands` imports hands.mcp.cli for every command, and the mcp SDK is slow to import.
_EXPORTS = {
    "McpBridge": "hands.mcp.bridge",
    "McpBridgeConfig": "hands.mcp.bridge",
    "McpConfigError": "hands.mcp.bridge",
    "McpUnavailable": "hands.mcp.bridge",
    "output_text": "hands.mcp.content",
    "hand_names": "hands.mcp.names",
}

__all__ = ["McpBridge", "McpBridgeConfig", "McpConfigError", "McpUnavailable", "hand_names", "output_text"]

if TYPE_CHECKING:
    from hands.mcp.bridge import McpBridge, McpBridgeConfig, McpConfigError, McpUnavailable
    from hands.mcp.content import output_text
    from hands.mcp.names import hand_names


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hands.mcp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
