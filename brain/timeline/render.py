"""The timeline as one self-contained HTML page: the laid-out chart written as elements, escaped, with the CSS inline."""

from __future__ import annotations

import functools
import html
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from brain.humanize import format_duration
from brain.sessions import Event, SessionInfo
from brain.timeline.layout import CALL_OUTCOMES, Bar, Card, Lane, Row, count, lay_out, ticks

_INPUT_EXCERPT = 400
_OUTPUT_EXCERPT = 600
_TEXT_EXCERPT = 600
_TASK_EXCERPT = 600
_RESULT_EXCERPT = 4000


@functools.cache
def stylesheet() -> str:
    """The page's CSS (timeline.css, shipped with the package)."""
    return resources.files(__package__).joinpath("timeline.css").read_text(encoding="utf-8").strip()


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
    chart = lay_out(session, events, children or {})
    span = chart.span
    body = [
        _header(chart.main, chart.subs),
        _legend(),
        '<main class="chart">',
        _axis(span),
        '<div class="grid" aria-hidden="true">' + "".join(
            f'<i style="left:{_pct(t, span)}"></i>' for t in ticks(span)) + "</div>",
    ]
    for index, row in enumerate(chart.rows):
        body.append(_row_html(index, row, chart.t0, span))
    if not chart.rows:
        body.append('<p class="empty">No turns recorded yet.</p>')
    body.append("</main>")
    title = f"brainhands session {session.id}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{stylesheet()}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _row_html(index: int, row: Row, t0: float, span: float) -> str:
    label = row.label
    tag = "code" if label.code else "span"
    label_html = f"<b>{_e(label.name)}</b><{tag}>{_e(label.detail)}</{tag}>"
    if row.lane is not None:
        c = row.lane
        return (
            f'<div class="row session" data-kind="session-row" data-row="{index}" data-session="{_e(c.info.id)}"'
            f' data-parent="{_e(c.info.parent_id or "")}" data-depth="{row.depth}">'
            f'<div class="lab d{row.depth}">{label_html}</div><div class="track sub">'
            f'<span class="subtask">{_e(_excerpt(c.info.task, 160))}</span>'
            f'<span class="badge {_e(c.status)}">{_e(c.status)}</span>'
            f'<span class="muted">{len(c.state.turns)} turns · {len(c.attempts())} calls · '
            f'{format_duration(c.end - c.start, precise=True)}</span>'
            "</div></div>"
        )
    bars = "".join(_bar_html(index, b, t0, span) for b in row.bars)
    return (
        f'<div class="row {row.kind}" data-kind="{row.kind}-row" data-row="{index}">'
        f'<div class="lab d{row.depth}">{label_html}</div><div class="track">{bars}</div></div>'
    )


def _bar_html(row: int, b: Bar, t0: float, span: float) -> str:
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
           f'<div class="tip{side}">{_card(b.card)}</div></div>')
    if not b.note:
        return bar
    # The note sits after the bar, or before it when the bar ends near the right edge.
    if left + width > 82:
        note = f'<span class="note before" style="right:{100 - left:.3f}%">{_e(b.note)}</span>'
    else:
        note = f'<span class="note" style="left:{left + width:.3f}%">{_e(b.note)}</span>'
    return bar + note


def _header(s: Lane, subs: list[Lane]) -> str:
    attempts = s.attempts()
    ran = [a for a in attempts if a.outcome != "not-run"]
    errors = [a for a in ran if a.outcome != "ok"]
    not_run = len(attempts) - len(ran)
    tokens = s.tokens()
    outcome = s.state.outcome
    reason = outcome.reason
    facts = [
        ("status", f'<span class="badge {_e(s.status)}">{_e(s.status)}</span>'),
        ("model", f"<code>{_e(s.model or '?')}</code>"),
        ("turns", str(len(s.state.turns))),
        ("tool calls", str(len(ran)) + (f' <span class="muted">+{not_run} not run</span>' if not_run else "")),
        ("errors", f'<span class="{"bad" if errors else ""}">{len(errors)}</span>'),
        ("tokens", f'{count(tokens["model"] + tokens["hands"])} <span class="muted">model {count(tokens["model"])}'
                   f' · hands {count(tokens["hands"])}</span>'),
        ("wall time", format_duration(s.end - s.start, precise=True)),
        ("cut short", f'<span class="bad">yes · {_e(reason or "limit")}</span>' if outcome.cut_short else "no"),
        ("started", _e(datetime.fromtimestamp(s.start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))),
    ]
    if subs:
        facts.append(("sub-agents", str(len(subs))))
    cited = s.state.citations
    if cited is not None:
        facts.append(("citations", f"{len(cited.checked)} checked"
                      + (f' · <span class="bad">{len(cited.unknown)} unknown</span>' if cited.unknown else "")))
    server = s.state.brain_usage()
    if server.server_tool_requests:
        facts.append(("server tools", f"{server.web_search_requests} searches · {server.web_fetch_requests} fetches"))
    result = ""
    if s.status == "finished" and outcome.result:
        result = f'<details><summary>Result</summary><pre>{_e(_excerpt(outcome.result, _RESULT_EXCERPT))}</pre></details>'
    elif s.status in ("failed", "cancelled") and reason:
        result = f'<p class="reason bad">{_e(s.status)}: {_e(_excerpt(str(reason), _RESULT_EXCERPT))}</p>'
    result += _citations_html(cited)
    parent = f' <span class="muted">sub-agent of <code>{_e(s.info.parent_id)}</code></span>' if s.info.parent_id else ""
    return (
        '<header class="head">'
        f'<h1>Session <code>{_e(s.info.id)}</code>{parent}</h1>'
        f'<p class="task">{_e(_excerpt(s.info.task, _TASK_EXCERPT))}</p>'
        '<dl class="facts">' + "".join(f"<div><dt>{_e(k)}</dt><dd>{v}</dd></div>" for k, v in facts) + "</dl>"
        f"{result}</header>"
    )


def _citations_html(cited) -> str:
    """The answer's citations as checked: each [n], its URL, and for those the session never saw, why."""
    if cited is None:
        return ""

    def item(entry, ok: bool) -> str:
        n = f"[{entry['n']}]" if entry.get("n") is not None else "(API citation)"
        why = "" if ok else f' <span class="bad">unknown: {_e(entry.get("why", ""))}</span>'
        return f"<li><code>{_e(n)}</code> {_e(entry.get('url') or '(no URL)')}{why}</li>"

    items = [item(e, True) for e in cited.checked] + [item(e, False) for e in cited.unknown]
    summary = f"Citations: {len(cited.checked)} checked, {len(cited.unknown)} unknown"
    return f'<details class="citations"{" open" if cited.unknown else ""}><summary>{summary}</summary><ul>{"".join(items)}</ul></details>'


def _legend() -> str:
    items = [('<i class="sw s-model"></i>', "model turn (think time)"), ('<i class="sw s-synthesis"></i>', "synthesis")]
    items += [(f'<i class="sw s-{k}"></i>', v) for k, v in CALL_OUTCOMES.items()]
    return ('<div class="legend">' + "".join(f"<span>{sw}{_e(text)}</span>" for sw, text in items)
            + '<span class="muted">hover a bar for details</span></div>')


def _axis(span: float) -> str:
    at = ticks(span)
    step = at[1] - at[0] if len(at) > 1 else span
    labels = "".join(f'<span style="left:{_pct(t, span)}">{_e(_tick(t, step, span))}</span>' for t in at)
    return f'<div class="row axis" data-kind="axis"><div class="lab"></div><div class="track">{labels}</div></div>'


def _tick(t: float, step: float, span: float) -> str:
    """An axis label: an offset at the precision of the tick step (not a duration: '1 m 30 s', '0.5 s', '200 ms')."""
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


def _card(card: Card) -> str:
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in card.facts)
    limits = {"input": _INPUT_EXCERPT, "output": _OUTPUT_EXCERPT, "text": _TEXT_EXCERPT}
    pre = "".join(f'<div class="x"><b>{_e(k)}</b><pre>{_e(_excerpt(v, limits.get(k, 400)) or "(empty)")}</pre></div>'
                  for k, v in card.excerpts)
    return f"<b>{_e(card.title)}</b><dl>{rows}</dl>{pre}"


def _excerpt(text: str, limit: int) -> str:
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
