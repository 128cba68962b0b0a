"""The session timeline page, from events built here: fan-out rows, outcomes, unfinished calls, escaping, nesting."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from brain.sessions import Event, SessionInfo, open_store
from brain.timeline import CALL_OUTCOMES, load_timeline, render_timeline

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


class Log:
    """Events of one session at chosen times (seconds after T0)."""

    def __init__(self, session_id: str = "sess-1", task: str = "Survey the twelve modules.", status: str = "finished",
                 parent_id: str | None = None, start: float = 0.0):
        self.session_id, self.task, self.status, self.parent_id, self.start = session_id, task, status, parent_id, start
        self.events: list[Event] = []
        self.add("session_started", start, task=task, model="claude-test-1", config={}, system="s", tools=[])

    def add(self, type: str, at: float, **data) -> Log:
        self.events.append(Event(self.session_id, len(self.events) + 1, type, data, T0 + at))
        return self

    def model(self, at: float, calls: list[tuple[str, str, dict]] = (), text: str = "", stop: str | None = None,
              usage: dict | None = None) -> Log:
        content = [{"type": "text", "text": text}] if text else []
        content += [{"type": "tool_use", "id": cid, "name": name, "input": inp} for cid, name, inp in calls]
        return self.add("model_response", at, content=content, stop_reason=stop or ("tool_use" if calls else "end_turn"),
                        usage=usage or {"input_tokens": 100, "output_tokens": 20}, model="claude-test-1")

    def started(self, at: float, cid: str, name: str = "worker", attempt: int = 1) -> Log:
        return self.add("tool_call_started", at, call_id=cid, name=name, input={}, attempt=attempt)

    def finished(self, at: float, cid: str, output: str = "done", is_error: bool = False, status: str = "OK",
                 name: str = "worker", duration: float = 0.1, usage: dict | None = None) -> Log:
        return self.add("tool_call_finished", at, call_id=cid, name=name, output=output, is_error=is_error,
                        status=status, duration=duration, usage=usage or {"input_tokens": 0, "output_tokens": 0})

    def end(self, at: float, type: str = "session_finished", **data) -> Log:
        data = {"result": "All done.", "cut_short": False, "reason": None, **data} if type == "session_finished" else data
        return self.add(type, at, **data)

    def info(self) -> SessionInfo:
        ts = [e.ts for e in self.events]
        return SessionInfo(self.session_id, self.task, self.status, min(ts), max(ts), len(self.events), self.parent_id)

    def render(self, **kwargs) -> list[Element]:
        return parse_html(render_timeline(self.info(), self.events, **kwargs))


def fan_out(n: int = 12, slow: int = 7) -> Log:
    """One turn asking for n calls that run at once (call `slow` takes longest), then the synthesis."""
    log = Log()
    ids = [f"toolu_{i:02d}" for i in range(n)]
    log.model(0.8, [(cid, "worker", {"item": i}) for i, cid in enumerate(ids)])
    for i, cid in enumerate(ids):
        log.started(0.81 + i * 0.002, cid)
    finish = sorted((3.0 if i == slow else 1.0 + i * 0.05, cid) for i, cid in enumerate(ids))
    for at, cid in finish:
        log.finished(at, cid, output=f"result of {cid}")
    return log.model(3.6, text="Twelve findings, synthesized.").end(3.6)


# --- tests -------------------------------------------------------------------------------------------


def test_a_twelve_call_fan_out_sits_in_twelve_parallel_rows_between_its_turn_and_the_synthesis():
    els = fan_out().render()
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
    log = Log()
    ids = [f"c{i}" for i in range(6)]
    log.model(0.5, [(cid, "worker", {}) for cid in ids])
    for wave in range(2):  # two waves of three, as max_parallel=3 would run them
        for i in range(3):
            log.started(1.0 + wave * 1.0 + i * 0.01, ids[wave * 3 + i])
        for i in range(3):
            log.finished(1.5 + wave * 1.0 + i * 0.01, ids[wave * 3 + i])
    els = log.model(3.0, text="ok").end(3.0).render()
    bars = find(els, data_kind="tool-call")
    assert len(bars) == 6
    assert len({b.attrs["data-row"] for b in bars}) == 3
    shared = [e for e in els if e.attrs.get("data-kind") == "calls-row"]
    assert len(shared) == 3 and all("2 calls" in r.text for r in shared)


def test_each_outcome_has_its_own_status_and_colour_and_errors_are_counted():
    log = Log()
    calls = ["ok1", "iserr", "deadline", "cancel", "skipped"]
    log.model(0.2, [(c, "worker", {}) for c in calls])
    for c in calls[:4]:
        log.started(0.3, c)
    log.finished(0.5, "ok1")
    log.finished(0.6, "iserr", output="file not found", is_error=True)
    log.finished(0.7, "deadline", output="hand worker did not finish", is_error=True, status="DEADLINE_EXCEEDED")
    log.finished(0.8, "cancel", output="cancelled", is_error=True, status="CANCELLED")
    log.add("tool_call_finished", 0.3, call_id="skipped", name="worker", output="not run: over max_tool_calls",
            is_error=True, status="NOT_RUN", reason="max_tool_calls", duration=0.0)
    els = log.model(1.0, text="partial").end(1.0).render()
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
    log = Log(status="failed")
    log.model(0.2, [("a", "worker", {}), ("b", "stuck", {})])
    log.started(0.3, "a").started(0.3, "b", name="stuck").finished(0.9, "a")
    els = log.end(5.0, type="session_failed", reason="the brain lost its gateway").render()
    [stuck] = find(els, data_call_id="b")
    assert stuck.attrs["data-status"] == "unfinished" and stuck.attrs["data-code"] == ""
    assert float(stuck.attrs["data-end-ms"]) == 5000.0
    assert "never finished" in stuck.text  # the hover card
    notes = [e.text for e in els if "note" in e.attrs.get("class", "")]
    assert "4.70 s · never finished" in notes
    assert "failed: the brain lost its gateway" in " ".join(e.text for e in els if e.tag == "p")


def test_calls_in_flight_when_the_session_was_cancelled_are_drawn_cancelled():
    log = Log(status="cancelled")
    log.model(0.2, [("a", "worker", {})]).started(0.3, "a")
    els = log.end(2.0, type="session_cancelled", reason="user asked").render()
    [bar] = find(els, data_kind="tool-call")
    assert bar.attrs["data-status"] == "cancelled" and float(bar.attrs["data-end-ms"]) == 2000.0


def test_a_call_re_issued_after_a_wake_shows_the_abandoned_attempt_and_the_one_that_finished():
    log = Log()
    log.model(0.2, [("a", "worker", {})]).started(0.3, "a")
    log.started(40.0, "a", attempt=2).finished(41.0, "a")
    els = log.model(41.5, text="done").end(41.5).render()
    first, second = sorted(find(els, data_call_id="a"), key=lambda b: float(b.attrs["data-start-ms"]))
    assert first.attrs["data-status"] == "unfinished" and float(first.attrs["data-end-ms"]) == 40000.0
    assert "re-issued after a wake" in first.text
    assert second.attrs["data-status"] == "ok" and "attempt2" in second.text.replace(" ", "")
    assert facts(els)["wall time"] == "41.50 s"


def test_a_synthesis_after_a_limit_is_the_last_row_and_the_header_says_cut_short():
    log = Log()
    log.model(0.2, [("a", "worker", {}), ("b", "worker", {})]).started(0.3, "a").finished(0.5, "a")
    log.finished(0.5, "b", output="not run", is_error=True, status="NOT_RUN")
    log.add("limit_reached", 0.5, reason="max_tool_calls", not_run=1)
    log.model(1.5, text="What I found so far.")
    els = log.end(1.5, result="What I found so far.", cut_short=True, reason="max_tool_calls").render()
    rows = [e for e in els if e.attrs.get("data-kind", "").endswith("-row")]
    assert rows[-1].attrs["data-kind"] == "synthesis-row"
    assert "Synthesis" in rows[-1].text and "after max_tool_calls" in rows[-1].text
    assert facts(els)["cut short"] == "yes · max_tool_calls"


def test_untrusted_text_is_escaped_everywhere_and_creates_no_elements():
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'
    log = Log(task=f"Task {evil}")
    log.model(0.2, [("a", "worker", {"q": evil})], text=f"thinking {evil}")
    log.started(0.3, "a").finished(0.5, "a", output=f"out {evil}", is_error=True)
    log.model(0.8, text=f"final {evil}")
    page = render_timeline(log.info(), log.end(0.8, result=f"result {evil}").events)
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
    parent = Log()
    parent.model(0.2, [("spawn", "llm_worker", {"task": "dig"})]).started(0.3, "spawn")
    parent.finished(4.0, "spawn", name="llm_worker").model(4.5, text="done").end(4.5)
    child = Log("sess-child", task="Dig into module 3.", parent_id="sess-1", start=0.4)
    child.model(1.0, [("k1", "fs_read", {}), ("k2", "fs_grep", {})])
    child.started(1.1, "k1", "fs_read").started(1.1, "k2", "fs_grep")
    child.finished(2.0, "k1", name="fs_read").finished(3.0, "k2", name="fs_grep")
    child.model(3.8, text="module 3 is fine").end(3.8)
    els = parent.render(children={"sess-child": (child.info(), child.events)})
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
    log = Log(status="running")
    els = log.render()
    assert find(els, data_kind="tool-call") == [] and facts(els)["status"] == "running"
    assert any("No turns recorded yet" in e.text for e in els if e.tag == "p")


async def test_load_timeline_reads_the_session_and_its_sub_agents_from_a_store(tmp_path):
    store = await open_store(str(tmp_path / "sessions.db"))
    try:
        parent = await store.create_session("Parent task", {})
        child = await store.create_session("Child task", {}, parent_id=parent)
        other = await store.create_session("Unrelated", {})
        for sid in (parent, child, other):
            await store.append(sid, 1, "session_started", {"task": "t", "model": "m", "system": "s"})
        await store.append(child, 2, "model_response", {
            "content": [{"type": "tool_use", "id": "cc1", "name": "fs_read", "input": {}}], "stop_reason": "tool_use",
            "usage": {}})
        await store.append(child, 3, "tool_call_started", {"call_id": "cc1", "name": "fs_read", "input": {}})
        els = parse_html(await load_timeline(store, parent))
        assert [e.attrs["data-session"] for e in find(els, data_kind="session-row")] == [child]
        [bar] = find(els, data_kind="tool-call")
        assert bar.attrs["data-call-id"] == "cc1" and bar.attrs["data-status"] == "unfinished"
        assert "still running" in bar.text
    finally:
        await store.close()


def axis_labels(log: Log) -> list[str]:
    page = render_timeline(log.info(), log.events)
    axis = re.search(r'data-kind="axis">(.*?)</div></div>', page).group(1)
    return re.findall(r">([^<]+)</span>", axis)


def test_the_time_axis_is_labelled_in_units_that_fit_the_session_length():
    assert axis_labels(Log().model(0.7, text="hi").end(0.7)) == [f"{ms} ms" for ms in range(0, 701, 100)]
    assert axis_labels(fan_out()) == [f"{s / 2:.1f} s" for s in range(8)]  # 3.6 s: every half second
    assert axis_labels(Log().model(400, text="hi").end(400)) == ["0 s"] + [f"{m} m" for m in range(1, 7)]  # 6 m 40 s: every minute
    assert axis_labels(Log().model(150, text="hi").end(150))[:4] == ["0 s", "30 s", "1 m", "1 m 30 s"]
