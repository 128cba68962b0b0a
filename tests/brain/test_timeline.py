"""The session timeline page, from events built here: fan-out rows, outcomes, unfinished calls, escaping, nesting."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from brain.sessions import open_store
from brain.timeline import CALL_OUTCOMES, load_timeline, render_timeline
from tests.session_log import SessionLog

T0 = 1_750_000_000.0
VOID = {"meta", "br", "img", "link", "input", "hr", "source", "wbr", "area", "base", "col", "embed", "track"}


# --- a small DOM from the stdlib parser (shared with tests/system/test_timeline_chromium.py) ---------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def style(self, prop: str) -> float:
        match = re.search(rf"(?:^|;)\s*{prop}:\s*([-\d.]+)%", self.attrs.get("style", ""))
        assert match, f"no {prop} in style {self.attrs.get('style')!r}"
        return float(match.group(1))


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.stack: list[Element] = []

    def handle_starttag(self, tag, attrs):
        el = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(el)
        if tag not in VOID:
            self.stack.append(el)

    def handle_startendtag(self, tag, attrs):
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        for el in self.stack:
            el.parts.append(data)


def parse_html(page: str) -> list[Element]:
    dom = _Dom()
    dom.feed(page)
    dom.close()
    return dom.elements


def find(elements: list[Element], **attrs: str) -> list[Element]:
    """Elements whose attributes match (data_kind="tool-call" matches data-kind)."""
    want = {k.replace("_", "-"): v for k, v in attrs.items()}
    return [e for e in elements if all(e.attrs.get(k) == v for k, v in want.items())]


def facts(elements: list[Element]) -> dict[str, str]:
    """The header's facts: dt text -> dd text."""
    out, key, in_facts = {}, None, False
    for e in elements:
        if e.tag == "dl":  # the header's <dl class="facts">, or a hover card's plain <dl>
            in_facts = "facts" in e.attrs.get("class", "")
        elif e.tag == "dt" and in_facts:
            key = e.text.strip()
        elif e.tag == "dd" and in_facts and key is not None:
            out[key], key = " ".join(e.text.split()), None
    return out


# --- building session logs ---------------------------------------------------------------------------


def session(session_id: str = "sess-1", task: str = "Survey the twelve modules.", parent_id: str | None = None,
            start: float = 0.0) -> SessionLog:
    """A session's log, started at `start` seconds; every event below is placed with at= (seconds after T0)."""
    return SessionLog(session_id, t0=T0, parent_id=parent_id).start(task, at=start)


def render(log: SessionLog, **kwargs) -> list[Element]:
    return parse_html(render_timeline(log.info(), log.events, **kwargs))


def fan_out(n: int = 12, slow: int = 7) -> SessionLog:
    """One turn asking for n calls that run at once (call `slow` takes longest), then the synthesis."""
    log = session()
    ids = [f"toolu_{i:02d}" for i in range(n)]
    log.model([(cid, "worker", {"item": i}) for i, cid in enumerate(ids)], at=0.8)
    for i, cid in enumerate(ids):
        log.started(cid, at=0.81 + i * 0.002)
    finish = sorted((3.0 if i == slow else 1.0 + i * 0.05, cid) for i, cid in enumerate(ids))
    for at, cid in finish:
        log.finished(cid, output=f"result of {cid}", at=at)
    return log.model(text="Twelve findings, synthesized.", at=3.6).finish(at=3.6)


# --- tests -------------------------------------------------------------------------------------------


def test_a_twelve_call_fan_out_sits_in_twelve_parallel_rows_between_its_turn_and_the_synthesis():
    els = render(fan_out())
    bars = find(els, data_kind="tool-call")
    assert len(bars) == 12
    assert len({b.attrs["data-row"] for b in bars}) == 12
    assert {b.attrs["data-status"] for b in bars} == {"ok"}
    # They overlap in time: every bar starts before any bar ends, on the axis and in the drawn offsets.
    assert max(float(b.attrs["data-start-ms"]) for b in bars) < min(float(b.attrs["data-end-ms"]) for b in bars)
    assert max(b.style("left") for b in bars) < min(b.style("left") + b.style("width") for b in bars)

    [turn] = find(els, data_kind="turn", data_status="model")
    [synthesis] = find(els, data_kind="turn", data_status="synthesis")
    rows = sorted(int(b.attrs["data-row"]) for b in bars)
    assert int(turn.attrs["data-row"]) < rows[0] and rows[-1] < int(synthesis.attrs["data-row"])
    # The model's think time runs from the session start to its response, the synthesis from the last finish.
    assert float(turn.attrs["data-start-ms"]) == 0.0 and float(turn.attrs["data-end-ms"]) == 800.0
    assert float(synthesis.attrs["data-start-ms"]) == 3000.0 and float(synthesis.attrs["data-end-ms"]) == 3600.0

    slow = find(els, data_call_id="toolu_07")[0]
    assert float(slow.attrs["data-end-ms"]) == 3000.0
    assert slow.style("width") == max(b.style("width") for b in bars)
    notes = [e.text for e in els if e.tag == "span" and "note" in e.attrs.get("class", "")]
    assert [n for n in notes if "slowest" in n] == ["2.18 s · slowest"]

    header = facts(els)
    assert header["turns"] == "2" and header["tool calls"] == "12" and header["errors"] == "0"
    assert header["status"] == "finished" and header["model"] == "claude-test-1"
    assert header["wall time"] == "3.60 s" and header["cut short"] == "no"
    assert header["tokens"].startswith("240 ")  # two turns of 100 in + 20 out


def test_calls_that_do_not_overlap_share_a_row_so_rows_show_the_parallelism():
    log = session()
    ids = [f"c{i}" for i in range(6)]
    log.model([(cid, "worker", {}) for cid in ids], at=0.5)
    for wave in range(2):  # two waves of three, as max_parallel=3 would run them
        for i in range(3):
            log.started(ids[wave * 3 + i], at=1.0 + wave * 1.0 + i * 0.01)
        for i in range(3):
            log.finished(ids[wave * 3 + i], at=1.5 + wave * 1.0 + i * 0.01)
    els = render(log.model(text="ok", at=3.0).finish(at=3.0))
    bars = find(els, data_kind="tool-call")
    assert len(bars) == 6
    assert len({b.attrs["data-row"] for b in bars}) == 3
    shared = [e for e in els if e.attrs.get("data-kind") == "calls-row"]
    assert len(shared) == 3 and all("2 calls" in r.text for r in shared)


def test_each_outcome_has_its_own_status_and_colour_and_errors_are_counted():
    log = session()
    calls = ["ok1", "iserr", "deadline", "cancel", "skipped"]
    log.model([(c, "worker", {}) for c in calls], at=0.2)
    for c in calls[:4]:
        log.started(c, at=0.3)
    log.finished("ok1", at=0.5)
    log.finished("iserr", output="file not found", is_error=True, at=0.6)
    log.finished("deadline", output="hand worker did not finish", is_error=True, status="DEADLINE_EXCEEDED", at=0.7)
    log.finished("cancel", output="cancelled", is_error=True, status="CANCELLED", at=0.8)
    log.not_run("skipped", reason="max_tool_calls", at=0.3)
    els = render(log.model(text="partial", at=1.0).finish(at=1.0))
    status = {b.attrs["data-call-id"]: (b.attrs["data-status"], b.attrs["data-code"]) for b in find(els, data_kind="tool-call")}
    assert status == {
        "ok1": ("ok", "OK"),
        "iserr": ("error", "OK"),
        "deadline": ("rpc-error", "DEADLINE_EXCEEDED"),
        "cancel": ("cancelled", "CANCELLED"),
        "skipped": ("not-run", "NOT_RUN"),
    }
    # Calls refused before dispatch get a row of their own instead of hiding under a call that ran.
    rows = {b.attrs["data-call-id"]: b.attrs["data-row"] for b in find(els, data_kind="tool-call")}
    assert rows.pop("skipped") not in rows.values()
    assert any(e.text == "1 not run · over max_tool_calls" for e in els if "note" in e.attrs.get("class", ""))
    # Every outcome class is drawn differently and explained by the legend.
    page = render_timeline(log.info(), log.events)
    for outcome, words in CALL_OUTCOMES.items():
        assert re.search(rf"\.s-{outcome}\{{background:", page), outcome
        assert f'<i class="sw s-{outcome}"></i>{words}' in page
    header = facts(els)
    assert header["errors"] == "3"
    assert header["tool calls"] == "4 +1 not run"


def test_an_unfinished_call_is_drawn_to_the_session_end_and_marked_never_finished():
    log = session()
    log.model([("a", "worker", {}), ("b", "stuck", {})], at=0.2)
    log.started("a", at=0.3).started("b", name="stuck", at=0.3).finished("a", at=0.9)
    els = render(log.fail("the brain lost its gateway", at=5.0))
    [stuck] = find(els, data_call_id="b")
    assert stuck.attrs["data-status"] == "unfinished" and stuck.attrs["data-code"] == ""
    assert float(stuck.attrs["data-end-ms"]) == 5000.0
    assert "never finished" in stuck.text  # the hover card
    notes = [e.text for e in els if "note" in e.attrs.get("class", "")]
    assert "4.70 s · never finished" in notes
    assert "failed: the brain lost its gateway" in " ".join(e.text for e in els if e.tag == "p")


def test_calls_in_flight_when_the_session_was_cancelled_are_drawn_cancelled():
    log = session()
    log.model([("a", "worker", {})], at=0.2).started("a", at=0.3)
    els = render(log.cancel("user asked", at=2.0))
    [bar] = find(els, data_kind="tool-call")
    assert bar.attrs["data-status"] == "cancelled" and float(bar.attrs["data-end-ms"]) == 2000.0


def test_a_call_re_issued_after_a_wake_shows_the_abandoned_attempt_and_the_one_that_finished():
    log = session()
    log.model([("a", "worker", {})], at=0.2).started("a", at=0.3)
    log.started("a", attempt=2, at=40.0).finished("a", at=41.0)
    els = render(log.model(text="done", at=41.5).finish(at=41.5))
    first, second = sorted(find(els, data_call_id="a"), key=lambda b: float(b.attrs["data-start-ms"]))
    assert first.attrs["data-status"] == "unfinished" and float(first.attrs["data-end-ms"]) == 40000.0
    assert "re-issued after a wake" in first.text
    assert second.attrs["data-status"] == "ok" and "attempt2" in second.text.replace(" ", "")
    assert facts(els)["wall time"] == "41.50 s"


def test_a_synthesis_after_a_limit_is_the_last_row_and_the_header_says_cut_short():
    log = session()
    log.model([("a", "worker", {}), ("b", "worker", {})], at=0.2).started("a", at=0.3).finished("a", at=0.5)
    log.finished("b", output="not run", is_error=True, status="NOT_RUN", at=0.5)
    log.limit("max_tool_calls", not_run=1, at=0.5)
    log.model(text="What I found so far.", at=1.5)
    els = render(log.finish("What I found so far.", cut_short=True, reason="max_tool_calls", at=1.5))
    rows = [e for e in els if e.attrs.get("data-kind", "").endswith("-row")]
    assert rows[-1].attrs["data-kind"] == "synthesis-row"
    assert "Synthesis" in rows[-1].text and "after max_tool_calls" in rows[-1].text
    assert facts(els)["cut short"] == "yes · max_tool_calls"


def test_untrusted_text_is_escaped_everywhere_and_creates_no_elements():
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
    log = session(task=f"Task {evil}")
    log.model([("a", "worker", {"q": evil})], text=f"thinking {evil}", at=0.2)
    log.started("a", at=0.3).finished("a", output=f"out {evil}", is_error=True, at=0.5)
    log.model(text=f"final {evil}", at=0.8)
    page = render_timeline(log.info(), log.finish(f"result {evil}", at=0.8).events)
    els = parse_html(page)
    assert [e for e in els if e.tag in ("script", "img")] == []
    assert not any(k.startswith("on") for e in els for k in e.attrs)
    # The text is still there for a reader, as text.
    [bar] = find(els, data_kind="tool-call")
    assert "out <script>alert(1)</script><img src=x onerror=alert(2)>" in bar.text
    assert f"Task {evil}" in " ".join(e.text for e in els if e.tag == "p")


def test_the_page_is_self_contained():
    page = render_timeline(fan_out().info(), fan_out().events)
    els = parse_html(page)
    assert not [e for e in els for k in ("src", "href") if e.attrs.get(k, "").startswith(("http://", "https://", "//"))]
    assert not [e for e in els if e.tag in ("script", "link", "img", "iframe", "object")]
    assert "url(" not in page and "@import" not in page
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")


def test_sub_agent_sessions_are_drawn_as_nested_lanes_on_the_same_axis():
    parent = session()
    parent.model([("spawn", "llm_worker", {"task": "dig"})], at=0.2).started("spawn", at=0.3)
    parent.finished("spawn", name="llm_worker", at=4.0).model(text="done", at=4.5).finish(at=4.5)
    child = session("sess-child", task="Dig into module 3.", parent_id="sess-1", start=0.4)
    child.model([("k1", "fs_read", {}), ("k2", "fs_grep", {})], at=1.0)
    child.started("k1", "fs_read", at=1.1).started("k2", "fs_grep", at=1.1)
    child.finished("k1", name="fs_read", at=2.0).finished("k2", name="fs_grep", at=3.0)
    child.model(text="module 3 is fine", at=3.8).finish(at=3.8)
    els = render(parent, children={"sess-child": (child.info(), child.events)})
    [lane] = find(els, data_kind="session-row")
    assert lane.attrs["data-session"] == "sess-child" and "Dig into module 3." in lane.text
    child_bars = find(els, data_kind="tool-call", data_session="sess-child")
    assert {b.attrs["data-call-id"] for b in child_bars} == {"k1", "k2"}
    assert len({b.attrs["data-row"] for b in child_bars}) == 2
    assert all(int(b.attrs["data-row"]) > int(lane.attrs["data-row"]) for b in child_bars)
    # One time axis: the child's first call starts 1.1 s after the parent session started.
    assert {float(b.attrs["data-start-ms"]) for b in child_bars} == {1100.0}
    assert facts(els)["sub-agents"] == "1"


def test_a_session_with_no_turns_yet_renders():
    els = render(session())
    assert find(els, data_kind="tool-call") == [] and facts(els)["status"] == "running"
    assert any("No turns recorded yet" in e.text for e in els if e.tag == "p")


async def test_load_timeline_reads_the_session_and_its_sub_agents_from_a_store(tmp_path):
    store = await open_store(str(tmp_path / "sessions.db"))
    try:
        parent = await store.create_session("Parent task", {})
        child = await store.create_session("Child task", {}, parent_id=parent)
        other = await store.create_session("Unrelated", {})
        for sid in (parent, other):
            await SessionLog(sid).start("t", model="m").append_to(store)
        await SessionLog(child).start("t", model="m").model([("cc1", "fs_read", {})]).started("cc1", "fs_read").append_to(store)
        els = parse_html(await load_timeline(store, parent))
        assert [e.attrs["data-session"] for e in find(els, data_kind="session-row")] == [child]
        [bar] = find(els, data_kind="tool-call")
        assert bar.attrs["data-call-id"] == "cc1" and bar.attrs["data-status"] == "unfinished"
        assert "still running" in bar.text
    finally:
        await store.close()


def axis_labels(log: SessionLog) -> list[str]:
    page = render_timeline(log.info(), log.events)
    axis = re.search(r'data-kind="axis">(.*?)</div></div>', page).group(1)
    return re.findall(r">([^<]+)</span>", axis)


def test_the_time_axis_is_labelled_in_units_that_fit_the_session_length():
    assert axis_labels(session().model(text="hi", at=0.7).finish(at=0.7)) == [f"{ms} ms" for ms in range(0, 701, 100)]
    assert axis_labels(fan_out()) == [f"{s / 2:.1f} s" for s in range(8)]  # 3.6 s: every half second
    assert axis_labels(session().model(text="hi", at=400).finish(at=400)) == ["0 s"] + [f"{m} m" for m in range(1, 7)]  # 6 m 40 s: every minute
    assert axis_labels(session().model(text="hi", at=150).finish(at=150))[:4] == ["0 s", "30 s", "1 m", "1 m 30 s"]


def test_call_rows_say_what_each_call_did_and_a_sub_agent_is_drawn_under_the_call_that_started_it():
    parent = session()
    parent.model([("r1", "fs_read", {"path": "docs/guide.md"}),
                  ("a1", "agent", {"task": "Audit the payment module for rounding errors"})], at=0.2)
    parent.started("r1", "fs_read", at=0.3).started("a1", "agent", at=0.3)
    parent.finished("r1", name="fs_read", at=0.5).finished("a1", name="agent", at=4.0)
    parent.model([("q1", "web_search", {"query": "banker's rounding"})], at=4.3).started("q1", "web_search", at=4.4)
    parent.finished("q1", name="web_search", at=4.8).model(text="done", at=5.0).finish(at=5.0)
    child = session("sess-child", task="Audit the payment module for rounding errors", parent_id="sess-1", start=0.4)
    child.model([("k1", "fs_grep", {"pattern": "round(", "path": "payments"})], at=1.0).started("k1", "fs_grep", at=1.1)
    child.finished("k1", name="fs_grep", at=2.0).model(text="two places", at=3.0).finish(at=3.0)
    els = render(parent, children={"sess-child": (child.info(), child.events)})
    rows = [e for e in els if e.attrs.get("data-kind", "").endswith("-row")]
    labels = [(r.attrs["data-kind"], " ".join(r.text.split())) for r in rows]
    text = " | ".join(label for _, label in labels)
    assert "docs/guide.md" in text and "banker's rounding" in text and "round( in payments" in text
    assert not any(call_id in label for call_id in ("r1", "a1", "q1", "k1") for _, label in labels if label.split()[-1] == call_id)
    kinds = [kind for kind, _ in labels]
    at = kinds.index("session-row")
    assert "agent" in labels[at - 1][1] and "Audit the payment" in labels[at][1]  # right under the agent call
    assert labels[at + 1][0] == "turn-row" and "round( in payments" in labels[at + 2][1]  # the worker's own calls
    assert "banker's rounding" in " ".join(label for _, label in labels[at + 3:])  # the parent's next turn after it
