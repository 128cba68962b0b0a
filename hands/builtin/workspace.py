"""The workspace hands for an orchestrator: workspace_diff shows what a session changed in its workspace,
workspace_merge merges the workspaces of the workers it started (branched from its own) back into it.

Served by the fs hand service when session workspaces are configured (BRAINHANDS_WORKSPACES, hands/workspaces.py).
"""

from __future__ import annotations

import asyncio

from hands import Context, Hand, HandResult, hand
from hands.workspaces import SessionWorkspaces


def make_workspace_hands(workspaces: SessionWorkspaces) -> list[Hand]:
    """workspace_diff and workspace_merge over the session workspaces under one root."""

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

    @hand
    async def workspace_merge(ctx: Context, sessions: list[str] | None = None) -> HandResult:
        """Merge the workspaces of worker sessions into this session's workspace, in the order given.

        sessions are the ids of sessions whose workspaces were branched from this one (a worker's first fs or
        sandbox call branches its workspace from its caller's; an llm_worker's result names its session). Left
        out, every worker branched from this session and not merged yet is merged, in the order they branched.
        Each is merged with git's three-way merge; one whose change conflicts with what is here is not merged
        (this workspace stays as it was for it) and the result is an error listing its conflicting hunks, to
        reconcile by hand (fs_edit) or by a new worker.
        """
        here = workspaces.locate(ctx)
        if not here.path.is_dir():
            return HandResult("this session has no workspace yet, so there is nothing to merge into", is_error=True)
        if sessions is None:
            sessions = await asyncio.to_thread(here.unmerged)
            if not sessions:
                return HandResult("merged 0 of 0: no worker branched from this session has a change left to merge")
        merged, problems = [], []
        for session in sessions:
            child = workspaces.of(here.tenant, session)
            if not child.path.is_dir() or child.parent != here.session:
                problems.append(f"session {session[:80]!r} has no workspace branched from this session's")
                continue
            conflict = await asyncio.to_thread(here.merge, child)
            if conflict is None:
                merged.append(session)
            else:
                problems.append(conflict)
        lines = [f"merged {len(merged)} of {len(sessions)}: {', '.join(merged) or 'none'}", *problems]
        return HandResult("\n".join(lines), is_error=bool(problems))

    return [workspace_diff, workspace_merge]
