"""The session log's events: a typed payload for each (what the loop writes), and the one fold of a log into a
SessionState that the loop drives from and every view (live tree, timeline, `sessions show`) renders from.

Payloads are dataclasses, not pydantic models: the log is written by this code and read back by it, so there is
nothing to validate, only to read tolerantly (a key an older log lacks takes its default); and the fold parses every
event on each wake, where a slotted dataclass built from a dict is the cheapest typed record Python has. They are
values: the fold hands the same objects to every view, and nothing changes them once built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from brain import prompts
from brain.sessions import TERMINAL_STATUS, Event

SESSION_STARTED = "session_started"
MODEL_RESPONSE = "model_response"
TOOL_CALL_STARTED = "tool_call_started"
TOOL_CALL_FINISHED = "tool_call_finished"
LIMIT_REACHED = "limit_reached"
SESSION_FINISHED = "session_finished"
SESSION_FAILED = "session_failed"
SESSION_CANCELLED = "session_cancelled"
APPROVAL_REQUESTED = "approval_requested"
APPROVAL_DECIDED = "approval_decided"
SESSION_WAITING = "session_waiting"
SESSION_RESUMED = "session_resumed"
USER_MESSAGE = "user_message"
CALLS_INTERRUPTED = "calls_interrupted"

#: events a person (or a nested session) appends to a log while a brain may be driving it: the driver folds them in
#: when its own append finds their seq taken, instead of taking the log as another brain's.
EXTERNAL = frozenset({APPROVAL_REQUESTED, APPROVAL_DECIDED, USER_MESSAGE})

#: the output of a call a person cancelled with `sessions say --interrupt`
CANCELLED_BY_A_PERSON = "cancelled by a person"

#: status of a call the brain decided not to run (over a limit); it has a finished event and no started one.
NOT_RUN = "NOT_RUN"


def _record(*, kw_only: bool) -> Any:
    """A slotted dataclass that also keeps its fields as class attributes: the fold reads them for every event,
    and dataclasses.fields() each time would cost more than the rest of the fold."""

    def make(cls: type) -> type:
        cls = dataclass(kw_only=kw_only, slots=True)(cls)
        cls._FIELDS = fields(cls)
        cls._NAMES = tuple(f.name for f in cls._FIELDS)
        cls._KNOWN = frozenset(cls._NAMES)
        cls._PARSED = tuple((f.name, f.metadata["parse"]) for f in cls._FIELDS if "parse" in f.metadata)
        return cls

    return make


# --- usage: the counters are the fields, so a new one is one line here --------------------------------------


def _counter(*, tokens: bool = True, always: bool = False) -> Any:
    """A usage counter. tokens: it counts tokens (summed into budgets and totals); always: the log writes it
    even when it is 0 (the others appear only when they are not)."""
    return field(default=0, metadata={"tokens": tokens, "always": always})


@_record(kw_only=False)
class _Usage:
    """Counters read from the log, from an API object with the same attribute names, summed, and written back."""

    @classmethod
    def from_data(cls, data: dict[str, Any] | None) -> Self:
        if not data:
            return cls()
        return cls(*[int(data.get(name) or 0) for name in cls._NAMES])

    @classmethod
    def from_counts(cls, source: Any) -> Self:
        """From an object carrying the counters as attributes: the Messages API's usage, the hands' Usage message."""
        return cls(*[int(getattr(source, name, None) or 0) for name in cls._NAMES])

    @classmethod
    def sum(cls, items: Iterable[Self]) -> Self:
        items = list(items)
        return cls(*[sum(getattr(item, name) for item in items) for name in cls._NAMES])

    def __add__(self, other: Self) -> Self:
        return type(self).sum((self, other))

    def to_data(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in self._FIELDS if f.metadata["always"] or getattr(self, f.name)}

    def tokens(self) -> dict[str, int]:
        """Each token counter by name (the totals a session reports)."""
        return {f.name: getattr(self, f.name) for f in self._FIELDS if f.metadata["tokens"]}

    @property
    def total(self) -> int:
        """All the tokens: what counts against a token budget."""
        return sum(self.tokens().values())


@_record(kw_only=False)
class ModelUsage(_Usage):
    """What one model response cost, as the Messages API counts it."""

    input_tokens: int = _counter(always=True)
    output_tokens: int = _counter(always=True)
    cache_creation_input_tokens: int = _counter(always=True)
    cache_read_input_tokens: int = _counter(always=True)
    #: Anthropic server tools the model ran itself (the API's usage.server_tool_use): tool calls, not tokens
    web_search_requests: int = _counter(tokens=False)
    web_fetch_requests: int = _counter(tokens=False)

    @classmethod
    def from_counts(cls, source: Any) -> ModelUsage:
        """From the Messages API's usage, whose server tool counts sit one level down, in server_tool_use."""
        server = getattr(source, "server_tool_use", None)
        values = [int(getattr(source, name, None) or getattr(server, name, None) or 0) for name in cls._NAMES]
        return cls(*values)

    @property
    def server_tool_requests(self) -> int:
        return self.web_search_requests + self.web_fetch_requests

    @property
    def prompt(self) -> int:
        """Tokens the model read: the input, cached or not."""
        return self.total - self.output_tokens


@_record(kw_only=False)
class HandUsage(_Usage):
    """What a hand reported spending for one call (the hands' Usage message)."""

    input_tokens: int = _counter(always=True)
    output_tokens: int = _counter(always=True)
    #: tool calls a worker agent made for this session: they count against its max_tool_calls
    tool_calls: int = _counter(tokens=False)
    #: tokens a worker agent's own workers spent below it: they count against this session's token budget
    nested_tokens: int = _counter()


# --- payloads: one class per event type -----------------------------------------------------------------------


def _omit_none(**metadata: Any) -> dict[str, Any]:
    return {"omit_none": True, **metadata}


@_record(kw_only=True)
class Payload:
    """An event's data. Every field has a default, so a log written before a field existed still reads."""

    TYPE: ClassVar[str] = ""

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready dict the log stores (a field marked omit_none is left out while it is None)."""
        out: dict[str, Any] = {}
        for f in self._FIELDS:
            value = getattr(self, f.name)
            if value is None and f.metadata.get("omit_none"):
                continue
            out[f.name] = value.to_data() if isinstance(value, _Usage) else value
        return out

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Self:
        known = cls._KNOWN
        kwargs = {k: v for k, v in data.items() if v is not None and k in known}
        for name, parse in cls._PARSED:
            if name in kwargs:
                kwargs[name] = parse(kwargs[name])
        return cls(**kwargs)


@_record(kw_only=True)
class SessionStarted(Payload):
    TYPE = SESSION_STARTED

    task: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the limits it runs under (BrainConfig.as_dict)
    system: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    parent_id: str | None = None
    #: {trace_id, span_id} of the session's first OpenTelemetry trace, when tracing was on (a wake links to it)
    trace: dict[str, str] | None = field(default=None, metadata=_omit_none())


@_record(kw_only=True)
class ModelResponse(Payload):
    TYPE = MODEL_RESPONSE

    id: str = ""
    model: str = ""
    content: list[dict[str, Any]] = field(default_factory=list)  # the blocks as the API returned them
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: ModelUsage = field(default_factory=ModelUsage, metadata={"parse": ModelUsage.from_data})
    #: the seq of the last event the request was built from: a person's message logged after it joins the next turn
    seen: int | None = field(default=None, metadata=_omit_none())

    @classmethod
    def from_message(cls, message: Any) -> ModelResponse:
        """From an anthropic Message (or anything shaped like one)."""
        return cls(
            id=message.id,
            model=message.model,
            content=[b.model_dump(mode="json", exclude_none=True) for b in message.content],
            stop_reason=message.stop_reason,
            stop_sequence=message.stop_sequence,
            usage=ModelUsage.from_counts(message.usage),
        )


@_record(kw_only=True)
class ToolCallStarted(Payload):
    TYPE = TOOL_CALL_STARTED

    call_id: str = ""
    name: str = ""
    input: Any = None
    attempt: int = 1  # more than 1 when a wake re-issues a call that was started and not finished


@_record(kw_only=True)
class ToolCallFinished(Payload):
    TYPE = TOOL_CALL_FINISHED

    call_id: str = ""
    name: str = ""
    output: str = ""
    is_error: bool = False
    status: str = ""  # "OK", the gRPC status name, or NOT_RUN; "" in a log that did not record it
    reason: str | None = field(default=None, metadata=_omit_none())  # why a NOT_RUN call was not run
    duration: float | None = field(default=None, metadata=_omit_none(parse=float))  # seconds the hand took
    usage: HandUsage = field(default_factory=HandUsage, metadata={"parse": HandUsage.from_data})


@_record(kw_only=True)
class LimitReached(Payload):
    """A limit stopped the work: the next turn is a synthesis of what is known."""

    TYPE = LIMIT_REACHED

    reason: str = ""  # token_budget | max_turns | max_tool_calls | context_window
    used: int | None = field(default=None, metadata=_omit_none())
    limit: int | None = field(default=None, metadata=_omit_none())
    not_run: int | None = field(default=None, metadata=_omit_none())  # calls of the last turn refused
    trimmed: bool | None = field(default=None, metadata=_omit_none())  # the next prompt is a digest of the log
    digest_chars: int | None = field(default=None, metadata=_omit_none())


@_record(kw_only=True)
class Citations:
    """The [n] citations of a finished session's answer, checked against the URLs its hands returned or fetched
    (its sub-sessions' included). Each entry is {"n": int, "url": str | None}; an unknown one also says why."""

    checked: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Citations:
        return cls(checked=list(data.get("checked") or []), unknown=list(data.get("unknown") or []))

    def to_data(self) -> dict[str, Any]:
        return {"checked": self.checked, "unknown": self.unknown}


@_record(kw_only=True)
class SessionEnded(Payload):
    """How a session ended; SessionFinished, SessionFailed and SessionCancelled write the keys each one has."""

    KEYS: ClassVar[tuple[str, ...]] = ("result", "cut_short", "reason", "totals", "citations")

    result: str = ""  # the answer (finished only)
    cut_short: bool = False  # a limit ended the work early (finished only)
    reason: str | None = None  # why it was cut short, failed or was cancelled
    totals: dict[str, Any] = field(default_factory=dict)  # SessionState.totals() when it ended
    #: the answer's [n] citations and whether each names a URL the session saw (finished only; None: none cited)
    citations: Citations | None = field(default=None, metadata={"parse": Citations.from_data})

    @property
    def status(self) -> str:
        return TERMINAL_STATUS.get(self.TYPE, "running")

    def to_data(self) -> dict[str, Any]:
        out = {key: getattr(self, key) for key in self.KEYS}
        if "citations" in out:
            if out["citations"] is None:
                del out["citations"]
            else:
                out["citations"] = out["citations"].to_data()
        return out


class SessionFinished(SessionEnded):
    TYPE = SESSION_FINISHED


class SessionFailed(SessionEnded):
    TYPE = SESSION_FAILED
    KEYS = ("reason", "totals")


class SessionCancelled(SessionEnded):
    TYPE = SESSION_CANCELLED
    KEYS = ("reason", "totals")


@_record(kw_only=True)
class ApprovalRequested(Payload):
    """A call to a hand matching an approval rule: it does not run until a person decides.

    session_id is set when the request was raised in a nested session (a worker agent's) and relayed to this,
    its root session, so the person sees and decides it here; call_id is then the nested session's call."""

    TYPE = APPROVAL_REQUESTED

    call_id: str = ""
    name: str = ""
    input: Any = None
    rule: str = ""  # the approve: glob the hand's name matched
    session_id: str | None = field(default=None, metadata=_omit_none())


@_record(kw_only=True)
class ApprovalDecided(Payload):
    """A person's decision on an approval request (the event's time is when)."""

    TYPE = APPROVAL_DECIDED

    call_id: str = ""
    approved: bool = False
    by: str = ""  # who decided: the user at the terminal, the API caller, ...
    input: Any = field(default=None, metadata=_omit_none())  # the input to run instead of the model's (an edit)
    reason: str | None = field(default=None, metadata=_omit_none())  # why it was denied (reaches the model)
    always: bool = False  # approve every later call to this hand in this session without asking
    session_id: str | None = field(default=None, metadata=_omit_none())  # the nested session the call is in


@_record(kw_only=True)
class SessionWaiting(Payload):
    """Nothing can go on until a person decides: the brain lets the session go (no lease) and may exit."""

    TYPE = SESSION_WAITING

    calls: list[str] = field(default_factory=list)  # the call ids waiting for a decision


@_record(kw_only=True)
class SessionResumed(Payload):
    """A brain took a waiting session up again once its requests were decided."""

    TYPE = SESSION_RESUMED

    by: str = ""  # the brain (host:pid:id)


@_record(kw_only=True)
class UserMessage(Payload):
    """A person's message to the orchestrator: it joins the conversation at the next turn boundary."""

    TYPE = USER_MESSAGE

    text: str = ""
    by: str = ""
    interrupt: bool = False  # cancel the calls in flight first


@_record(kw_only=True)
class CallsInterrupted(Payload):
    """The brain cancelled the calls in flight because a person interrupted (their results say so)."""

    TYPE = CALLS_INTERRUPTED

    call_ids: list[str] = field(default_factory=list)
    by: str = ""


PAYLOADS: dict[str, type[Payload]] = {
    cls.TYPE: cls
    for cls in (SessionStarted, ModelResponse, ToolCallStarted, ToolCallFinished, LimitReached,
                SessionFinished, SessionFailed, SessionCancelled, ApprovalRequested, ApprovalDecided,
                SessionWaiting, SessionResumed, UserMessage, CallsInterrupted)
}


def payload(event: Event) -> Payload | None:
    """The event's data, typed; None for an event type this fold does not know."""
    cls = PAYLOADS.get(event.type)
    return None if cls is None else cls.from_data(event.data)


# --- the fold ------------------------------------------------------------------------------------------------


@dataclass
class Approval:
    """An approval request and, once a person decided, the decision."""

    call_id: str
    name: str
    input: Any
    rule: str
    session_id: str | None = None  # a nested session's request relayed here; None: this session's own call
    requested_at: float = 0.0
    decision: ApprovalDecided | None = None
    decided_at: float | None = None

    @property
    def pending(self) -> bool:
        return self.decision is None

    @property
    def nested(self) -> bool:
        return self.session_id is not None


@dataclass
class Message:
    """A person's message, and where it joins the conversation: after the turn of index after_turn - 1."""

    text: str
    by: str
    interrupt: bool
    after_turn: int
    at: float
    seq: int = 0


@dataclass
class Call:
    """One tool_use block of a response and what became of it."""

    call_id: str
    name: str
    input: Any
    turn: int = 0  # index of the turn that asked for it
    start_times: list[float] = field(default_factory=list)  # when each dispatch began (a wake may re-issue it)
    finished: ToolCallFinished | None = None
    finished_at: float | None = None
    approval: Approval | None = None  # set when the call needed a person's approval

    @property
    def waiting(self) -> bool:
        """Waiting for a person's decision."""
        return self.finished is None and self.approval is not None and self.approval.pending

    @property
    def run_input(self) -> Any:
        """The input the call runs with: a person's edit, else the model's."""
        d = self.approval.decision if self.approval is not None else None
        return d.input if d is not None and d.input is not None else self.input

    @property
    def starts(self) -> int:
        """How many times a dispatch began (more than one after a wake re-issued it)."""
        return len(self.start_times)

    @property
    def started_at(self) -> float | None:
        """When the latest dispatch began."""
        return self.start_times[-1] if self.start_times else None

    @property
    def not_run(self) -> bool:
        return self.finished is not None and self.finished.status == NOT_RUN

    @property
    def ran(self) -> bool:
        return self.starts > 0 or (self.finished is not None and not self.not_run)

    @property
    def usage(self) -> HandUsage:
        return self.finished.usage if self.finished is not None else HandUsage()

    def result_block(self) -> dict[str, Any]:
        assert self.finished is not None, "a tool_result needs a finished call"
        return {
            "type": "tool_result",
            "tool_use_id": self.call_id,
            "content": self.finished.output or "(empty output)",
            "is_error": bool(self.finished.is_error),
        }


@dataclass
class Turn:
    """One model response: its content as the API returned it, and the tool calls it asked for."""

    index: int  # 0-based
    content: list[dict[str, Any]]
    stop_reason: str | None
    usage: ModelUsage
    calls: list[Call]
    synthesis: bool  # the answer to a request for a final synthesis (after a limit)
    asked_at: float = 0.0  # when the brain sent the request: the time of the event before the response
    answered_at: float = 0.0
    model: str = ""  # the model that answered, as the API named it
    limit: LimitReached | None = None  # for a synthesis: the limit that asked for it

    @property
    def number(self) -> int:
        return self.index + 1

    @property
    def duration(self) -> float:
        """The model's think time."""
        return max(0.0, self.answered_at - self.asked_at)

    def text(self) -> str:
        return "".join(b.get("text", "") for b in self.content if b.get("type") == "text")

    def tool_uses(self) -> int:
        """tool_use blocks in the content (asked for, whether or not they became calls)."""
        return sum(1 for b in self.content if b.get("type") == "tool_use")

    def truncated(self) -> bool:
        return self.stop_reason in ("max_tokens", "model_context_window_exceeded")

    def sent_content(self) -> list[dict[str, Any]]:
        """The assistant message to send back: a cut-off tool_use is dropped (it was never run)."""
        blocks = [b for b in self.content if not (b.get("type") == "text" and not b.get("text"))]
        if self.truncated() or self.synthesis:
            blocks = [b for b in blocks if b.get("type") != "tool_use"]
        return blocks or [{"type": "text", "text": "(no output)"}]


@dataclass
class SessionState:
    """A session as its log tells it, and nothing else: what the loop needs to go on, and when each thing happened."""

    session_id: str = ""
    seq: int = 0
    task: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    system: str = ""
    tools: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""  # the model the session started with
    parent_id: str | None = None
    turns: list[Turn] = field(default_factory=list)
    limit: LimitReached | None = None  # the last limit reached: the next turn is a synthesis
    limit_after_turn: int = 0  # how many turns there were when the limit was reached
    status: str = "running"
    outcome: SessionEnded = field(default_factory=SessionEnded)
    calls: dict[str, Call] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)  # call id -> request (nested ones included)
    always: set[str] = field(default_factory=set)  # hands a person approved for the rest of the session
    said: list[Message] = field(default_factory=list)  # people's messages, in order
    interrupt_pending: bool = False  # a person interrupted and the brain has not cancelled the calls yet
    interrupts: list[CallsInterrupted] = field(default_factory=list)
    started_at: float | None = None  # the session_started event's time
    last_at: float | None = None  # the time of the event folded last
    earliest_at: float | None = None  # the earliest and latest event times: after a wake on another machine,
    latest_at: float | None = None  # seq order and clock order may disagree a little
    ended_at: float | None = None
    citations: Citations | None = None  # the answer's citations, checked when the session finished

    @classmethod
    def from_events(cls, session_id: str, events: Iterable[Event]) -> SessionState:
        state = cls(session_id)
        for event in events:
            state.apply(event)
        return state

    def apply(self, event: Event) -> None:
        """Fold one event in (events come in seq order); an event type the fold does not know only moves seq."""
        self.seq = event.seq
        self.session_id = self.session_id or event.session_id
        ts, previous = event.ts, self.last_at
        self.last_at = ts
        if self.earliest_at is None or ts < self.earliest_at:
            self.earliest_at = ts
        if self.latest_at is None or ts > self.latest_at:
            self.latest_at = ts
        p = payload(event)
        # The most frequent first: a fan-out's log is mostly starts and finishes.
        if isinstance(p, ToolCallStarted):
            if (call := self.calls.get(p.call_id)) is not None:
                call.start_times.append(ts)
        elif isinstance(p, ToolCallFinished):
            if (call := self.calls.get(p.call_id)) is not None:
                call.finished, call.finished_at = p, ts
        elif isinstance(p, ModelResponse):
            synthesis = self.limit is not None
            turn = Turn(len(self.turns), p.content, p.stop_reason, p.usage, [], synthesis,
                        asked_at=ts if previous is None else previous, answered_at=ts, model=p.model,
                        limit=self.limit if synthesis else None)
            if p.stop_reason == "tool_use" and not synthesis:
                for block in p.content:
                    if block.get("type") == "tool_use" and block.get("id"):
                        call = Call(block["id"], block.get("name", "?"), block.get("input", {}), turn.index)
                        turn.calls.append(call)
                        self.calls[call.call_id] = call
            self.turns.append(turn)
            if p.seen is not None:  # said while the model was thinking: the model answers it on the next turn
                for m in self.said:
                    if m.after_turn == turn.index and m.seq > p.seen:
                        m.after_turn += 1
        elif isinstance(p, SessionStarted):
            self.task, self.config, self.system, self.tools = p.task, p.config, p.system, p.tools
            self.model, self.parent_id, self.started_at = p.model, p.parent_id, ts
        elif isinstance(p, LimitReached):
            self.limit = p
            self.limit_after_turn = len(self.turns)
        elif isinstance(p, SessionEnded):
            self.status, self.outcome, self.ended_at, self.citations = p.status, p, ts, p.citations
        elif isinstance(p, ApprovalRequested):
            approval = Approval(p.call_id, p.name, p.input, p.rule, p.session_id, requested_at=ts)
            self.approvals[p.call_id] = approval
            if p.session_id is None and (call := self.calls.get(p.call_id)) is not None:
                call.approval = approval
        elif isinstance(p, ApprovalDecided):
            if (approval := self.approvals.get(p.call_id)) is not None and approval.pending:
                approval.decision, approval.decided_at = p, ts
                if p.approved and p.always and approval.session_id is None:
                    self.always.add(approval.name)
        elif isinstance(p, UserMessage):
            self.said.append(Message(p.text, p.by, p.interrupt, len(self.turns), ts, event.seq))
            self.interrupt_pending = self.interrupt_pending or p.interrupt
        elif isinstance(p, CallsInterrupted):
            self.interrupts.append(p)
            self.interrupt_pending = False
        elif isinstance(p, SessionWaiting):
            if self.status == "running":
                self.status = "waiting"
        elif isinstance(p, SessionResumed):
            if self.status == "waiting":
                self.status = "running"

    # --- derived views --------------------------------------------------------------------------

    def pending_approvals(self) -> list[Approval]:
        """Requests no one has decided yet, this session's own and those relayed from nested sessions."""
        return [a for a in self.approvals.values() if a.pending]

    def unanswered(self) -> list[Message]:
        """People's messages the model has not seen yet (no turn came after them)."""
        return [m for m in self.said if m.after_turn == len(self.turns)]

    @property
    def last_turn(self) -> Turn | None:
        return self.turns[-1] if self.turns else None

    def model_turns(self) -> int:
        return sum(1 for t in self.turns if not t.synthesis)

    def calls_run(self, turns: list[Turn] | None = None) -> int:
        """Tool calls run, counting those a worker agent made for this session (reported in its usage)."""
        turns = self.turns if turns is None else turns
        # The server tools the model ran itself count as tool calls too.
        return sum(1 + c.usage.tool_calls for t in turns for c in t.calls if c.ran) + sum(
            t.usage.server_tool_requests for t in turns)

    def brain_usage(self, turns: list[Turn] | None = None) -> ModelUsage:
        return ModelUsage.sum(t.usage for t in (self.turns if turns is None else turns))

    def hand_usage(self, turns: list[Turn] | None = None) -> HandUsage:
        """Tokens the hands reported; nested_tokens: what a worker agent's own workers spent below it."""
        return HandUsage.sum(c.usage for t in (self.turns if turns is None else turns) for c in t.calls)

    def tokens_used(self, turns: list[Turn] | None = None) -> int:
        """The budgeted total: every token the model processed plus what the hands reported."""
        return self.brain_usage(turns).total + self.hand_usage(turns).total

    def totals(self) -> dict[str, Any]:
        brain = self.brain_usage()
        out = {
            "turns": len(self.turns),
            "tool_calls": self.calls_run(),
            "model_usage": brain.tokens(),
            "hand_usage": self.hand_usage().tokens(),
            "total_tokens": self.tokens_used(),
        }
        if brain.server_tool_requests:
            out["server_tool_use"] = {"web_search_requests": brain.web_search_requests,
                                      "web_fetch_requests": brain.web_fetch_requests}
        return out

    def elapsed(self, now: float) -> float:
        """Seconds from the start to the end, or to now while the session runs."""
        if self.started_at is None:
            return 0.0
        return max(0.0, (self.ended_at if self.ended_at is not None else now) - self.started_at)

    def final_text(self) -> str:
        """The last response's text, joined to the responses it continued (after max_tokens or pause_turn)."""
        parts: list[str] = []
        for i in range(len(self.turns) - 1, -1, -1):
            parts.append(self.turns[i].text())
            if i == 0 or self.turns[i - 1].stop_reason not in ("max_tokens", "pause_turn") or self.turns[i - 1].calls:
                break
        return "".join(reversed(parts)).strip()

    # --- the conversation -----------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The Messages-API conversation for the next request, rebuilt from the log alone."""
        if self.limit is not None and self.limit.trimmed:
            return [self._digest(60_000 if self.limit.digest_chars is None else self.limit.digest_chars)]
        follow_ups: dict[int, list[dict[str, Any]]] = {}  # turn index -> user blocks after it (-1: the task)
        for i, turn in enumerate(self.turns):
            blocks = [c.result_block() for c in turn.calls]
            if turn.stop_reason == "max_tokens":
                dropped = any(b.get("type") == "tool_use" for b in turn.content)
                blocks.append(_text(prompts.CONTINUE_AFTER_MAX_TOKENS.format(dropped=prompts.DROPPED_TOOL_CALL if dropped else "")))
            follow_ups[i] = blocks
        for m in self.said:
            follow_ups.setdefault(m.after_turn - 1, []).append(_text(prompts.PERSON_SAYS.format(text=m.text)))
        if self.limit is not None:
            what = prompts.LIMIT_NAMES.get(self.limit.reason, "limit")
            follow_ups.setdefault(self.limit_after_turn - 1, []).append(_text(prompts.SYNTHESIZE_AT_LIMIT.format(what=what)))
        messages = [{"role": "user", "content": [_text(self.task), *follow_ups.get(-1, [])]}]
        for i, turn in enumerate(self.turns):
            messages.append({"role": "assistant", "content": turn.sent_content()})
            if follow_ups.get(i):
                messages.append({"role": "user", "content": follow_ups[i]})
        return messages

    def _digest(self, max_chars: int) -> dict[str, Any]:
        """One user message standing in for a conversation too long for the context window."""
        per_call = max(200, max_chars // max(1, len(self.calls)))
        lines = [prompts.DIGEST_INTRO, "", "Task:", self.task, "", "Tool results:"]
        used, omitted = 0, 0
        for call in self.calls.values():
            if call.finished is None or call.not_run:
                continue
            output = call.finished.output or ""
            if len(output) > per_call:
                output = output[:per_call] + f" [... {len(output) - per_call} more characters cut]"
            entry = f"- {call.name}({json.dumps(call.input)[:300]}){' [error]' if call.finished.is_error else ''}: {output}"
            if used + len(entry) > max_chars:
                omitted += 1
                continue
            used += len(entry)
            lines.append(entry)
        if omitted:
            lines.append(f"({omitted} more results did not fit and are left out)")
        lines += ["", prompts.SYNTHESIZE_AT_LIMIT.format(what=prompts.LIMIT_NAMES["context_window"])]
        return {"role": "user", "content": [_text("\n".join(lines))]}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}
