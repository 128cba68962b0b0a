"""The live view as a person sees it: the tree while a session runs, the summary after, plain lines off a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from brain.events import SessionState
from brain.live import LiveView, render_tree, summarize_input
from brain.loop import RunResult
from tests.session_log import SID, SessionLog


def session_log() -> SessionLog:
    """A log whose model turns report 1200 tokens in and 80 out, on a clock moving with each event."""
    return SessionLog(SID, turn_usage=(1200, 80))


def start(log: SessionLog) -> SessionLog:
    return log.start("Fix the failing tests and summarize what changed", model="scripted",
                     config={"token_budget": 100_000, "max_turns": 20})


def terminal(width=100, height=40) -> Console:
    return Console(record=True, width=width, height=height, force_terminal=True, color_system=None)


def shown(view: LiveView) -> str:
    view.console.print(view.renderable())
    return view.console.export_text()


def fan_out(log: SessionLog) -> None:
    start(log)
    log.model([
        ("c1", "fs_read", {"path": "src/app.py"}),
        ("c2", "sandbox_shell", {"command": "pytest -q tests/"}),
        ("c3", "llm_worker", {"task": "Summarize the module structure of the project in three bullet points"}),
    ])
    for cid, name in (("c1", "fs_read"), ("c2", "sandbox_shell"), ("c3", "llm_worker")):
        log.started(cid, name)
    log.finished("c1", "fs_read", output="ok", duration=0.02)
    log.finished("c2", "sandbox_shell", output="collected 3 items\n[exit status 1]", is_error=True, duration=2.5)


def finished_fan_out() -> SessionLog:
    """The fan-out to its end: the worker finishes, the model answers, the session finishes."""
    log = session_log()
    fan_out(log)
    log.finished("c3", "llm_worker", output="ok", duration=3.5)
    return log.model(text="All fixed.").finish("All fixed.", dt=0.01)


def test_a_running_fan_out_shows_each_hand_its_input_and_its_state():
    log = session_log()
    fan_out(log)
    view = LiveView(terminal(), clock=lambda: log.now + 1.0)
    for event in log.events:
        view.on_event(event)
    text = shown(view)
    lines = text.splitlines()
    assert "session 5e55101d0000  running" in lines[0]
    assert "Fix the failing tests" in text
    assert "turn 1 · tool_use · 1.2k→80 tokens · 1.5s" in text
    read = next(line for line in lines if "fs_read" in line)
    assert "✓" in read and "src/app.py" in read and "20ms" in read
    shell = next(line for line in lines if "sandbox_shell" in line)
    assert "✗" in shell and "pytest -q tests/" in shell and "[exit status 1]" in shell
    worker = next(line for line in lines if "llm_worker" in line)
    # Still running: a spinner instead of a mark, the worker's task, and the time since it started (ticking).
    assert "✓" not in worker and "✗" not in worker and "Summarize the module structure" in worker
    assert "2.0s" in worker  # started 1s before the last event, shown 1s after it
    assert "3 calls (1 running, 1 error)" in lines[-1] and "turn 1/20" in lines[-1]


def test_elapsed_time_of_a_running_call_ticks_with_the_clock():
    log = session_log()
    fan_out(log)
    now = [log.now + 1.0]
    view = LiveView(terminal(), clock=lambda: now[0])
    for event in log.events:
        view.on_event(event)
    now[0] += 20
    worker = next(line for line in shown(view).splitlines() if "llm_worker" in line)
    assert "22s" in worker


def test_when_the_calls_are_done_the_model_is_shown_thinking_and_earlier_turns_fold_to_one_line():
    log = session_log()
    fan_out(log)
    log.finished("c3", "llm_worker", output="ok", duration=3.5, usage=(500, 100))
    log.model([("c4", "fs_edit", {"path": "src/app.py", "old": "a", "new": "b"})])
    log.started("c4", "fs_edit")
    log.finished("c4", "fs_edit", output="ok", duration=0.01)
    view = LiveView(terminal(), clock=lambda: log.now + 2.0)
    for event in log.events:
        view.on_event(event)
    text = shown(view)
    assert "turn 3 · model thinking… 2.0s" in text
    # turn 1 is folded: its hands on one line with their outcomes; turn 2 (the last with calls) is expanded.
    assert "fs_read ✓, sandbox_shell ✗, llm_worker ✓" in text
    assert "fs_edit" in text and "src/app.py" in text
    assert "4 calls (1 error)" in text
    assert "tokens of 100k" in text


def test_a_fan_out_taller_than_the_terminal_keeps_the_running_calls_in_view():
    log = start(session_log())
    calls = [(f"c{i}", "llm_worker", {"task": f"Translate chapter {i}"}) for i in range(40)]
    log.model(calls)
    for cid, name, _ in calls:
        log.started(cid, name)
    for cid, name, _ in calls[:-3]:
        log.finished(cid, name, output="ok")
    view = LiveView(terminal(height=20), clock=lambda: log.now)
    for event in log.events:
        view.on_event(event)
    text = shown(view)
    assert len(text.splitlines()) <= 20
    for i in (37, 38, 39):  # the three still running
        assert f"Translate chapter {i}" in text
    assert "more (" in text and "40 calls (3 running)" in text


def test_the_summary_left_at_the_end_has_a_line_per_turn_and_the_totals():
    log = finished_fan_out()
    console = terminal()
    with LiveView(console, clock=lambda: log.now) as view:
        for event in log.events:
            view.on_event(event)
        view.final(RunResult(SID, "finished", "All fixed."))
    text = console.export_text()
    assert f"✓ finished in 4.5s · session {SID}" in text
    turn_lines = [line for line in text.splitlines() if line.lstrip().startswith("turn ")]
    assert len(turn_lines) == 2
    assert "tool_use" in turn_lines[0] and "fs_read ✓, sandbox_shell ✗, llm_worker ✓" in turn_lines[0]
    assert "end_turn" in turn_lines[1]
    assert "3 calls (1 error)" in text


def test_leaving_the_view_while_the_session_runs_says_it_was_interrupted():
    log = session_log()
    fan_out(log)
    console = terminal()
    try:
        with LiveView(console, clock=lambda: log.now) as view:
            for event in log.events:
                view.on_event(event)
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    text = console.export_text()
    assert "⊘ interrupted" in text and "turn 1" in text
    assert "llm_worker ⊘" in text and "(1 error, 1 unfinished)" in text


def test_off_a_terminal_each_event_is_one_plain_line():
    log = finished_fan_out()
    out = io.StringIO()
    view = LiveView(Console(file=out, width=100))
    with view:
        for event in log.events:
            view.on_event(event)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue()
    assert lines[0] == f"session {SID} started: Fix the failing tests and summarize what changed"
    assert lines[1] == "turn 1: tool_use, 3 tool calls · 1.2k→80 tokens · 1.5s"
    assert "  sandbox_shell error 2.5s: [exit status 1]" in lines
    assert "  llm_worker started: Summarize the module structure of the project in three bullet points"[:60] in "\n".join(lines)
    assert lines[-1].startswith("session finished in") and "3 calls (1 failed)" in lines[-1]


def test_a_woken_session_continues_the_numbering_of_its_log():
    log = session_log()
    fan_out(log)
    before = list(log.events)
    log.started("c3", "llm_worker", attempt=2)
    log.finished("c3", "llm_worker", output="ok", duration=1.0)
    log.model(text="Done.")
    out = io.StringIO()
    view = LiveView(Console(file=out, width=100))
    view.replay(before)
    for event in log.events[len(before):]:
        view.on_event(event)
    printed = out.getvalue()
    assert "llm_worker started (attempt 2): Summarize" in printed
    assert "turn 2: end_turn" in printed and "session 5e55" not in printed


def test_calls_cut_by_a_limit_show_as_not_run_and_a_session_with_unfinished_calls_shows_them():
    log = start(session_log())
    log.model([("c1", "fs_read", {"path": "a"}), ("c2", "fs_read", {"path": "b"})])
    log.finished("c2", "fs_read", output="over the limit", is_error=True, status="NOT_RUN", duration=0.0)
    log.started("c1", "fs_read")
    view = SessionState.from_events(SID, log.events)
    console = terminal()
    console.print(render_tree(view, now=log.now, live=False, expand_all=True))
    text = console.export_text()
    assert "not run" in text
    assert "started, no result" in text


def test_the_input_summary_picks_what_a_person_recognises():
    assert summarize_input("llm_worker", {"task": "Write   the\nchangelog for 2.0", "context": "x" * 500}) == "Write the changelog for 2.0"
    assert summarize_input("fs_read", '{"path": "docs/a.md"}') == "docs/a.md"
    assert summarize_input("fs_grep", {"pattern": "TODO", "path": "src"}) == "TODO in src"
    assert summarize_input("sandbox_python", {"code": "print(1)\nprint(2)"}) == "print(1) print(2)"
    assert summarize_input("reverse", {"text": "olleh"}) == "olleh"
    assert summarize_input("custom", {"a": 1, "b": [2]}) == '{"a": 1, "b": [2]}'
    long = summarize_input("llm_worker", {"task": "word " * 40}, width=20)
    assert len(long) == 20 and long.endswith("…")
