"""A brain service SIGKILLed mid fan-out; a second one started with --adopt finishes its sessions on its own: the logs
complete, the results right, every non-idempotent call executed exactly once. Real processes throughout: a hand
service, a gateway, two `brainhands serve brain` on one PostgreSQL store, the anthropic SDK against the scripted
Messages API."""

from __future__ import annotations

import asyncio
import json
import signal

import grpc
import pytest

from brain import open_store
from brain.v1 import brain_pb2, brain_pb2_grpc
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply, tool_results
from tests.pg_schema import private_schema
from tests.procs import poll
from tests.system.adopt_hands import HALF
from tests.system.gateway_stack import Stack
from tests.system.test_brain_service import SCRUBBED

pytestmark = pytest.mark.system

TASKS = ("Act for Ada.", "Act for Bo.")
ACTS = 2 * HALF  # calls per session: half finish while no brain is alive, half are still running when re-issued


def answer(body: dict) -> dict:
    """The model: fan out ACTS calls, then, given their results, say whose they were (the task names it)."""
    task = json.dumps(body["messages"][0]["content"])
    who = "Ada" if "Ada" in task else "Bo"
    if tool_results(body):
        outputs = sorted(r["content"][0]["text"] if isinstance(r["content"], list) else r["content"]
                         for r in tool_results(body))  # fmt: skip
        return text_reply(f"{who}: {', '.join(outputs)}.")
    return tool_reply([("act", {"n": n}) for n in range(ACTS)])


@pytest.fixture
async def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    await s.close()


async def test_a_brain_with_adopt_finishes_a_sigkilled_brains_sessions_running_each_call_once(stack, tmp_path, database_url):
    with ScriptedMessagesAPI(responder=answer) as api:
        async with private_schema(database_url) as sessions:
            hands = await stack.hand("hands", "tests.system.adopt_hands")
            gateway = await stack.gateway(routes=[{"backends": [hands.address]}])
            env = {**{k: "" for k in SCRUBBED}, "ANTHROPIC_BASE_URL": api.base_url, "ANTHROPIC_API_KEY": "test-key"}
            common = ["--gateway", gateway.address, "--sessions", sessions, "--model", "claude-sonnet-5-5"]
            # The second brain stands by from the start: it must leave the first one's live sessions alone.
            first, second = await asyncio.gather(
                stack.brain("brain-1", *common, "--lease-ttl", "2", env=env),
                stack.brain("brain-2", *common, "--adopt", "--adopt-interval", "0.2", env=env),
            )
            store = await open_store(sessions)
            try:
                async with grpc.aio.insecure_channel(first.address) as channel:
                    stub = brain_pb2_grpc.BrainServiceStub(channel)
                    runs = [stub.Run(brain_pb2.RunRequest(task=task), timeout=120) for task in TASKS]
                    sids = [(await run.read()).session_id for run in runs]

                    async def every_call_executing():
                        return len(stack.ledger_entries()) == ACTS * len(TASKS)

                    await poll(every_call_executing, "every call of both sessions to be executing in the hand", 60)
                    for sid in sids:  # the standby left them to the brain driving them
                        assert f":{first.proc.pid}:" in (await store.get_session(sid)).lease_owner
                    first.kill(signal.SIGKILL)
                    assert await asyncio.to_thread(first.proc.wait, 30) == -signal.SIGKILL
                    for run in runs:
                        run.cancel()
                before = {sid: [e.type for e in await store.events(sid)] for sid in sids}
                assert all(types.count("tool_call_started") == ACTS and "tool_call_finished" not in types
                           for types in before.values()), before  # fmt: skip
                # Half the calls finish while no brain drives the sessions (the dead one's lease holds them for 2 s).
                (tmp_path / "gate-early").touch()

                async def reissued():
                    return all([[e.type for e in await store.events(sid)].count("tool_call_started") == 2 * ACTS
                                for sid in sids])  # fmt: skip

                await poll(reissued, "the adopting brain to re-issue every unfinished call", 60)
                (tmp_path / "gate-late").touch()  # the other half were still running when re-issued

                async def finished():
                    return {(await store.get_session(sid)).status for sid in sids} == {"finished"}

                await poll(finished, "the adopted sessions to finish", 60)
                for sid, task in zip(sids, TASKS, strict=True):
                    events = await store.events(sid)
                    assert [e.seq for e in events] == list(range(1, len(events) + 1))
                    assert [e.type for e in events] == before[sid] + ["tool_call_started"] * ACTS + [
                        "tool_call_finished"] * ACTS + ["model_response", "session_finished"]  # fmt: skip
                    outputs = sorted(e.data["output"] for e in events if e.type == "tool_call_finished")
                    assert outputs == [f"acted {n}" for n in range(ACTS)]
                    who = "Ada" if "Ada" in task else "Bo"
                    assert events[-1].data["result"] == f"{who}: {', '.join(outputs)}."
            finally:
                await store.close()
    executions = stack.ledger_counts()
    assert len(executions) == ACTS * len(TASKS) and set(executions.values()) == {1}, f"executions: {dict(executions)}"
    adoptions = [r for r in second.records() if r.get("event") == "adopting session"]
    assert sorted(r["session_id"] for r in adoptions) == sorted(sids)
    assert all(f":{first.proc.pid}:" in r["previous_holder"] for r in adoptions), adoptions
