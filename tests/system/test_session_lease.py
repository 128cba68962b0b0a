"""One brain at a time: two brain processes race to wake a session, one drives, the other is told who holds it."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from brain import open_store
from hands import Context, hand
from tests.pg_schema import private_schema
from tests.procs import poll

pytestmark = pytest.mark.system

LEASE_TTL = 2.0  # seconds; short so the test waits little for a dead brain's lease to run out


@pytest.fixture(params=["sqlite", "postgres"])
async def sessions_url(request, tmp_path):
    """The session store the brains share: a SQLite file, or a private schema of $DATABASE_URL."""
    if request.param == "sqlite":
        yield str(tmp_path / "sessions.db")
        return
    async with private_schema(request.getfixturevalue("database_url")) as url:
        yield url


@pytest.fixture
async def slow_hand(hand_service):
    """A hand service in the test process whose `slow` hand keeps every caller busy until `release` is set."""
    attempts: list[str] = []  # call ids, one entry per attempt
    in_flight: set[str] = set()
    release = asyncio.Event()

    @hand(description="Work for as long as the test wants.", idempotent=True)  # a re-issue runs it again
    async def slow(ctx: Context) -> str:
        attempts.append(ctx.call_id)
        in_flight.add(ctx.call_id)
        try:
            await release.wait()
        finally:
            in_flight.discard(ctx.call_id)
        return "slow work done"

    running = await hand_service([slow])
    return f"127.0.0.1:{running.port}", attempts, in_flight, release


async def kill(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL


async def test_two_brains_waking_one_session_one_drives_and_a_wake_after_the_holder_dies_finishes(
    sessions_url, slow_hand, brainhands_procs, tmp_path
):
    address, attempts, in_flight, release = slow_hand
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"tool_calls": [["slow", {}]]}, {"text": "The slow work is done."}]))
    common = ["--gateway", address, "--sessions", sessions_url, "--model", f"scripted:{script}", "--json"]

    # A first brain starts the session, calls the slow hand and dies: the session is left running,
    # under a lease that nobody renews.
    first = await brainhands_procs("run", "Do the slow work.", "--lease-ttl", str(LEASE_TTL), *common)
    started = json.loads(await asyncio.wait_for(first.stdout.readline(), 30))
    session_id = started["session_id"]
    assert started["type"] == "session_started"
    store = await open_store(sessions_url)
    try:
        async def slow_call_in_flight():
            return len(in_flight) == 1

        await poll(slow_call_in_flight, "the first brain's call to the slow hand")
        [call_id] = in_flight
        await kill(first)

        async def lease_expired():
            info = await store.get_session(session_id)
            return info.lease_expires_at is None or info.lease_expires_at < time.time()

        await poll(lease_expired, "the dead brain's lease to expire")
        before = [e.type for e in await store.events(session_id)]
        assert before == ["session_started", "model_response", "tool_call_started"]

        # Two brains wake the session at the same moment. --wait 0: a held session is an error at once.
        a, b = await asyncio.gather(*(brainhands_procs("sessions", "wake", session_id, *common) for _ in range(2)))
        done, _ = await asyncio.wait(
            [asyncio.ensure_future(p.wait()) for p in (a, b)], timeout=60, return_when=asyncio.FIRST_COMPLETED
        )
        assert done, "neither brain gave up: both claim to drive the session"
        loser, holder = (a, b) if a.returncode is not None else (b, a)
        assert holder.returncode is None, "both brains exited: nobody drove the session"
        said = (await loser.stderr.read()).decode()
        assert loser.returncode != 0
        # Who holds it (the owner id carries the holder's pid) and until when.
        assert f"session {session_id} is held by " in said and f":{holder.pid}:" in said, said[-2000:]
        assert "until its lease expires (in " in said
        assert (await loser.stdout.read()) == b"", "the brain that lost the race wrote events"

        async def holder_reissued_the_call():
            return attempts.count(call_id) == 2 and len(in_flight) == 1

        await poll(holder_reissued_the_call, "the holder to re-issue the unfinished call with its call_id")
        info = await store.get_session(session_id)
        assert info.lease_owner.split(":")[1] == str(holder.pid)
        # One writer: the holder's re-issued start is the only thing added to the log.
        assert [e.type for e in await store.events(session_id)] == before + ["tool_call_started"]

        # The holder dies too. Its lease outlives it; a wake that waits for it then finishes the work.
        await kill(holder)
        release.set()
        last = await brainhands_procs("sessions", "wake", session_id, "--wait", "30", *common)
        out, err = await asyncio.wait_for(last.communicate(), 90)
        assert last.returncode == 0, err.decode()[-2000:]
        result = json.loads(out.decode().splitlines()[-1])
        assert (result["status"], result["text"]) == ("finished", "The slow work is done.")

        events = await store.events(session_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.type for e in events] == before + [
            "tool_call_started", "tool_call_started", "tool_call_finished", "model_response", "session_finished",
        ]
        assert {e.data["call_id"] for e in events if e.type.startswith("tool_call")} == {call_id}
        assert attempts == [call_id] * 3, "the one call was not re-issued with its call_id by each brain that drove"
        info = await store.get_session(session_id)
        assert info.status == "finished" and info.lease_owner is None
    finally:
        await store.close()
