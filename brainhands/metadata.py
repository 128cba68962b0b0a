"""The metadata keys every service propagates and binds into its log context."""

from __future__ import annotations

AUTHORIZATION = "authorization"
SESSION_ID = "x-brainhands-session-id"
CALL_ID = "x-brainhands-call-id"
DEPTH = "x-brainhands-depth"
TRACEPARENT = "traceparent"

#: Keys a gateway passes on to a backend as they came in.
PROPAGATED = (SESSION_ID, CALL_ID, DEPTH, TRACEPARENT)


def as_dict(metadata) -> dict[str, str]:
    """Invocation metadata as a dict; the first value of a repeated key wins."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if key not in out and isinstance(value, str):
            out[key] = value
    return out
