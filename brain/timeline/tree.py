"""Which sessions a timeline draws under its own: the tree of sub-agent sessions, by parent_id."""

from __future__ import annotations

from collections.abc import Iterable

from brain.sessions import SessionInfo, SessionStore

#: How many levels of nested agents a timeline draws under its session (the agent hand's own max_depth
#: is 3 by default); a tree deeper than this is cut there rather than drawn without end.
MAX_TREE_DEPTH = 8


def tree_order(root_id: str, sessions: Iterable[SessionInfo], max_depth: int = MAX_TREE_DEPTH) -> list[tuple[int, SessionInfo]]:
    """The sessions under root_id as (depth, info), depth first (each right after its parent), siblings in
    creation order, root's children at depth 1; sessions deeper than max_depth, or not under root_id, are left out."""
    by_parent: dict[str, list[SessionInfo]] = {}
    for info in sessions:
        if info.parent_id:
            by_parent.setdefault(info.parent_id, []).append(info)
    out: list[tuple[int, SessionInfo]] = []
    seen = {root_id}  # a parent_id cycle in a damaged store must not loop forever

    def visit(parent_id: str, depth: int) -> None:
        if depth > max_depth:
            return
        for info in sorted(by_parent.get(parent_id, ()), key=lambda i: (i.created_at, i.id)):
            if info.id in seen:
                continue
            seen.add(info.id)
            out.append((depth, info))
            visit(info.id, depth + 1)

    visit(root_id, 1)
    return out


async def session_tree(
    store: SessionStore, session_id: str, *, scan: int = 1000, max_depth: int = MAX_TREE_DEPTH
) -> list[tuple[int, SessionInfo]]:
    """The sessions under session_id (at any depth up to max_depth) among the newest `scan` in the store."""
    return tree_order(session_id, await store.list_sessions(limit=scan), max_depth)
