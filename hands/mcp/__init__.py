"""MCP servers as hands: a bridge that serves each tool of an MCP server (stdio or streamable HTTP) as a hand."""

from hands.mcp.bridge import McpBridge, McpBridgeConfig, McpConfigError, McpUnavailable
from hands.mcp.content import output_text
from hands.mcp.names import hand_names

__all__ = ["McpBridge", "McpBridgeConfig", "McpConfigError", "McpUnavailable", "hand_names", "output_text"]
