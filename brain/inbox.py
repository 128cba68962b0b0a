"""What people add to a session's log from outside the brain driving it: approval decisions and messages.

Anyone may append these, with or without the session's lease: the log is the mailbox. An append takes the next seq
(retrying when a brain wrote in between), and a brain driving the session folds them in when it next reads the log
(its own appends, finding the seq taken, read what is there: brain.events.EXTERNAL). Nothing here waits for a brain.
"""

from __future__ import annotations

from typing import Any

from brain import events as ev
from brain.events import SessionState
from brain.sessions import Event, SeqConflict, SessionNotFound, SessionStore

#: tries of an append that keeps finding its seq taken (a brain writing a fan-out's events between two reads)
_TRIES = 50


class NothingToDecide(ValueError):
    """The session has no such pending approval request (or several, and no call id says which)."""


class NotRunning(ValueError):
    """The session has ended: no one can decide or say anything to it any more."""


async def state_of(store: SessionStore, session_id: str) -> SessionState:
    if await store.get_session(session_id) is None:
        raise SessionNotFound(f"no session {session_id!r}")
    return SessionState.from_events(session_id, await store.events(session_id))


async def append_external(store: SessionStore, session_id: str, payload: ev.Payload) -> Event:
    """Append at the log's end, whoever else is writing to it."""
    for _ in range(_TRIES):
        info = await store.get_session(session_id)
        if info is None:
            raise SessionNotFound(f"no session {session_id!r}")
        try:
            return await store.append(session_id, info.last_seq + 1, payload.TYPE, payload.to_data())
        except SeqConflict:
            continue
    raise SeqConflict(f"session {session_id}: the log kept moving; try again")


def pending_for(state: SessionState, call_id: str | None) -> ev.Approval:
    """The request a decision is about: the one named, or the only one pending."""
    if state.status not in ("running", "waiting"):
        raise NotRunning(f"session {state.session_id} has ended ({state.status}); there is nothing to decide")
    pending = state.pending_approvals()
    if call_id:
        approval = state.approvals.get(call_id)
        if approval is None:
            raise NothingToDecide(f"session {state.session_id} has no approval request for call {call_id}")
        if not approval.pending:
            verdict = "approved" if approval.decision.approved else "denied"
            raise NothingToDecide(f"call {call_id} of session {state.session_id} was already {verdict} by {approval.decision.by}")
        return approval
    if not pending:
        raise NothingToDecide(f"session {state.session_id} has no call waiting for approval")
    if len(pending) > 1:
        ids = ", ".join(f"{a.call_id} ({a.name})" for a in pending)
        raise NothingToDecide(f"session {state.session_id} has {len(pending)} calls waiting; name one: {ids}")
    return pending[0]


async def decide(
    store: SessionStore,
    session_id: str,
    call_id: str | None,
    *,
    approved: bool,
    by: str,
    input: Any = None,
    reason: str | None = None,
    always: bool = False,
) -> ev.ApprovalDecided:
    """Record a decision on a pending request of the session (a nested session's request relayed to it included).

    A nested request is decided in the session that raised it (its brain waits for it there) and recorded in this
    one too, so both logs show who decided what.
    """
    if not approved and not (reason or "").strip():
        raise ValueError("a denial needs a reason: it is what the model reads instead of the call's result")
    state = await state_of(store, session_id)
    approval = pending_for(state, call_id)
    decision = ev.ApprovalDecided(call_id=approval.call_id, approved=approved, by=by, input=input,
                                  reason=reason if not approved else None, always=always and approved)
    if approval.nested:
        nested = ev.ApprovalDecided(**{**decision.to_data(), "session_id": None})
        await append_external(store, approval.session_id, nested)
        decision = ev.ApprovalDecided(**{**decision.to_data(), "session_id": approval.session_id})
    await append_external(store, session_id, decision)
    return decision


async def say(store: SessionStore, session_id: str, text: str, *, by: str, interrupt: bool = False) -> ev.UserMessage:
    """Add a person's message; it joins the conversation at the next turn boundary."""
    if not text.strip():
        raise ValueError("the message is empty")
    state = await state_of(store, session_id)
    if state.status not in ("running", "waiting"):
        raise NotRunning(f"session {session_id} has ended ({state.status}); it takes no more messages")
    message = ev.UserMessage(text=text, by=by, interrupt=interrupt)
    await append_external(store, session_id, message)
    return message


def person() -> str:
    """Who is deciding at this terminal: the login name, for the log."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = "someone"
    return f"{user}@{socket.gethostname()}"
