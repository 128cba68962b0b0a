"""The session timeline: one self-contained HTML page drawing a session's turns and tool calls as bars on a time axis.

Stable hooks for tools and tests: every bar has data-kind ("turn" or "tool-call"), data-row (its row in the
chart, unique across the page), data-status (ok | error | rpc-error | cancelled | unfinished | not-run for
calls; model | synthesis for turns), data-start-ms and data-end-ms (from the start of the page's time axis);
tool calls add data-call-id, data-hand and data-code (the gRPC status name, "" when none was recorded).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from brain import events as ev
from brain.sessions import TERMINAL_STATUS, Event, SessionInfo, SessionNotFound, SessionStore

#: outcome classes of a tool call, in legend order, with what the legend says about each
CALL_OUTCOMES = {
    "ok": "ok",
    "error": "hand reported an error (is_error)",
    "rpc-error": "call failed (non-OK gRPC status)",
    "cancelled": "cancelled",
    "unfinished": "never finished",
    "not-run": "not run (over a limit)",
}
_INPUT_EXCERPT = 400
_OUTPUT_EXCERPT = 600
_TEXT_EXCERPT = 600
_TASK_EXCERPT = 600
_RESULT_EXCERPT = 4000
#: How many levels of nested agents a timeline draws under its session (the agent hand's own max_depth
#: is 3 by default); a tree deeper than this is cut there rather than drawn without end.
MAX_TREE_DEPTH = 8


# --- the fold: events -> turns and call attempts ----------------------------------------------------


@dataclass
class _Attempt:
    """One dispatch of a call (a woken session may re-issue a call: one attempt per start), or a not-run call."""

    call_id: str
    name: str
    input: Any
    turn: int
    number: int
    start: float
    end: float
    outcome: str
    finished: dict[str, Any] | None = None
    note: str = ""


@dataclass
class _Turn:
    index: int  # 0-based
    start: float  # the event before the model_response: the model's think time starts there
    end: float
    data: dict[str, Any]
    synthesis: bool  # the answer to a request for a final synthesis after a limit
    limit: str | None = None  # the limit that led to this synthesis
    attempts: list[_Attempt] = field(default_factory=list)

    @property
    def call_count(self) -> int:
        return sum(1 for b in self.data.get("content", []) if b.get("type") == "tool_use")


@dataclass
class _Session:
    info: SessionInfo
    events: list[Event]
    start: float
    end: float
    status: str
    model: str
    turns: list[_Turn]
    outcome: dict[str, Any]
    limits: list[str]

    def tokens(self) -> dict[str, int]:
        model = {k: 0 for k in ev.USAGE_KEYS}
        for turn in self.turns:
            for k in ev.USAGE_KEYS:
                model[k] += int((turn.data.get("usage") or {}).get(k) or 0)
        hands = {"input_tokens": 0, "output_tokens": 0, "nested_tokens": 0}
        for turn in self.turns:
            for a in turn.attempts:
                usage = (a.finished or {}).get("usage") or {}
                for k in hands:
                    hands[k] += int(usage.get(k) or 0)
        return {"model": sum(model.values()), "model_output": model["output_tokens"],
                "cache_read": model["cache_read_input_tokens"], "hands": sum(hands.values())}

    def attempts(self) -> list[_Attempt]:
        return [a for t in self.turns for a in t.attempts]


def _fold(info: SessionInfo, events: list[Event]) -> _Session:
    events = sorted(events, key=lambda e: e.seq)
    # min/max, not first/last: after a wake on another machine, seq order and clock order may disagree a little.
    start = min([e.ts for e in events], default=info.created_at)
    end = max([e.ts for e in events], default=info.updated_at)
    status, model, outcome = info.status, "", {}
    turns: list[_Turn] = []
    owner: dict[str, int] = {}  # call id -> turn index
    starts: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    finishes: dict[str, tuple[float, dict[str, Any]]] = {}
    limits: list[str] = []
    pending_limit: str | None = None
    previous_ts = start
    for event in events:
        d = event.data
        if event.type == ev.SESSION_STARTED:
            model = d.get("model") or ""
        elif event.type == ev.MODEL_RESPONSE:
            turn = _Turn(len(turns), previous_ts, event.ts, d, synthesis=pending_limit is not None, limit=pending_limit)
            if not turn.synthesis and d.get("stop_reason") == "tool_use":
                for block in d.get("content", []):
                    if block.get("type") == "tool_use" and block.get("id"):
                        owner[block["id"]] = turn.index
            turns.append(turn)
            model = model or d.get("model") or ""
        elif event.type == ev.TOOL_CALL_STARTED:
            starts.setdefault(d.get("call_id", ""), []).append((event.ts, d))
        elif event.type == ev.TOOL_CALL_FINISHED:
            finishes[d.get("call_id", "")] = (event.ts, d)
        elif event.type == ev.LIMIT_REACHED:
            pending_limit = d.get("reason") or "limit"
            limits.append(pending_limit)
        elif event.type in TERMINAL_STATUS:
            status, outcome = TERMINAL_STATUS[event.type], d
        previous_ts = event.ts

    for turn in turns:
        for block in turn.data.get("content", []):
            call_id = block.get("id")
            if block.get("type") != "tool_use" or owner.get(call_id) != turn.index:
                continue
            turn.attempts += _attempts(call_id, block, turn.index, starts.get(call_id, []), finishes.get(call_id), status, end)
    return _Session(info, events, start, end, status, model, turns, outcome, limits)


def _attempts(call_id, block, turn, starts, finish, status, session_end) -> list[_Attempt]:
    name, tool_input = block.get("name", "?"), block.get("input")
    if not starts:
        if finish is None:
            return []  # asked for, never dispatched (the session stopped first): nothing happened in time
        ts, d = finish
        return [_Attempt(call_id, d.get("name", name), tool_input, turn, 0, ts, ts, _outcome(d), d)]
    out = []
    for i, (ts, _) in enumerate(starts):
        last = i == len(starts) - 1
        if not last:
            # Re-issued by a wake: this attempt's brain died with it in flight.
            out.append(_Attempt(call_id, name, tool_input, turn, i + 1, ts, starts[i + 1][0], "unfinished",
                                note="abandoned, re-issued after a wake"))
        elif finish is not None:
            out.append(_Attempt(call_id, name, tool_input, turn, i + 1, ts, max(ts, finish[0]), _outcome(finish[1]), finish[1]))
        elif status == "cancelled":
            out.append(_Attempt(call_id, name, tool_input, turn, i + 1, ts, session_end, "cancelled",
                                note="cancelled with the session"))
        elif status == "running":
            out.append(_Attempt(call_id, name, tool_input, turn, i + 1, ts, session_end, "unfinished",
                                note="no finish recorded yet (the session is still running)"))
        else:
            out.append(_Attempt(call_id, name, tool_input, turn, i + 1, ts, session_end, "unfinished",
                                note="never finished"))
    return out


def _outcome(finished: dict[str, Any]) -> str:
    code = finished.get("status") or "OK"
    if code == ev.NOT_RUN:
        return "not-run"
    if code == "CANCELLED":
        return "cancelled"
    if code != "OK":
        return "rpc-error"
    return "error" if finished.get("is_error") else "ok"


# --- layout: rows of bars ---------------------------------------------------------------------------


@dataclass
class _Bar:
    kind: str  # "turn" | "tool-call"
    start: float
    end: float
    status: str
    note: str
    tip: str  # escaped HTML of the hover card
    attrs: dict[str, str]


@dataclass
class _Row:
    kind: str  # "turn" | "calls" | "synthesis" | "session"
    label: str  # escaped HTML
    bars: list[_Bar]
    depth: int = 0
    session: _Session | None = None  # for a "session" row: the sub-agent it introduces


def _pack(attempts: list[_Attempt]) -> list[list[_Attempt]]:
    """Greedy interval partitioning: calls that overlap in time land in different rows, so rows = peak parallelism."""
    rows: list[list[_Attempt]] = []
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


def _session_rows(s: _Session, depth: int) -> list[_Row]:
    rows: list[_Row] = []
    last = len(s.turns) - 1
    for turn in s.turns:
        final = turn.synthesis or (turn.index == last and not turn.attempts and s.status != "running")
        rows.append(_turn_row(s, turn, final, depth))
        slowest = None
        done = [a for a in turn.attempts if a.outcome in ("ok", "error", "rpc-error")]
        if len(done) >= 3:
            slowest = max(done, key=lambda a: a.end - a.start)
        ran = [a for a in turn.attempts if a.outcome != "not-run"]
        for packed in _pack(ran):
            names = sorted({a.name for a in packed})
            if len(packed) == 1:
                label = f'<b>{_e(names[0])}</b><code>{_e(packed[0].call_id)}</code>'
            else:
                label = f'<b>{_e(", ".join(names))}</b><code>{len(packed)} calls</code>'
            rows.append(_Row("calls", label, [_call_bar(s, a, a is slowest) for a in packed], depth))
        skipped = [a for a in turn.attempts if a.outcome == "not-run"]
        if skipped:
            # Refused in one go before dispatch, so they share one instant: one row, one note for all of them.
            bars = [_call_bar(s, a, False) for a in skipped]
            reasons = sorted({str((a.finished or {}).get("reason") or "a limit") for a in skipped})
            bars[0].note = f"{len(skipped)} not run · over {', '.join(reasons)}"
            for bar in bars[1:]:
                bar.note = ""
            label = f'<b>not run</b><code>{len(skipped)} call{"s" if len(skipped) != 1 else ""}</code>'
            rows.append(_Row("calls", label, bars, depth))
    return rows


def _turn_row(s: _Session, turn: _Turn, final: bool, depth: int) -> _Row:
    d = turn.data
    usage = d.get("usage") or {}
    stop = d.get("stop_reason") or "?"
    calls = turn.call_count if not turn.synthesis else 0
    if final:
        title = "Synthesis"
        sub = f"after {turn.limit}" if turn.limit else "final answer"
    else:
        title, sub = f"Turn {turn.index + 1}", "model"
    note = f"{_dur(turn.end - turn.start)} · {stop}" + (f" · {calls} call{'s' if calls != 1 else ''}" if calls else "")
    facts = [
        ("think time", _dur(turn.end - turn.start)),
        ("stop reason", stop),
        ("tokens in", _num(usage.get("input_tokens"))),
        ("tokens out", _num(usage.get("output_tokens"))),
    ]
    if usage.get("cache_read_input_tokens") or usage.get("cache_creation_input_tokens"):
        facts.append(("cache read / write", f"{_num(usage.get('cache_read_input_tokens'))} / {_num(usage.get('cache_creation_input_tokens'))}"))
    if calls:
        facts.append(("tool calls asked", str(calls)))
    text = "".join(b.get("text", "") for b in d.get("content", []) if b.get("type") == "text").strip()
    tip = _card(f"{title} · model", facts, [("text", text)] if text else [])
    bar = _Bar("turn", turn.start, turn.end, "synthesis" if final else "model", note, tip,
               {"data-turn": str(turn.index + 1), "data-session": s.info.id})
    return _Row("synthesis" if final else "turn", f"<b>{_e(title)}</b><span>{_e(sub)}</span>", [bar], depth)


def _call_bar(s: _Session, a: _Attempt, slowest: bool) -> _Bar:
    f = a.finished or {}
    code = f.get("status") or ""
    facts = [("hand", a.name), ("call id", a.call_id), ("outcome", CALL_OUTCOMES[a.outcome])]
    if a.outcome != "not-run":
        facts.append(("wall time", _dur(a.end - a.start)))
    if "duration" in f and a.outcome != "not-run":
        facts.append(("hand time", _dur(float(f["duration"]))))
    if code:
        facts.append(("status", code))
    if a.finished is not None:
        facts.append(("is_error", "yes" if f.get("is_error") else "no"))
    usage = f.get("usage") or {}
    if usage.get("input_tokens") or usage.get("output_tokens"):
        facts.append(("hand tokens", f"{_num(usage.get('input_tokens'))} in / {_num(usage.get('output_tokens'))} out"))
    if usage.get("nested_tokens"):
        facts.append(("tokens below it", _num(usage.get("nested_tokens"))))
    if a.number > 1:
        facts.append(("attempt", str(a.number)))
    if a.note:
        facts.append(("note", a.note))
    excerpts = [("input", a.input if isinstance(a.input, str) else json.dumps(a.input, ensure_ascii=False))]
    if a.finished is not None:
        excerpts.append(("output", f.get("output") or ""))
    parts = [_dur(a.end - a.start)] if a.outcome != "not-run" else ["not run"]
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
    return _Bar("tool-call", a.start, a.end, a.outcome, " · ".join(parts), _card(a.name, facts, excerpts), attrs)


# --- HTML -------------------------------------------------------------------------------------------


def render_timeline(
    session: SessionInfo,
    events: list[Event],
    *,
    children: dict[str, tuple[SessionInfo, list[Event]]] | None = None,
) -> str:
    """The session's timeline as one self-contained HTML page (inline CSS, no scripts, no fetches).

    children: the sessions under this one (nested agents, at any depth: each hangs under its parent_id),
    drawn as nested lanes on the same time axis, each under its parent's rows, MAX_TREE_DEPTH levels deep.
    """
    main = _fold(session, events)
    given = children or {}
    placed = tree_order(session.id, [info for info, _ in given.values()])
    subs = [(depth, _fold(info, given[info.id][1])) for depth, info in placed]
    t0 = min([main.start, *(c.start for _, c in subs)])
    t1 = max([main.end, *(c.end for _, c in subs)])
    span = max(t1 - t0, 1e-3)

    rows = _session_rows(main, 0)
    for depth, child in subs:
        rows.append(_Row("session", f"<b>sub-agent</b><code>{_e(child.info.id)}</code>", [], depth, child))
        rows += _session_rows(child, depth)

    body = [
        _header(main, [c for _, c in subs]),
        _legend(),
        '<main class="chart">',
        _axis(span),
        '<div class="grid" aria-hidden="true">' + "".join(
            f'<i style="left:{_pct(t, span)}"></i>' for t in _ticks(span)) + "</div>",
    ]
    for index, row in enumerate(rows):
        body.append(_row_html(index, row, t0, span))
    if not rows:
        body.append('<p class="empty">No turns recorded yet.</p>')
    body.append("</main>")
    title = f"brainhands session {session.id}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _row_html(index: int, row: _Row, t0: float, span: float) -> str:
    if row.session is not None:
        c = row.session
        return (
            f'<div class="row session" data-kind="session-row" data-row="{index}" data-session="{_e(c.info.id)}"'
            f' data-parent="{_e(c.info.parent_id or "")}" data-depth="{row.depth}">'
            f'<div class="lab d{row.depth}">{row.label}</div><div class="track sub">'
            f'<span class="subtask">{_e(_excerpt(c.info.task, 160))}</span>'
            f'<span class="badge {_e(c.status)}">{_e(c.status)}</span>'
            f'<span class="muted">{len(c.turns)} turns · {len(c.attempts())} calls · {_dur(c.end - c.start)}</span>'
            "</div></div>"
        )
    bars = "".join(_bar_html(index, b, t0, span) for b in row.bars)
    return (
        f'<div class="row {row.kind}" data-kind="{row.kind}-row" data-row="{index}">'
        f'<div class="lab d{row.depth}">{row.label}</div><div class="track">{bars}</div></div>'
    )


def _bar_html(row: int, b: _Bar, t0: float, span: float) -> str:
    start, end = b.start - t0, b.end - t0
    left = start / span * 100
    width = max(0.0, end - start) / span * 100
    attrs = {
        "data-kind": b.kind,
        "data-row": str(row),
        "data-status": b.status,
        "data-start-ms": f"{start * 1000:.1f}",
        "data-end-ms": f"{end * 1000:.1f}",
        **b.attrs,
    }
    attr_html = "".join(f' {k}="{_e(v)}"' for k, v in attrs.items())
    side = " r" if left > 55 else ""  # the hover card opens towards the side with room
    bar = (f'<div class="bar {b.kind} s-{b.status}"{attr_html} style="left:{left:.3f}%;width:{width:.3f}%">'
           f'<div class="tip{side}">{b.tip}</div></div>')
    if not b.note:
        return bar
    # The note sits after the bar, or before it when the bar ends near the right edge.
    if left + width > 82:
        note = f'<span class="note before" style="right:{100 - left:.3f}%">{_e(b.note)}</span>'
    else:
        note = f'<span class="note" style="left:{left + width:.3f}%">{_e(b.note)}</span>'
    return bar + note


def _header(s: _Session, subs: list[_Session]) -> str:
    attempts = s.attempts()
    ran = [a for a in attempts if a.outcome != "not-run"]
    errors = [a for a in ran if a.outcome != "ok"]
    not_run = len(attempts) - len(ran)
    tokens = s.tokens()
    cut = s.outcome.get("cut_short")
    reason = s.outcome.get("reason")
    facts = [
        ("status", f'<span class="badge {_e(s.status)}">{_e(s.status)}</span>'),
        ("model", f"<code>{_e(s.model or '?')}</code>"),
        ("turns", str(len(s.turns))),
        ("tool calls", str(len(ran)) + (f' <span class="muted">+{not_run} not run</span>' if not_run else "")),
        ("errors", f'<span class="{"bad" if errors else ""}">{len(errors)}</span>'),
        ("tokens", f'{_num(tokens["model"] + tokens["hands"])} <span class="muted">model {_num(tokens["model"])}'
                   f' · hands {_num(tokens["hands"])}</span>'),
        ("wall time", _dur(s.end - s.start)),
        ("cut short", f'<span class="bad">yes · {_e(reason or "limit")}</span>' if cut else "no"),
        ("started", _e(datetime.fromtimestamp(s.start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))),
    ]
    if subs:
        facts.append(("sub-agents", str(len(subs))))
    outcome = ""
    if s.status == "finished" and s.outcome.get("result"):
        outcome = f'<details><summary>Result</summary><pre>{_e(_excerpt(s.outcome["result"], _RESULT_EXCERPT))}</pre></details>'
    elif s.status in ("failed", "cancelled") and reason:
        outcome = f'<p class="reason bad">{_e(s.status)}: {_e(_excerpt(str(reason), _RESULT_EXCERPT))}</p>'
    parent = f' <span class="muted">sub-agent of <code>{_e(s.info.parent_id)}</code></span>' if s.info.parent_id else ""
    return (
        '<header class="head">'
        f'<h1>Session <code>{_e(s.info.id)}</code>{parent}</h1>'
        f'<p class="task">{_e(_excerpt(s.info.task, _TASK_EXCERPT))}</p>'
        '<dl class="facts">' + "".join(f"<div><dt>{_e(k)}</dt><dd>{v}</dd></div>" for k, v in facts) + "</dl>"
        f"{outcome}</header>"
    )


def _legend() -> str:
    items = [('<i class="sw s-model"></i>', "model turn (think time)"), ('<i class="sw s-synthesis"></i>', "synthesis")]
    items += [(f'<i class="sw s-{k}"></i>', v) for k, v in CALL_OUTCOMES.items()]
    return ('<div class="legend">' + "".join(f"<span>{sw}{_e(text)}</span>" for sw, text in items)
            + '<span class="muted">hover a bar for details</span></div>')


def _axis(span: float) -> str:
    ticks = _ticks(span)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else span
    labels = "".join(f'<span style="left:{_pct(t, span)}">{_e(_tick(t, step, span))}</span>' for t in ticks)
    return f'<div class="row axis" data-kind="axis"><div class="lab"></div><div class="track">{labels}</div></div>'


#: tick steps for sessions of minutes or more: whole minutes and their usual fractions, not 50 s
_CLOCK_STEPS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _ticks(span: float, target: int = 8) -> list[float]:
    raw = span / target
    if span >= 120:
        step = next((s for s in _CLOCK_STEPS if s >= raw), 86400 * math.ceil(raw / 86400))
    else:
        magnitude = 10 ** math.floor(math.log10(raw))
        step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


def _tick(t: float, step: float, span: float) -> str:
    if span < 2 or step < 0.1:
        return f"{t * 1000:.0f} ms"
    if step < 1:
        return f"{t:.1f} s"
    if span < 120:
        return f"{t:.0f} s"
    minutes, seconds = divmod(round(t), 60)
    if not minutes:
        return f"{seconds} s"
    return f"{minutes} m {seconds:02d} s" if seconds else f"{minutes} m"


def _pct(t: float, span: float) -> str:
    return f"{t / span * 100:.3f}%"


def _card(title: str, facts: list[tuple[str, str]], excerpts: list[tuple[str, str]]) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts)
    limits = {"input": _INPUT_EXCERPT, "output": _OUTPUT_EXCERPT, "text": _TEXT_EXCERPT}
    pre = "".join(f'<div class="x"><b>{_e(k)}</b><pre>{_e(_excerpt(v, limits.get(k, 400)) or "(empty)")}</pre></div>'
                  for k, v in excerpts)
    return f"<b>{_e(title)}</b><dl>{rows}</dl>{pre}"


def _excerpt(text: str, limit: int) -> str:
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _dur(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    return f"{int(seconds // 60)} m {seconds % 60:04.1f} s"


def _num(n: Any) -> str:
    n = int(n or 0)
    if n >= 10_000:
        return f"{n / 1000:.1f}k"
    return str(n)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


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


async def load_timeline(store: SessionStore, session_id: str, *, children_scan: int = 1000) -> str:
    """Read a session and the whole tree of sub-agent sessions under it (among the newest children_scan) and render it."""
    info = await store.get_session(session_id)
    if info is None:
        raise SessionNotFound(f"no session {session_id!r}")
    children = {}
    for _, other in await session_tree(store, session_id, scan=children_scan):
        children[other.id] = (other, await store.events(other.id))
    return render_timeline(info, await store.events(session_id), children=children)


_CSS = """
:root{--lab:250px;--ok:#16a34a;--err:#d97706;--rpc:#dc2626;--can:#6b7280;--model:#6366f1;--syn:#9333ea;
--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#fff;--soft:#f8fafc;
--mono:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace}
*{box-sizing:border-box}
body{margin:0;padding:16px 20px 40px;font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:var(--bg)}
code,pre{font-family:var(--mono);font-size:12px}
h1{font-size:16px;margin:0 0 4px;font-weight:600}
h1 code{font-size:15px;background:var(--soft);padding:1px 6px;border-radius:4px;border:1px solid var(--line)}
.muted{color:var(--muted);font-weight:400}
.bad{color:var(--rpc);font-weight:600}
.task{margin:0 0 10px;white-space:pre-wrap;max-height:5.6em;overflow:auto;color:#374151}
.facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0 0 8px}
.facts div{display:flex;flex-direction:column}
.facts dt{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
.facts dd{margin:0;font-weight:600;font-size:14px}
.facts dd .muted{font-size:12px}
.badge{display:inline-block;padding:0 8px;border-radius:9px;font-size:12px;font-weight:600;color:#fff;background:var(--can)}
.badge.finished{background:var(--ok)}.badge.failed{background:var(--rpc)}.badge.running{background:var(--model)}
details{margin:4px 0 0}summary{cursor:pointer;color:var(--muted)}
details pre{white-space:pre-wrap;background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px;
max-height:16em;overflow:auto;margin:6px 0 0}
.reason{margin:4px 0 0}
.legend{display:flex;flex-wrap:wrap;gap:4px 16px;padding:8px 0;margin:8px 0 6px;border-top:1px solid var(--line);
border-bottom:1px solid var(--line);font-size:12px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.sw{display:inline-block;width:22px;height:10px;border-radius:3px}
.chart{position:relative}
.row{display:grid;grid-template-columns:var(--lab) 1fr;align-items:center;min-height:20px;position:relative}
.row:hover{background:#f1f5f9}
.row.turn,.row.synthesis{margin-top:6px}
.row.turn{border-top:1px solid var(--line)}
.lab{display:flex;gap:8px;align-items:baseline;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:0 10px 0 2px}
.lab b{font-weight:600}.lab span{color:var(--muted)}
.lab code{color:var(--muted);font-size:11px;overflow:hidden;text-overflow:ellipsis}
.row.calls .lab{padding-left:18px}.row.calls .lab b{font-weight:500}
.lab.d1{padding-left:26px}.row.calls .lab.d1{padding-left:42px}
.lab.d2{padding-left:42px}.row.calls .lab.d2{padding-left:58px}
.lab.d3{padding-left:58px}.row.calls .lab.d3{padding-left:74px}
.lab.d4,.lab.d5,.lab.d6,.lab.d7,.lab.d8{padding-left:74px}.row.calls .lab.d4,.row.calls .lab.d5,
.row.calls .lab.d6,.row.calls .lab.d7,.row.calls .lab.d8{padding-left:90px}
.track{position:relative;height:20px}
.axis{position:sticky;top:0;z-index:5;background:var(--bg);border-bottom:1px solid #cbd5e1;min-height:22px}
.axis .track span{position:absolute;top:3px;transform:translateX(-50%);font-size:11px;color:var(--muted);
font-family:var(--mono);white-space:nowrap}
.axis .track span:first-child{transform:none}
.grid{position:absolute;left:var(--lab);right:0;top:0;bottom:0;pointer-events:none}
.grid i{position:absolute;top:22px;bottom:0;border-left:1px dashed #e2e8f0}
.bar{position:absolute;top:3px;height:14px;min-width:3px;border-radius:3px;cursor:default}
.bar.turn{height:12px;top:4px;opacity:.9}
.bar:hover{outline:2px solid #0f172a;z-index:20}
.s-model{background:var(--model)}.s-synthesis{background:var(--syn)}
.s-ok{background:var(--ok)}.s-error{background:var(--err)}.s-rpc-error{background:var(--rpc)}
.s-cancelled{background:repeating-linear-gradient(135deg,#9ca3af 0 3px,#d1d5db 3px 6px)}
.s-unfinished{background:repeating-linear-gradient(135deg,var(--rpc) 0 3px,#fecaca 3px 7px);
box-shadow:inset 0 0 0 1px var(--rpc)}
.s-not-run{background:#cbd5e1;box-shadow:inset 0 0 0 1px #94a3b8}
.note{position:absolute;top:3px;padding:0 6px;font-size:11px;color:var(--muted);white-space:nowrap;pointer-events:none}
.note.before{text-align:right}
.tip{display:none;position:absolute;top:18px;left:0;z-index:30;width:max-content;max-width:520px;min-width:260px;
background:#0f172a;color:#f8fafc;border-radius:6px;padding:8px 10px;box-shadow:0 6px 24px rgba(15,23,42,.35);
font-size:12px;line-height:1.35;white-space:normal}
.tip.r{left:auto;right:0}
.bar:hover .tip{display:block}
.tip dl{display:grid;grid-template-columns:auto 1fr;gap:1px 10px;margin:6px 0}
.tip dt{color:#94a3b8}.tip dd{margin:0;font-family:var(--mono);word-break:break-all}
.tip .x b{color:#94a3b8;font-weight:500}
.tip pre{margin:2px 0 6px;white-space:pre-wrap;word-break:break-word;max-height:12em;overflow:hidden;
background:#1e293b;border-radius:4px;padding:5px 7px;color:#e2e8f0}
.row.session{margin-top:8px;border-top:1px dashed #cbd5e1;background:var(--soft)}
.track.sub{display:flex;gap:10px;align-items:center;height:22px;overflow:hidden;white-space:nowrap}
.subtask{overflow:hidden;text-overflow:ellipsis}
.empty{color:var(--muted);padding:12px 0}
""".strip()
