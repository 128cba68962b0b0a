"""People in the loop inside the brain: the fold of approvals and messages, the live view's approval prompt as
rendered, and a nested worker agent's approval surfacing on the root session and decided from another process."""

from __future__ import annotations

import asyncio
import json

from rich.console import Console

from brain import events as ev
from brain.live import LiveView, prompt_decision, render_tree
from brain.sessions.sqlite import SqliteSessionStore
from tests.brain.test_agent import tree  # noqa: F401 - the fixture
from tests.procs import poll
from tests.session_log import SessionLog

WRITE = {"path": "notes.md", "content": "hello\n"}


def waiting_log() -> SessionLog:
    log = SessionLog().start("Write the notes.")
    log.model([("c1", "fs_write", WRITE), ("c2", "fs_read", {"path": "a.md"})])
    log.approval("c1", "fs_write", input=WRITE).started("c2", "fs_read").finished("c2", "fs_read")
    return log.waiting("c1")


def terminal(width=120, height=40) -> Console:
    return Console(record=True, width=width, height=height, force_terminal=True, color_system=None)


def test_the_fold_keeps_a_waiting_call_and_its_decision_and_the_message_joins_the_next_turn():
    log = waiting_log()
    state = log.state()
    assert state.status == "waiting"
    assert [a.call_id for a in state.pending_approvals()] == ["c1"] and state.calls["c1"].waiting
    log.decided("c1", input={"path": "edited.md", "content": "x"}).resumed()
    log.said("Also mention the release date.")
    state = log.state()
    assert state.status == "running" and not state.pending_approvals()
    assert state.calls["c1"].run_input == {"path": "edited.md", "content": "x"}
    log.started("c1", "fs_write").finished("c1", "fs_write")
    last_user = log.state().messages()[-1]["content"]
    assert [b["type"] for b in last_user] == ["tool_result", "tool_result", "text"]
    assert "Also mention the release date." in last_user[-1]["text"]


def test_a_message_said_while_the_model_thinks_joins_the_turn_after_its_answer():
    log = SessionLog().start("Go.")
    seen = len(log.events)
    log.said("Use British spelling.")
    log.add(ev.ModelResponse(content=[{"type": "text", "text": "Done."}], stop_reason="end_turn", seen=seen))
    state = log.state()
    assert [m.text for m in state.unanswered()] == ["Use British spelling."]
    assert state.messages()[-1]["role"] == "user" and "British" in state.messages()[-1]["content"][-1]["text"]


def test_the_tree_marks_the_waiting_call_with_how_to_decide_and_shows_decisions_messages_and_interrupts():
    out = terminal()
    log = waiting_log()
    out.print(render_tree(log.state(), now=log.now))
    text = out.export_text()
    assert "waiting" in text and "fs_write" in text and "waits for approval" in text
    assert f"brainhands sessions approve {log.session_id} c1" in text

    log.decided("c1", approved=False, reason="not today").resumed()
    log.finished("c1", "fs_write", output="denied", is_error=True, status="DENIED")
    log.model([("c3", "slow", {})]).started("c3", "slow").said("Stop there.", interrupt=True)
    log.finished("c3", "slow", output=ev.CANCELLED_BY_A_PERSON, is_error=True, status="CANCELLED").interrupted("c3")
    out = terminal()
    out.print(render_tree(log.state(), now=log.now, expand_all=True, live=False))
    text = out.export_text()
    assert "denied by ana@laptop: not today" in text
    assert "ana@laptop interrupted: Stop there." in text
    assert "interrupted: 1 call cancelled" in text


async def test_the_approval_prompt_as_rendered_and_each_answer():
    log = waiting_log()
    approval = log.state().approvals["c1"]
    for answers, expected in (
        (["y"], {"approved": True, "always": False}),
        (["a"], {"approved": True, "always": True}),
        (["n", "use the docs folder"], {"approved": False, "reason": "use the docs folder"}),
        (["?", "e", "{oops", "e", '{"path": "docs/notes.md", "content": "hi"}'],
         {"approved": True, "input": {"path": "docs/notes.md", "content": "hi"}}),
    ):
        out = terminal()
        queue = list(answers)
        decision = await prompt_decision(out, log.session_id, approval, lambda q, queue=queue: queue.pop(0))
        assert decision == expected
        assert not queue
        text = out.export_text()
        assert "approve this call? fs_write" in text and '"path": "notes.md"' in text
        assert "[y]es / [n]o / [e]dit the input / [a]lways for fs_write in this session" in text
        if answers[0] == "?":
            assert "answer y, n, e or a" in text and "not JSON" in text


async def test_the_live_view_puts_a_request_to_the_person_and_writes_the_decision(tmp_path):
    store = await SqliteSessionStore.open(str(tmp_path / "s.db"))
    try:
        sid = await store.create_session("Write the notes.", {})
        log = waiting_log()
        log.session_id = sid
        log.events = [ev_ for ev_ in (e.__class__(sid, e.seq, e.type, e.data, e.ts) for e in log.events)]
        await log.append_to(store)
        view = LiveView(terminal(), live=True, answer=lambda q: "y")
        assert view.asks
        view.attach(store)
        with view:
            for event in await store.events(sid):
                view.on_event(event)
            await asyncio.gather(*view._tasks)
        decided = [e for e in await store.events(sid) if e.type == ev.APPROVAL_DECIDED]
        assert len(decided) == 1 and decided[0].data["approved"] is True and decided[0].data["call_id"] == "c1"
        assert "approve this call? fs_write" in view.console.export_text()
    finally:
        await store.close()


async def test_a_nested_agents_approval_shows_on_the_root_and_once_approved_there_the_child_finishes(tree, capsys):  # noqa: F811
    from brain import open_store
    from brain.events import SessionState

    plans = {
        "ROOT": [{"tool_calls": [["agent", {"task": "CHILD: echo hi"}]]}, {"text": "root done"}],
        "CHILD": [{"tool_calls": [["echo", {"text": "hi"}]]}, {"text": "child done"}],
    }
    running = asyncio.create_task(tree(plans, approve=("echo",)))
    store = await open_store(tree.sessions)
    try:
        async def root_sees_the_request():
            roots = [s for s in await store.list_sessions(limit=10) if s.parent_id is None]
            if not roots:
                return False
            state = SessionState.from_events(roots[0].id, await store.events(roots[0].id))
            return bool(state.pending_approvals())

        await poll(root_sees_the_request, "the child's approval request on the root session", timeout=60)
        [root] = [s for s in await store.list_sessions(limit=10) if s.parent_id is None]
        [child] = [s for s in await store.list_sessions(limit=10) if s.parent_id == root.id]
        root_state = SessionState.from_events(root.id, await store.events(root.id))
        [request] = root_state.pending_approvals()
        assert (request.name, request.session_id, request.input) == ("echo", child.id, {"text": "hi"})
        assert (await store.get_session(child.id)).status == "waiting"
        assert tree.seen.depths == []  # the echo did not run

        # Decided on the root, with the child's call id, by the command a person types (run in a thread: a new
        # Python process takes longer to start on a loaded machine than the root's call to the agent may last).
        from brainhands.cli import main

        code = await asyncio.to_thread(main, ["sessions", "approve", root.id, request.call_id, "--sessions", tree.sessions])
        assert code == 0
        assert f"in its nested session {child.id}" in capsys.readouterr().out

        result, _ = await asyncio.wait_for(running, 60)
        assert (result.status, result.text) == ("finished", "root done")
        child_events = await store.events(child.id)
        assert child_events[-1].type == "session_finished" and child_events[-1].data["result"] == "child done"
        assert [e.data["approved"] for e in child_events if e.type == "approval_decided"] == [True]
        assert tree.seen.depths == [1]
        root_decisions = [e.data for e in await store.events(root.id) if e.type == "approval_decided"]
        assert [(d["call_id"], d["session_id"]) for d in root_decisions] == [(request.call_id, child.id)]
        assert json.dumps(root_decisions)
    finally:
        if not running.done():
            running.cancel()
        await store.close()


async def test_the_timeline_draws_the_approval_wait_the_decision_and_the_messages(tmp_path):
    from brain.timeline import load_timeline

    store = await SqliteSessionStore.open(str(tmp_path / "s.db"))
    try:
        sid = await store.create_session("Write the notes.", {})
        log = waiting_log()
        log.decided("c1", by="ana@laptop", input={"path": "docs/notes.md", "content": "x"}).resumed()
        log.started("c1", "fs_write").finished("c1", "fs_write").said("Keep it short.", interrupt=True)
        log.interrupted().model(text="Done.").finish("Done.")
        for event in log.events:
            await store.append(sid, event.seq, event.type, event.data)
        page = await load_timeline(store, sid)
    finally:
        await store.close()
    assert 'data-kind="approval" data-row=' in page and 's-approved' in page
    assert "approved by ana@laptop · input edited" in page
    assert 'data-kind="person"' in page and "s-interrupt" in page and "Keep it short." in page


async def test_sessions_watch_prints_every_event_of_the_named_sessions_once_in_order(tmp_path, capsys):
    from brainhands.cli import main

    db = str(tmp_path / "s.db")
    store = await SqliteSessionStore.open(db)
    try:
        ids = []
        for text in ("one", "two"):
            sid = await store.create_session(f"Say {text}.", {})
            log = SessionLog(sid).start(f"Say {text}.").model(text=text).finish(text)
            await log.append_to(store)
            ids.append(sid)
    finally:
        await store.close()
    code = await asyncio.to_thread(main, ["sessions", "watch", *ids, "--json", "--sessions", db])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for sid in ids:
        assert [(e["seq"], e["type"]) for e in lines if e["session_id"] == sid] == [
            (1, "session_started"), (2, "model_response"), (3, "session_finished")]


def test_off_a_terminal_a_waiting_call_is_one_line_with_how_to_decide():
    import io

    out = io.StringIO()
    view = LiveView(Console(file=out, width=200), live=False)
    log = waiting_log()
    for event in log.events:
        view.on_event(event)
    text = out.getvalue()
    assert f"fs_write waits for approval: notes.md; decide with: brainhands sessions approve {log.session_id} c1" in text
    assert "session waiting for a person: 1 call to decide" in text
    assert not view.asks  # no prompt where no one can answer it


async def test_always_approves_the_hand_for_the_rest_of_the_session_and_a_brain_waiting_in_process_goes_on(make_brain, recorder, store):
    from brain import ScriptedModel
    from brain.inbox import decide

    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": "one"}]]},
        {"tool_calls": [["echo", {"text": "two"}], ["echo", {"text": "three"}]]},
        {"text": "Echoed thrice."},
    ])
    events = []
    brain = make_brain(model, events=events, approve=("ech*",))
    brain.wait_for_decisions, brain.poll = True, 0.05  # as `brainhands run` on a terminal: it waits, holding no lease
    run = asyncio.create_task(brain.run("Echo three times."))

    async def waiting():
        return any(e.type == ev.SESSION_WAITING for e in events)

    await poll(waiting, "the session to wait for the first echo")
    sid = events[0].session_id
    info = await store.get_session(sid)
    assert info.status == "waiting" and info.lease_owner is None
    await decide(store, sid, None, approved=True, by="ana", always=True)
    result = await asyncio.wait_for(run, 30)
    assert (result.status, result.text) == ("finished", "Echoed thrice.")
    types = [e.type for e in events]
    assert types.count(ev.APPROVAL_REQUESTED) == 1 and types.count(ev.SESSION_RESUMED) == 1
    assert sorted(e.data["input"]["text"] for e in events if e.type == ev.TOOL_CALL_STARTED) == ["one", "three", "two"]
