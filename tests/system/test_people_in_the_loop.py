"""People in the loop, with real processes and the real anthropic SDK against the scripted Messages API:
a run that waits for approval outlives its brain, decisions from another process, steering with an interrupt."""

from __future__ import annotations

import asyncio
import json

import pytest

from brain import open_store
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply, tool_results
from hands import Context, hand
from hands.builtin.fs import make_fs_hands
from tests.procs import poll

pytestmark = pytest.mark.system

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def api(monkeypatch):
    with ScriptedMessagesAPI() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        for name in ("BRAINHANDS_GATEWAY", "BRAINHANDS_SESSIONS", "BRAINHANDS_MODEL", "BRAINHANDS_BRAIN"):
            monkeypatch.delenv(name, raising=False)
        yield server


async def finish(proc, timeout=90):
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def write_call(path="out.md", content="approved\n", call_id="toolu_write"):
    return tool_reply([{"name": "fs_write", "id": call_id, "input": {"path": path, "content": content}}])


@pytest.fixture
async def fs(hand_service, tmp_path):
    """The real fs hands on a workspace, served from the test process (a local stack per CLI call would be slow)."""
    workspace = tmp_path / "project"
    workspace.mkdir()
    running = await hand_service(make_fs_hands(workspace))
    return f"127.0.0.1:{running.port}", workspace


async def start_waiting(brainhands_procs, tmp_path, api, fs, *replies):
    """`run --approve fs_write` until it exits with the session waiting; (session id, db, gateway)."""
    gateway, _ = fs
    db = str(tmp_path / "sessions.db")
    api.script(write_call(), *replies)
    proc = await brainhands_procs("run", "Write out.md.", "--approve", "fs_write", "--model", MODEL, "--sessions", db,
                                  "--gateway", gateway, "--json")
    code, out, err = await finish(proc)
    assert code == 3, err[-2000:]
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "waiting", result
    assert "sessions approve" in err
    return result["session_id"], db, gateway


async def decide(brainhands_procs, *args):
    code, out, err = await finish(await brainhands_procs("sessions", *args))
    assert code == 0, err[-2000:]
    return out


async def wake(brainhands_procs, session_id, db, gateway):
    code, out, err = await finish(await brainhands_procs("sessions", "wake", session_id, "--sessions", db,
                                                         "--gateway", gateway, "--json"))
    assert code == 0, err[-2000:]
    return json.loads(out.splitlines()[-1])


async def test_an_approval_waits_past_its_brain_and_a_new_brain_runs_the_call_once_approved(brainhands_procs, tmp_path, api, fs):
    workspace = fs[1]
    session_id, db, gateway = await start_waiting(brainhands_procs, tmp_path, api, fs, text_reply("Wrote out.md."))
    # The brain process has exited; the session waits in the log, held by no one, and nothing was written.
    assert not (workspace / "out.md").exists()
    store = await open_store(db)
    try:
        info = await store.get_session(session_id)
        assert info.status == "waiting"
        assert info.lease_owner is None or (info.lease_expires_at or 0) < __import__("time").time() + 0.001
        types = [e.type for e in await store.events(session_id)]
        assert "approval_requested" in types and "tool_call_started" not in types
    finally:
        await store.close()

    out = await decide(brainhands_procs, "approve", session_id, "--sessions", db)
    assert "toolu_write" in out and "approved" in out
    result = await wake(brainhands_procs, session_id, db, gateway)
    assert (result["status"], result["text"]) == ("finished", "Wrote out.md.")
    assert (workspace / "out.md").read_text() == "approved\n"

    store = await open_store(db)
    try:
        events = await store.events(session_id)
        decided = [e for e in events if e.type == "approval_decided"]
        assert len(decided) == 1 and decided[0].data["approved"] is True and decided[0].data["by"]
        assert (await store.get_session(session_id)).status == "finished"
    finally:
        await store.close()
    # The session's own record shows the approval and who gave it.
    code, out, err = await finish(await brainhands_procs("sessions", "show", session_id, "--sessions", db))
    assert code == 0, err
    assert "approved by" in out


async def test_a_denial_reaches_the_model_as_an_error_with_the_reason(brainhands_procs, tmp_path, api, fs):
    workspace = fs[1]
    session_id, db, gateway = await start_waiting(brainhands_procs, tmp_path, api, fs, text_reply("Left it alone."))
    await decide(brainhands_procs, "deny", session_id, "--reason", "not in this repository", "--sessions", db)
    result = await wake(brainhands_procs, session_id, db, gateway)
    assert (result["status"], result["text"]) == ("finished", "Left it alone.")
    assert not (workspace / "out.md").exists()
    [denied] = tool_results(api.bodies[-1])
    assert denied["tool_use_id"] == "toolu_write" and denied["is_error"] is True
    assert "not in this repository" in json.dumps(denied["content"])


async def test_an_edited_input_is_what_runs(brainhands_procs, tmp_path, api, fs):
    workspace = fs[1]
    session_id, db, gateway = await start_waiting(brainhands_procs, tmp_path, api, fs, text_reply("Wrote the edit."))
    edited = json.dumps({"path": "edited.md", "content": "edited\n"})
    await decide(brainhands_procs, "approve", session_id, "toolu_write", "--input", edited, "--sessions", db)
    result = await wake(brainhands_procs, session_id, db, gateway)
    assert result["status"] == "finished"
    assert (workspace / "edited.md").read_text() == "edited\n"
    assert not (workspace / "out.md").exists()
    store = await open_store(db)
    try:
        [decided] = [e for e in await store.events(session_id) if e.type == "approval_decided"]
        assert decided.data["input"] == json.loads(edited)
    finally:
        await store.close()


async def test_bad_decisions_are_one_line_errors(brainhands_procs, tmp_path, api, fs):
    session_id, db, gateway = await start_waiting(brainhands_procs, tmp_path, api, fs)
    for args, says in (
        (["approve", session_id, "toolu_nope"], "has no approval request for call toolu_nope"),
        (["approve", session_id, "--input", "{not json"], "--input: not JSON"),
        (["deny", session_id, "--reason", "  "], "--reason: say why"),
        (["approve", "no-such-session"], "no session no-such-session"),
    ):
        code, out, err = await finish(await brainhands_procs("sessions", *args, "--sessions", db))
        assert code != 0 and "Traceback" not in err
        assert says in err, (args, err)


@pytest.fixture
async def slow_hands(hand_service):
    """`slow` hangs until it is cancelled, counting the calls in flight; `fast` answers at once."""
    in_flight: set[str] = set()
    cancelled: set[str] = set()

    # Idempotent: a hand service stops an idempotent call its caller cancelled (a non-idempotent one runs on to its
    # end, for the exactly-once answer to a repeat), so the interrupt reaches the hand itself.
    @hand(description="Take forever.", idempotent=True)
    async def slow(n: int, ctx: Context) -> str:
        in_flight.add(ctx.call_id)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.add(ctx.call_id)
            raise
        finally:
            in_flight.discard(ctx.call_id)
        return "never"

    running = await hand_service([slow])
    return f"127.0.0.1:{running.port}", in_flight, cancelled


async def test_say_interrupt_cancels_a_slow_fan_out_and_the_next_turn_reads_the_message(brainhands_procs, tmp_path, api, slow_hands):
    address, in_flight, cancelled = slow_hands
    db = str(tmp_path / "sessions.db")
    api.script(tool_reply([{"name": "slow", "id": f"toolu_slow{i}", "input": {"n": i}} for i in range(3)]),
               text_reply("Stopped as asked."))
    proc = await brainhands_procs("run", "Do three slow things.", "--gateway", address, "--model", MODEL,
                                  "--sessions", db, "--json")
    first = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
    session_id = first["session_id"]

    async def all_in_flight():
        return len(in_flight) == 3

    await poll(all_in_flight, "the three slow calls to be in flight")
    await decide(brainhands_procs, "say", session_id, "Stop; the answer is 42.", "--interrupt", "--sessions", db)
    code, out, err = await finish(proc)
    assert code == 0, err[-2000:]
    assert json.loads(out.splitlines()[-1])["text"] == "Stopped as asked."
    await poll(lambda: asyncio.sleep(0, len(cancelled) == 3), "the hands to see their calls cancelled")

    body = api.bodies[-1]
    results = tool_results(body)
    assert sorted(r["tool_use_id"] for r in results) == ["toolu_slow0", "toolu_slow1", "toolu_slow2"]
    assert all(r["is_error"] and "cancelled by a person" in json.dumps(r["content"]) for r in results)
    last_user = body["messages"][-1]["content"]
    assert any(b.get("type") == "text" and "Stop; the answer is 42." in b["text"] for b in last_user)

    store = await open_store(db)
    try:
        types = [e.type for e in await store.events(session_id)]
    finally:
        await store.close()
    assert types.index("user_message") < types.index("calls_interrupted") < types.index("session_finished")
