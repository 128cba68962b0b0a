"""The tests' Messages-API server: the package's scripted server under the name the tests use."""

from brainhands.scripted_api import (
    DEFAULT_MODEL,
    HTTPError,
    RecordedRequest,
    message,
    sse_events,
    text_reply,
    tool_reply,
    tool_results,
)
from brainhands.scripted_api import ScriptedMessagesAPI as FakeMessagesAPI

__all__ = [
    "DEFAULT_MODEL",
    "FakeMessagesAPI",
    "HTTPError",
    "RecordedRequest",
    "message",
    "sse_events",
    "text_reply",
    "tool_reply",
    "tool_results",
]
