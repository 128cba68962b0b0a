"""An MCP tools/call result as a hand's output: text joined, other content summarised in words."""

from __future__ import annotations

import json

import mcp_types as types


def _size(base64_data: str) -> str:
    n = len(base64_data) * 3 // 4 - base64_data[-2:].count("=")
    return f"{n} B" if n < 1024 else f"{round(n / 1024)} KB"


def describe_block(block) -> str:
    """One content block in words the model can read."""
    if isinstance(block, types.TextContent):
        return block.text
    if isinstance(block, types.ImageContent | types.AudioContent):
        return f"[{block.mime_type}, {_size(block.data)}]"
    if isinstance(block, types.ResourceLink):
        return f"[resource link: {block.uri}" + (f" ({block.name})" if block.name else "") + "]"
    if isinstance(block, types.EmbeddedResource):
        resource = block.resource
        if isinstance(resource, types.TextResourceContents):
            return resource.text
        return f"[resource {resource.uri}, {resource.mime_type or 'binary'}, {_size(resource.blob)}]"
    return f"[{getattr(block, 'type', type(block).__name__)} content]"


def output_text(result: types.CallToolResult) -> str:
    """The text parts joined by newlines; structured content when there is no content at all."""
    if result.content:
        return "\n".join(describe_block(block) for block in result.content)
    if result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return ""
