"""What a console page shows, from the one fold of the log: brain.timeline's layout, made into template data."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

from brain.humanize import format_duration
from brain.sessions import Event, SessionInfo
from brain.timeline.layout import CALL_OUTCOMES, Chart, Lane, count, is_final, lay_out, ticks

_EXCERPT = 600
#: Statuses a person may need to act on come first in the sessions list.
STATUS_ORDER = {"waiting": 0, "running": 1}


def excerpt(text: Any, limit: int = _EXCERPT) -> str:
    text = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def age(seconds_ago: float) -> str:
    return format_duration(max(0.0, seconds_ago)) + " ago"


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class ListedSession:
    id: str
    status: str
    tenant: str
    task: str
    age: str
    tokens: str
    parent_id: str
    created_at: float


def listed(info: SessionInfo, tenant: str, totals: dict | None, now: float | None = None) -> ListedSession:
    tokens = "—" if not totals else count(int(totals.get("total_tokens") or 0))
    return ListedSession(info.id, info.status, tenant or "—", excerpt(info.task, 160),
                         age((now or time.time()) - info.created_at), tokens, info.parent_id or "", info.created_at)


def order_sessions(sessions: list[ListedSession]) -> list[ListedSession]:
    """Waiting sessions first, then running ones, then the rest; newest first within each."""
    return sorted(sessions, key=lambda s: (STATUS_ORDER.get(s.status, 2), -s.created_at))


@dataclass
class PendingApproval:
    call_id: str
    name: str
    input: str
    nested_session: str


@dataclass
class BarView:
    kind: str
    status: str
    left: float  # percent of the axis
    width: float
    note: str
    note_before: bool
    title: str
    facts: list[tuple[str, str]]
    excerpts: list[tuple[str, str]]
    tip: Markup  # the hover card's content, escaped
    attrs: dict[str, str]
    start_ms: str
    end_ms: str


@dataclass
class RowView:
    kind: str
    depth: int
    name: str
    detail: str
    code: bool
    bars: list[BarView] = field(default_factory=list)
    session: dict[str, Any] | None = None  # a sub-agent row: the child it introduces


@dataclass
class TreeCall:
    call_id: str
    name: str
    outcome: str
    wall: str
    input: str
    output: str


@dataclass
class TreeTurn:
    title: str
    stop: str
    text: str
    calls: list[TreeCall]


def tree(s: Lane) -> list[TreeTurn]:
    """The session's turns, each with the calls it made, their outcome and the start of their output."""
    out = []
    for turn, attempts in zip(s.state.turns, s.attempts_by_turn, strict=True):
        final = is_final(s, turn, attempts)
        calls = [TreeCall(a.call_id, a.name, "running" if a.outcome == "unfinished" and s.status == "running" and
                          a.finished is None else a.outcome, format_duration(a.end - a.start, precise=True),
                          excerpt(a.input, 200), excerpt(a.finished.output or "", 400) if a.finished else "")
                 for a in attempts]
        out.append(TreeTurn("Synthesis" if final else f"Turn {turn.number}", turn.stop_reason or "…",
                            excerpt(turn.text().strip(), 400), calls))
    return out


@dataclass
class SessionPage:
    """Everything the live part of a session page draws; re-made from the log on each update."""

    id: str
    status: str
    task: str
    parent_id: str
    facts: list[tuple[str, str]]
    result: str
    reason: str
    rows: list[RowView]
    ticks: list[tuple[float, str]]
    children: list[dict[str, str]]
    pending: list[PendingApproval]
    tree: list[TreeTurn]
    last_seq: int
    last_ts: float
    legend: dict[str, str] = field(default_factory=lambda: dict(CALL_OUTCOMES))

    @property
    def active(self) -> bool:
        return self.status in ("running", "waiting")


def session_page(info: SessionInfo, events: list[Event], children: dict[str, tuple[SessionInfo, list[Event]]]) -> SessionPage:
    chart = lay_out(info, events, children)
    main = chart.main
    state = main.state
    rows = [_row(r, chart) for r in chart.rows]
    outcome = state.outcome
    pending = []
    for approval in getattr(state, "pending_approvals", lambda: [])():
        pending.append(PendingApproval(approval.call_id, approval.name, excerpt(approval.input, 400),
                                       approval.session_id or ""))
    last = events[-1] if events else None
    return SessionPage(
        id=info.id, status=main.status, task=excerpt(info.task, 600), parent_id=info.parent_id or "",
        facts=_facts(main, chart), result=excerpt(outcome.result or "", 4000) if main.status == "finished" else "",
        reason=str(outcome.reason or "") if main.status in ("failed", "cancelled") else "",
        rows=rows, ticks=[(t / chart.span * 100, _tick(t, chart.span)) for t in ticks(chart.span)],
        children=[{"id": c.info.id, "status": c.status, "task": excerpt(c.info.task, 120)} for c in chart.subs],
        pending=pending, tree=tree(main), last_seq=last.seq if last else 0, last_ts=last.ts if last else 0.0,
    )


def _facts(s: Lane, chart: Chart) -> list[tuple[str, str]]:
    attempts = s.attempts()
    ran = [a for a in attempts if a.outcome != "not-run"]
    in_flight = [a for a in ran if a.outcome == "unfinished" and s.status == "running"]
    errors = [a for a in ran if a.outcome not in ("ok", "unfinished")]
    tokens = s.tokens()
    facts = [
        ("model", s.model or "?"),
        ("turns", str(len(s.state.turns))),
        ("tool calls", str(len(ran))),
        ("in flight", str(len(in_flight))),
        ("errors", str(len(errors))),
        ("tokens", f"{count(tokens['model'] + tokens['hands'])} (model {count(tokens['model'])} · hands {count(tokens['hands'])})"),
        ("wall time", format_duration(s.end - s.start, precise=True)),
        ("started", when(s.start)),
    ]
    if s.state.outcome.cut_short:
        facts.append(("cut short", str(s.state.outcome.reason or "a limit")))
    if chart.subs:
        facts.append(("sub-agents", str(len(chart.subs))))
    return facts


def _row(row, chart: Chart) -> RowView:
    view = RowView(row.kind, row.depth, row.label.name, row.label.detail, row.label.code)
    if row.lane is not None:
        c = row.lane
        view.session = {"id": c.info.id, "status": c.status, "task": excerpt(c.info.task, 160),
                        "summary": f"{len(c.state.turns)} turns · {len(c.attempts())} calls · "
                                   f"{format_duration(c.end - c.start, precise=True)}"}
        return view
    for b in row.bars:
        start, end = b.start - chart.t0, b.end - chart.t0
        left = start / chart.span * 100
        width = max(0.0, end - start) / chart.span * 100
        excerpts = [(k, excerpt(v)) for k, v in b.card.excerpts]
        view.bars.append(BarView(
            b.kind, b.status, round(left, 3), round(width, 3), b.note, left + width > 82, b.card.title,
            b.card.facts, excerpts, tip(b.card.title, tuple(b.card.facts), tuple(excerpts)), b.attrs,
            f"{start * 1000:.1f}", f"{end * 1000:.1f}",
        ))
    return view


@functools.lru_cache(maxsize=8192)
def tip(title: str, facts: tuple[tuple[str, str], ...], excerpts: tuple[tuple[str, str], ...]) -> Markup:
    """A bar's hover card as escaped HTML. Kept: a live page is redrawn from the whole log each time, and a finished
    call's card is the same in every drawing (escaping every card again was a third of a drawing's cost)."""
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    xs = "".join(f'<div class="x"><b>{escape(k)}</b><pre>{escape(v or "(empty)")}</pre></div>' for k, v in excerpts)
    return Markup(f"<b>{escape(title)}</b><dl>{dl}</dl>{xs}")


def _tick(t: float, span: float) -> str:
    if span < 2:
        return f"{t * 1000:.0f} ms"
    if span < 120:
        return f"{t:.1f} s" if span < 10 else f"{t:.0f} s"
    minutes, seconds = divmod(round(t), 60)
    return f"{minutes} m {seconds:02d} s" if minutes else f"{seconds} s"
