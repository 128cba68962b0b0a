"""The metadata keys every service propagates and binds into its log context."""

from __future__ import annotations

AUTHORIZATION = "authorization"
SESSION_ID = "x-brainhands-session-id"
CALL_ID = "x-brainhands-call-id"
DEPTH = "x-brainhands-depth"
TRACEPARENT = "traceparent"
#: What is left of the calling session's budget for this call (a worker that orchestrates caps its own by it).
BUDGET_TOKENS = "x-brainhands-budget-tokens"
BUDGET_CALLS = "x-brainhands-budget-calls"
#: The authenticated tenant, set by the gateway on each call it forwards. Never propagated as it came in:
#: a caller could write any tenant there, so the gateway drops an incoming one and sets its own.
TENANT = "x-brainhands-tenant"
#: The gateway's signed delegation for the call a hand serves (gateway/delegation.py). A hand calling other hands
#: for its caller presents it (ctx.client()) instead of a key; the gateway replaces it on every call it forwards.
DELEGATION = "x-brainhands-delegation"

#: The source a session's workspace is made from on its first fs or sandbox call (hands/workspaces.py): a local
#: directory the hand services allow as a source. Set by the brain from ``brainhands run --workspace DIR``.
WORKSPACE = "x-brainhands-workspace"
#: The session a call's session was started by (a worker's caller): its workspace, on its first call, is branched
#: from that session's workspace of the same tenant. Set by ctx.client() on calls for another session than its own.
WORKSPACE_PARENT = "x-brainhands-workspace-parent"
#: "branch": a worker's session gets its own branch of its parent's workspace (merged back with workspace_merge);
#: absent, it works in its parent's workspace itself. Set by the brain (``brainhands run --worker-workspaces``).
WORKER_WORKSPACES = "x-brainhands-worker-workspaces"

#: Keys a gateway passes on to a backend as they came in.
PROPAGATED = (SESSION_ID, CALL_ID, DEPTH, TRACEPARENT, BUDGET_TOKENS, BUDGET_CALLS, WORKSPACE, WORKSPACE_PARENT, WORKER_WORKSPACES)


def as_dict(metadata) -> dict[str, str]:
    """Invocation metadata as a dict; the first value of a repeated key wins."""
    out: dict[str, str] = {}
    for key, value in metadata or ():
        if key not in out and isinstance(value, str):
            out[key] = value
    return out
