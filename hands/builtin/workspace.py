"""The workspace hands for an orchestrator: workspace_diff shows what a session changed in its workspace.

Served by the fs hand service when session workspaces are configured (BRAINHANDS_WORKSPACES, hands/workspaces.py).
"""

from __future__ import annotations

import asyncio

from hands import Context, Hand, hand
from hands.workspaces import SessionWorkspaces


def make_workspace_hands(workspaces: SessionWorkspaces) -> list[Hand]:
    """workspace_diff over the session workspaces under one root."""

    @hand(idempotent=True)
    async def workspace_diff(ctx: Context) -> str:
        """Show this session's change to its workspace as a unified diff against the files it started from.

        New, changed and deleted files are all shown, whether the fs hands or a sandbox run made the change;
        caches the sandbox leaves (__pycache__, .pytest_cache) are not. Making no change gives a note saying so.
        """
        ws = workspaces.locate(ctx)
        if not ws.path.is_dir():
            return "[this session has no workspace yet: it is made by the session's first fs or sandbox call]"
        diff = await asyncio.to_thread(ws.diff)
        return diff or "[no change: the workspace is as the session's source left it]"

    return [workspace_diff]
