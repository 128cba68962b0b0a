"""A session's timeline straight from a store: the session, the tree of sub-agents under it, their events."""

from __future__ import annotations

from brain.sessions import SessionNotFound, SessionStore
from brain.timeline.render import render_timeline
from brain.timeline.tree import session_tree


async def load_timeline(store: SessionStore, session_id: str, *, children_scan: int = 1000) -> str:
    """Read a session and the whole tree of sub-agent sessions under it (among the newest children_scan) and render it."""
    info = await store.get_session(session_id)
    if info is None:
        raise SessionNotFound(f"no session {session_id!r}")
    children = {}
    for _, other in await session_tree(store, session_id, scan=children_scan):
        children[other.id] = (other, await store.events(other.id))
    return render_timeline(info, await store.events(session_id), children=children)
