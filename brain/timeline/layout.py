"""Where each thing goes on the timeline: a session's folded state laid out as rows of bars on one time axis.

No fold here (brain.events.SessionState is the one) and no HTML (render.py writes it): rows, bars, what their
hover cards say, and the ticks of the axis.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from brain.events import Call, SessionState, ToolCallFinished, Turn
from brain.humanize import format_duration, summarize_input
from brain.sessions import Event, SessionInfo
from brain.timeline.tree import tree_order

#: outcome classes of a tool call, in legend order, with what the legend says about each
CALL_OUTCOMES = {
    "ok": "ok",
    "error": "hand reported an error (is_error)",
    "rpc-error": "call failed (non-OK gRPC status)",
    "cancelled": "cancelled",
    "unfinished": "never finished",
    "not-run": "not run (over a limit)",
}


@dataclass
class Attempt:
    """One dispatch of a call (a woken session may re-issue a call: one attempt per start), or a not-run call."""

    call_id: str
    name: str
    input: object
    turn: int
    number: int
    start: float
    end: float
    outcome: str
    finished: ToolCallFinished | None = None
    note: str = ""


@dataclass
class Lane:
    """One session on the chart: what the store says of it, its folded log, and its span on the time axis."""

    info: SessionInfo
    state: SessionState
    start: float
    end: float
    status: str
    attempts_by_turn: list[list[Attempt]]

    @property
    def model(self) -> str:
        return self.state.model or next((t.model for t in self.state.turns if t.model), "")

    def attempts(self) -> list[Attempt]:
        return [a for turn in self.attempts_by_turn for a in turn]

    def tokens(self) -> dict[str, int]:
        model, hands = self.state.brain_usage(), self.state.hand_usage()
        return {"model": model.total, "model_output": model.output_tokens,
                "cache_read": model.cache_read_input_tokens, "hands": hands.total}


def lane(info: SessionInfo, events: list[Event]) -> Lane:
    state = SessionState.from_events(info.id, sorted(events, key=lambda e: e.seq))
    start = state.earliest_at if state.earliest_at is not None else info.created_at
    end = state.latest_at if state.latest_at is not None else info.updated_at
    # The store's status until the log has its end (a log cut short keeps what the store last knew).
    status = state.status if state.status != "running" else info.status
    return Lane(info, state, start, end, status, [
        [a for call in turn.calls for a in _attempts(call, status, end)] for turn in state.turns
    ])


def _attempts(call: Call, status: str, session_end: float) -> list[Attempt]:
    starts, finished = call.start_times, call.finished
    if not starts:
        if finished is None:
            return []  # asked for, never dispatched (the session stopped first): nothing happened in time
        at = call.finished_at
        return [Attempt(call.call_id, finished.name or call.name, call.input, call.turn, 0, at, at, outcome(finished), finished)]
    out = []
    for i, ts in enumerate(starts):
        done, end, note = None, session_end, ""
        if i < len(starts) - 1:
            # Re-issued by a wake: this attempt's brain died with it in flight.
            end, result, note = starts[i + 1], "unfinished", "abandoned, re-issued after a wake"
        elif finished is not None:
            done, end, result = finished, max(ts, call.finished_at), outcome(finished)
        elif status == "cancelled":
            result, note = "cancelled", "cancelled with the session"
        elif status == "running":
            result, note = "unfinished", "no finish recorded yet (the session is still running)"
        else:
            result, note = "unfinished", "never finished"
        out.append(Attempt(call.call_id, call.name, call.input, call.turn, i + 1, ts, end, result, done, note))
    return out


def outcome(finished: ToolCallFinished) -> str:
    """Which of CALL_OUTCOMES a finished call is."""
    code = finished.status or "OK"
    if code == "NOT_RUN":
        return "not-run"
    if code == "CANCELLED":
        return "cancelled"
    if code != "OK":
        return "rpc-error"
    return "error" if finished.is_error else "ok"


# --- rows of bars -----------------------------------------------------------------------------------


@dataclass
class Card:
    """A bar's hover card: a title, facts (name, value), and excerpts of longer text (input, output, text)."""

    title: str
    facts: list[tuple[str, str]]
    excerpts: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Bar:
    kind: str  # "turn" | "tool-call"
    start: float
    end: float
    status: str
    note: str  # the words beside the bar
    card: Card
    attrs: dict[str, str]


@dataclass
class Label:
    name: str  # in bold
    detail: str
    code: bool = False  # the detail is an id or a count (monospace), not words


@dataclass
class Row:
    kind: str  # "turn" | "calls" | "synthesis" | "session" | "approval" | "person"
    label: Label
    bars: list[Bar]
    depth: int = 0
    lane: Lane | None = None  # for a "session" row: the sub-agent it introduces


@dataclass
class Chart:
    main: Lane
    subs: list[Lane]
    rows: list[Row]
    t0: float  # the start of the time axis
    span: float  # its length in seconds


def lay_out(session: SessionInfo, events: list[Event], children: dict[str, tuple[SessionInfo, list[Event]]]) -> Chart:
    """The session's rows, then each sub-agent's (depth first, each under its parent), on one time axis."""
    main = lane(session, events)
    placed = tree_order(session.id, [info for info, _ in children.values()])
    subs = [(depth, lane(info, children[info.id][1])) for depth, info in placed]
    t0 = min([main.start, *(c.start for _, c in subs)])
    t1 = max([main.end, *(c.end for _, c in subs)])
    kids: dict[str, list[tuple[int, Lane]]] = {}
    for depth, child in subs:
        kids.setdefault(child.info.parent_id or "", []).append((depth, child))
    rows = _rows_with_sub_agents(main, 0, kids)
    return Chart(main, [c for _, c in subs], rows, t0, max(t1 - t0, 1e-3))


def _rows_with_sub_agents(s: Lane, depth: int, kids: dict[str, list[tuple[int, Lane]]]) -> list[Row]:
    """The session's rows with each sub-agent's drawn right under the row of the call that started it."""
    rows = session_rows(s, depth)
    after: dict[int, list[Row]] = {}
    for child_depth, child in kids.get(s.info.id, []):
        block = [Row("session", Label("sub-agent", summarize_input("agent", child.info.task, 60)), [], child_depth, child),
                 *_rows_with_sub_agents(child, child_depth, kids)]
        after.setdefault(_starter_row(rows, child), []).extend(block)
    out: list[Row] = []
    for i, row in enumerate(rows):
        out.append(row)
        out += after.get(i, [])
    return out + after.get(len(rows), [])


def _starter_row(rows: list[Row], child: Lane) -> int:
    """The index of the calls row whose call started the sub-agent: the shortest call that spans the sub-agent's
    session (started before it, ended after it; still running counts), else one running when it began; else the end."""
    def best(fits) -> int | None:
        found = [(bar.end - bar.start, i) for i, row in enumerate(rows) if row.kind == "calls" for bar in row.bars
                 if fits(bar)]
        return min(found)[1] if found else None

    spans = best(lambda bar: bar.start <= child.info.created_at and bar.end >= child.end)
    if spans is not None:
        return spans
    began = best(lambda bar: bar.start <= child.info.created_at <= bar.end)
    return len(rows) if began is None else began


def pack(attempts: list[Attempt]) -> list[list[Attempt]]:
    """Greedy interval partitioning: calls that overlap in time land in different rows, so rows = peak parallelism."""
    rows: list[list[Attempt]] = []
    ends: list[float] = []
    for a in sorted(attempts, key=lambda a: (a.start, a.end, a.call_id)):
        for i, end in enumerate(ends):
            if end <= a.start:
                rows[i].append(a)
                ends[i] = a.end
                break
        else:
            rows.append([a])
            ends.append(a.end)
    return rows


def is_final(s: Lane, turn: Turn, attempts: list[Attempt]) -> bool:
    """Whether the turn is the session's answer: a synthesis, or the last turn of an ended session that called
    nothing (a waiting session's last turn asked for calls that wait for a person: not an answer)."""
    last = len(s.state.turns) - 1
    return turn.synthesis or (turn.index == last and not attempts and s.status not in ("running", "waiting"))


def session_rows(s: Lane, depth: int) -> list[Row]:
    rows: list[Row] = []
    for turn, attempts in zip(s.state.turns, s.attempts_by_turn, strict=True):
        final = is_final(s, turn, attempts)
        rows.append(_turn_row(s, turn, final, depth))
        slowest = None
        done = [a for a in attempts if a.outcome in ("ok", "error", "rpc-error")]
        if len(done) >= 3:
            slowest = max(done, key=lambda a: a.end - a.start)
        ran = [a for a in attempts if a.outcome != "not-run"]
        for packed in pack(ran):
            names = sorted({a.name for a in packed})
            if len(packed) == 1:
                # Named by what it did (the path, the query, the worker's task), not by its tool-use id.
                label = Label(names[0], summarize_input(names[0], packed[0].input, 60))
            else:
                label = Label(", ".join(names), f"{len(packed)} calls", code=True)
            bars = [_call_bar(s, a, a is slowest) for a in packed]
            if len(packed) > 1:  # one row for several calls in turn: each bar says which it is
                for a, bar in zip(packed, bars, strict=True):
                    bar.note = f"{summarize_input(a.name, a.input, 32)} · {bar.note}"
            rows.append(Row("calls", label, bars, depth))
        skipped = [a for a in attempts if a.outcome == "not-run"]
        if skipped:
            # Refused in one go before dispatch, so they share one instant: one row, one note for all of them.
            bars = [_call_bar(s, a, False) for a in skipped]
            reasons = sorted({str((a.finished.reason if a.finished else None) or "a limit") for a in skipped})
            bars[0].note = f"{len(skipped)} not run · over {', '.join(reasons)}"
            for bar in bars[1:]:
                bar.note = ""
            rows.append(Row("calls", Label("not run", f"{len(skipped)} call{'s' if len(skipped) != 1 else ''}", code=True),
                            bars, depth))
        rows += _people_rows(s, turn, depth)
    return rows


def _people_rows(s: Lane, turn: Turn, depth: int) -> list[Row]:
    """What people did around the turn: each approval wait as a bar from request to decision, and the messages
    and interrupts that joined the conversation after it, as marks."""
    rows: list[Row] = []
    for call in turn.calls:
        a = call.approval
        if a is None:
            continue
        d = a.decision
        end = a.decided_at if a.decided_at is not None else s.end
        status = "waiting" if d is None else ("approved" if d.approved else "denied")
        facts = [("hand", a.name), ("call id", a.call_id), ("rule", a.rule), ("decision", status)]
        if d is not None:
            facts += [("by", d.by), ("waited", format_duration(end - a.requested_at, precise=True))]
            if d.reason:
                facts.append(("reason", d.reason))
            if d.always:
                facts.append(("always", f"every later {a.name} call in this session"))
        excerpts = [("input asked", json.dumps(a.input, ensure_ascii=False))]
        if d is not None and d.input is not None:
            excerpts.append(("input run", json.dumps(d.input, ensure_ascii=False)))
        note = status if d is None else f"{status} by {d.by}" + (" · input edited" if d.input is not None else "")
        bar = Bar("approval", a.requested_at, end, status, note, Card(f"approval · {a.name}", facts, excerpts),
                  {"data-call-id": a.call_id, "data-hand": a.name, "data-session": s.info.id})
        rows.append(Row("approval", Label("approval", a.call_id, code=True), [bar], depth))
    said = [m for m in s.state.said if m.after_turn == turn.number]
    if said:
        bars = []
        for m in said:
            kind = "interrupt" if m.interrupt else "message"
            card = Card(f"{kind} · {m.by or 'a person'}", [("by", m.by or "?"), ("joins", f"after turn {turn.number}")],
                        [("text", m.text)])
            bars.append(Bar("person", m.at, m.at, kind, f"{m.by or 'a person'}: {m.text[:60]}", card,
                            {"data-session": s.info.id, "data-turn": str(turn.number)}))
        rows.append(Row("person", Label("person", f"{len(said)} message{'s' if len(said) != 1 else ''}"), bars, depth))
    return rows


def _turn_row(s: Lane, turn: Turn, final: bool, depth: int) -> Row:
    usage = turn.usage
    stop = turn.stop_reason or "?"
    calls = turn.tool_uses() if not turn.synthesis else 0
    if final:
        title = "Synthesis"
        sub = f"after {turn.limit.reason or 'limit'}" if turn.limit is not None else "final answer"
    else:
        title, sub = f"Turn {turn.number}", "model"
    think = format_duration(turn.answered_at - turn.asked_at, precise=True)
    note = f"{think} · {stop}" + (f" · {calls} call{'s' if calls != 1 else ''}" if calls else "")
    facts = [
        ("think time", think),
        ("stop reason", stop),
        ("tokens in", count(usage.input_tokens)),
        ("tokens out", count(usage.output_tokens)),
    ]
    if usage.cache_read_input_tokens or usage.cache_creation_input_tokens:
        facts.append(("cache read / write", f"{count(usage.cache_read_input_tokens)} / {count(usage.cache_creation_input_tokens)}"))
    if calls:
        facts.append(("tool calls asked", str(calls)))
    text = turn.text().strip()
    card = Card(f"{title} · model", facts, [("text", text)] if text else [])
    bar = Bar("turn", turn.asked_at, turn.answered_at, "synthesis" if final else "model", note, card,
              {"data-turn": str(turn.number), "data-session": s.info.id})
    return Row("synthesis" if final else "turn", Label(title, sub), [bar], depth)


def _call_bar(s: Lane, a: Attempt, slowest: bool) -> Bar:
    f = a.finished
    code = f.status if f is not None else ""
    wall = format_duration(a.end - a.start, precise=True)
    facts = [("hand", a.name), ("call id", a.call_id), ("outcome", CALL_OUTCOMES[a.outcome])]
    if a.outcome != "not-run":
        facts.append(("wall time", wall))
    if f is not None and f.duration is not None and a.outcome != "not-run":
        facts.append(("hand time", format_duration(f.duration, precise=True)))
    if code:
        facts.append(("status", code))
    if f is not None:
        facts.append(("is_error", "yes" if f.is_error else "no"))
        usage = f.usage
        if usage.input_tokens or usage.output_tokens:
            facts.append(("hand tokens", f"{count(usage.input_tokens)} in / {count(usage.output_tokens)} out"))
        if usage.nested_tokens:
            facts.append(("tokens below it", count(usage.nested_tokens)))
    if a.number > 1:
        facts.append(("attempt", str(a.number)))
    if a.note:
        facts.append(("note", a.note))
    excerpts = [("input", a.input if isinstance(a.input, str) else json.dumps(a.input, ensure_ascii=False))]
    if f is not None:
        excerpts.append(("output", f.output or ""))
    parts = [wall] if a.outcome != "not-run" else ["not run"]
    if a.outcome == "rpc-error":
        parts.append(code)
    elif a.outcome == "error":
        parts.append("is_error")
    elif a.outcome in ("unfinished", "cancelled"):
        parts.append(a.note or CALL_OUTCOMES[a.outcome])
    if slowest:
        parts.append("slowest")
    attrs = {
        "data-call-id": a.call_id,
        "data-hand": a.name,
        "data-code": code,
        "data-turn": str(a.turn + 1),
        "data-session": s.info.id,
    }
    return Bar("tool-call", a.start, a.end, a.outcome, " · ".join(parts), Card(a.name, facts, excerpts), attrs)


def count(n: int | None) -> str:
    """A token count on the page: exact below 10k, then in thousands."""
    n = int(n or 0)
    if n >= 10_000:
        return f"{n / 1000:.1f}k"
    return str(n)


# --- the time axis ----------------------------------------------------------------------------------

#: tick steps for sessions of minutes or more: whole minutes and their usual fractions, not 50 s
_CLOCK_STEPS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def ticks(span: float, target: int = 8) -> list[float]:
    """Offsets (seconds from the axis start) of about `target` ticks at a step a person reads easily."""
    raw = span / target
    if span >= 120:
        step = next((s for s in _CLOCK_STEPS if s >= raw), 86400 * math.ceil(raw / 86400))
    else:
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]
