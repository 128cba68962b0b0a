"""Session logs built by hand for tests, from brain.events' own payloads: one method per event, a clock to place them.

    log = SessionLog().start("Fix the tests").model([("c1", "fs_read", {"path": "a"})]).started("c1", "fs_read")
    log.finished("c1", "fs_read", output="...", at=2.0).model(text="Done.").finish("Done.")

Each method appends one Event and returns the log. Times: at= puts the event that many seconds after t0, dt= after
the event before (each method has a default dt, so a log built without times still moves forward). The events
carry exactly what the brain's loop writes, because they are built by the same payload classes.
"""

from __future__ import annotations

from typing import Any

from brain import events as ev
from brain.events import HandUsage, ModelUsage, SessionState
from brain.sessions import Event, SessionInfo, SessionStore

SID = "5e55101d00000000000000000000abcd"
T0 = 1_700_000_000.0


class SessionLog:
    """The events of one session. turn_usage: what each model response reports unless told (input, output)."""

    def __init__(self, session_id: str = SID, *, t0: float = T0, parent_id: str | None = None,
                 turn_usage: tuple[int, int] = (100, 20)):
        self.session_id, self.t0, self.parent_id, self.turn_usage = session_id, t0, parent_id, turn_usage
        self.now = t0
        self.task, self.model_id = "", ""
        self.events: list[Event] = []

    # --- one method per event type ---------------------------------------------------------------------

    def add(self, payload: ev.Payload, *, at: float | None = None, dt: float = 0.01) -> SessionLog:
        """Append any payload at t0 + at, or dt after the event before."""
        self.now = self.t0 + at if at is not None else self.now + dt
        self.events.append(Event(self.session_id, len(self.events) + 1, payload.TYPE, payload.to_data(), self.now))
        return self

    def start(self, task: str = "Survey the twelve modules.", *, model: str = "claude-test-1",
              config: dict[str, Any] | None = None, at: float | None = None, dt: float = 0.0) -> SessionLog:
        self.task, self.model_id = task, model
        return self.add(ev.SessionStarted(task=task, config=config or {}, system="s", tools=[], model=model,
                                          parent_id=self.parent_id), at=at, dt=dt)

    def model(self, calls: list[tuple[str, str, Any]] = (), text: str = "", *, stop: str | None = None,
              usage: tuple[int, int] | None = None, at: float | None = None, dt: float = 1.5) -> SessionLog:
        """A model response: its text, then a tool_use block per (call id, hand, input); stop defaults to what
        the content implies (tool_use with calls, end_turn without)."""
        content = [{"type": "text", "text": text}] if text else []
        content += [{"type": "tool_use", "id": cid, "name": name, "input": inp} for cid, name, inp in calls]
        tokens_in, tokens_out = usage or self.turn_usage
        return self.add(ev.ModelResponse(
            id=f"msg_{len(self.events):03d}", model=self.model_id, content=content,
            stop_reason=stop or ("tool_use" if calls else "end_turn"),
            usage=ModelUsage(input_tokens=tokens_in, output_tokens=tokens_out),
        ), at=at, dt=dt)

    def started(self, call_id: str, name: str = "worker", *, attempt: int = 1, at: float | None = None,
                dt: float = 0.01) -> SessionLog:
        return self.add(ev.ToolCallStarted(call_id=call_id, name=name, input={}, attempt=attempt), at=at, dt=dt)

    def finished(self, call_id: str, name: str = "worker", *, output: str = "done", is_error: bool = False,
                 status: str = "OK", reason: str | None = None, duration: float = 0.5, usage: tuple[int, int] = (0, 0),
                 at: float | None = None, dt: float = 0.5) -> SessionLog:
        return self.add(ev.ToolCallFinished(
            call_id=call_id, name=name, output=output, is_error=is_error, status=status, reason=reason,
            duration=duration, usage=HandUsage(input_tokens=usage[0], output_tokens=usage[1]),
        ), at=at, dt=dt)

    def not_run(self, call_id: str, name: str = "worker", *, reason: str = "max_tool_calls",
                at: float | None = None, dt: float = 0.0) -> SessionLog:
        """A call the brain refused before dispatch (over a limit), as the loop records it."""
        return self.finished(call_id, name, output=f"not run: over {reason}", is_error=True, status=ev.NOT_RUN,
                             reason=reason, duration=0.0, at=at, dt=dt)

    def limit(self, reason: str, *, at: float | None = None, dt: float = 0.0, **facts: Any) -> SessionLog:
        return self.add(ev.LimitReached(reason=reason, **facts), at=at, dt=dt)

    def finish(self, result: str = "All done.", *, cut_short: bool = False, reason: str | None = None,
               at: float | None = None, dt: float = 0.0) -> SessionLog:
        return self.add(ev.SessionFinished(result=result, cut_short=cut_short, reason=reason), at=at, dt=dt)

    def fail(self, reason: str, *, at: float | None = None, dt: float = 0.0) -> SessionLog:
        return self.add(ev.SessionFailed(reason=reason), at=at, dt=dt)

    def cancel(self, reason: str, *, at: float | None = None, dt: float = 0.0) -> SessionLog:
        return self.add(ev.SessionCancelled(reason=reason), at=at, dt=dt)

    def approval(self, call_id: str, name: str = "fs_write", *, input: Any = None, rule: str | None = None,
                 session_id: str | None = None, at: float | None = None, dt: float = 0.0) -> SessionLog:
        """A call waiting for a person (session_id: a nested session's request relayed to this one)."""
        return self.add(ev.ApprovalRequested(call_id=call_id, name=name, input={} if input is None else input,
                                             rule=rule or name, session_id=session_id), at=at, dt=dt)

    def decided(self, call_id: str, *, approved: bool = True, by: str = "ana@laptop", input: Any = None,
                reason: str | None = None, always: bool = False, session_id: str | None = None,
                at: float | None = None, dt: float = 2.0) -> SessionLog:
        return self.add(ev.ApprovalDecided(call_id=call_id, approved=approved, by=by, input=input, reason=reason,
                                           always=always, session_id=session_id), at=at, dt=dt)

    def waiting(self, *call_ids: str, at: float | None = None, dt: float = 0.0) -> SessionLog:
        return self.add(ev.SessionWaiting(calls=list(call_ids)), at=at, dt=dt)

    def resumed(self, by: str = "host:1:brain", *, at: float | None = None, dt: float = 0.1) -> SessionLog:
        return self.add(ev.SessionResumed(by=by), at=at, dt=dt)

    def said(self, text: str, *, by: str = "ana@laptop", interrupt: bool = False, at: float | None = None,
             dt: float = 0.5) -> SessionLog:
        return self.add(ev.UserMessage(text=text, by=by, interrupt=interrupt), at=at, dt=dt)

    def interrupted(self, *call_ids: str, by: str = "ana@laptop", at: float | None = None, dt: float = 0.0) -> SessionLog:
        return self.add(ev.CallsInterrupted(call_ids=list(call_ids), by=by), at=at, dt=dt)

    # --- what else a test needs of it ------------------------------------------------------------------

    def state(self) -> SessionState:
        return SessionState.from_events(self.session_id, self.events)

    def info(self) -> SessionInfo:
        """What a store would list for this session (its status from the log)."""
        ts = [e.ts for e in self.events] or [self.t0]
        return SessionInfo(self.session_id, self.task, self.state().status, min(ts), max(ts), len(self.events),
                           self.parent_id)

    async def append_to(self, store: SessionStore) -> None:
        """Write the events to a store, under this log's session id (one the store created); the store stamps the times."""
        for event in self.events:
            await store.append(self.session_id, event.seq, event.type, event.data)
