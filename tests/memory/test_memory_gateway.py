"""Memory through a real gateway: tenants from the key the gateway authenticated, and workers sharing findings."""

from __future__ import annotations

import json

import pytest

from brain import Brain, BrainConfig, ScriptedModel, open_store
from brainhands.procs import free_port
from brainhands.scripted_api import text_reply, tool_reply, tool_results
from gateway.config import parse_config
from gateway.server import start_gateway
from gateway.tenants import hash_key
from hands import Context, hand
from hands import metadata as md
from hands.builtin.llm import LLMWorkerConfig, make_llm_hands
from hands.builtin.memory import make_memory_hands
from hands.builtin.memory.sqlite import SqliteMemoryStore

KEY_A = "team-a-secret"
KEY_B = "team-b-secret"


@hand(description="Say which tenant the gateway says the caller is.")
async def whoami(ctx: Context) -> str:
    return ctx.metadata.get(md.TENANT, "(none)")


@pytest.fixture
async def memory_store(tmp_path):
    store = await SqliteMemoryStore.open(str(tmp_path / "memory.db"))
    yield store
    await store.close()


@pytest.fixture
async def stack(hand_service, memory_store, messages_api):
    """A gateway with tenants team-a and team-b in front of the memory hands, whoami and llm_worker."""
    gateway_port = free_port()
    memory = await hand_service([*make_memory_hands(store=memory_store), whoami])
    # The worker reaches its tools through the gateway with its own key, as a deployed llm hand does.
    llm = await hand_service(make_llm_hands(LLMWorkerConfig(
        api_key="sk-test", base_url=messages_api.base_url, gateway=f"127.0.0.1:{gateway_port}", gateway_api_key=KEY_A,
    )))  # fmt: skip
    gw = await start_gateway(parse_config({
        "listen": f"127.0.0.1:{gateway_port}",
        "metrics": None,  # not the default 127.0.0.1:9464: a test on the other worker may hold it
        "tenants": [
            {"name": "team-a", "api_keys": [hash_key(KEY_A)], "allow": ["*"]},
            {"name": "team-b", "api_keys": [hash_key(KEY_B)], "allow": ["*"]},
        ],
        "routes": [
            {"hands": ["memory_*", "whoami"], "backends": [memory.address]},
            {"hands": ["llm_*"], "backends": [llm.address]},
        ],
    }))  # fmt: skip
    yield {"gateway": gw.address, "memory": memory.address}
    await gw.server.stop(0)
    await gw.close()


async def test_the_gateway_sets_the_tenant_it_authenticated_and_drops_one_the_caller_sent(stack, hand_client):
    forged = {md.TENANT: "team-a"}
    as_b = hand_client(stack["gateway"], api_key=KEY_B)
    assert (await as_b.execute("whoami", {}, metadata=forged)).output == "team-b"
    assert (await hand_client(stack["gateway"], api_key=KEY_A).execute("whoami", {})).output == "team-a"


async def test_tenant_b_cannot_read_tenant_a_memory_through_the_gateway(stack, hand_client):
    as_a = hand_client(stack["gateway"], api_key=KEY_A)
    as_b = hand_client(stack["gateway"], api_key=KEY_B)
    put = await as_a.execute("memory_put", {"key": "plan", "value": "acquire globex in march", "namespace": "strategy"})
    assert not put.is_error, put.output

    forged = {md.TENANT: "team-a"}  # claiming to be A changes nothing: the gateway replaces it
    got = await as_b.execute("memory_get", {"key": "plan", "namespace": "strategy"}, metadata=forged)
    assert got.is_error and "acquire" not in got.output and "nothing saved under 'plan'" in got.output
    listed = await as_b.execute("memory_get", {"namespace": "strategy"}, metadata=forged)
    assert "plan" not in listed.output
    found = await as_b.execute("memory_search", {"query": "globex march", "namespace": "strategy"}, metadata=forged)
    assert not found.is_error and "acquire" not in found.output

    # B's entry under the same name is B's own; A still reads its own.
    await as_b.execute("memory_put", {"key": "plan", "value": "b's plan", "namespace": "strategy"})
    assert (await as_a.execute("memory_get", {"key": "plan", "namespace": "strategy"})).output == "acquire globex in march"
    assert (await as_b.execute("memory_get", {"key": "plan", "namespace": "strategy"})).output == "b's plan"


async def test_a_call_that_bypasses_the_gateway_is_refused(stack, hand_client):
    direct = hand_client(stack["memory"])
    response = await direct.execute("memory_get", {"key": "plan", "namespace": "strategy"})
    assert response.is_error and "only served through the gateway" in response.output


async def test_session_memory_needs_a_session_and_a_named_namespace_spans_sessions(stack, hand_client):
    as_a = hand_client(stack["gateway"], api_key=KEY_A)
    no_session = await as_a.execute("memory_put", {"key": "k", "value": "v"})
    assert no_session.is_error and "name a namespace" in no_session.output
    await as_a.execute("memory_put", {"key": "k", "value": "from s1"}, session_id="s1")
    assert (await as_a.execute("memory_get", {"key": "k"}, session_id="s2")).is_error
    assert (await as_a.execute("memory_get", {"key": "k"}, session_id="s1")).output == "from s1"
    await as_a.execute("memory_put", {"key": "k", "value": "shared", "namespace": "proj"}, session_id="s1")
    assert (await as_a.execute("memory_get", {"key": "k", "namespace": "proj"}, session_id="s2")).output == "shared"
    bad = await as_a.execute("memory_get", {"key": "k", "namespace": "../etc"}, session_id="s1")
    assert bad.is_error and "namespace" in bad.output


async def test_the_second_worker_reads_what_the_first_wrote(stack, messages_api, memory_store, tmp_path):
    finding = "export.py drops the last row: range(len(rows) - 1) on line 12"
    # The worker model (the real SDK against the local Messages API): worker 1 saves, worker 2 reads.
    messages_api.script(
        tool_reply([("memory_put", {"key": "export-bug", "value": finding})]),
        text_reply("saved the export bug as export-bug"),
        tool_reply([("memory_get", {"key": "export-bug"})]),
        lambda body: text_reply(f"fix for: {tool_results(body)[0]['content']}"),
    )
    # The orchestrator: brief one worker to save its finding, then a second to read it.
    model = ScriptedModel([
        {"tool_calls": [["llm_worker", {"task": "Find the export bug; save it with memory_put as export-bug.",
                                        "tools": ["memory_put"]}]]},
        {"tool_calls": [["llm_worker", {"task": "Read export-bug with memory_get and propose a fix.",
                                        "tools": ["memory_get"]}]]},
        {"text": "done"},
    ])  # fmt: skip
    store = await open_store(str(tmp_path / "sessions.db"))
    brain = Brain(target=stack["gateway"], model=model, store=store, config=BrainConfig(call_timeout=20), api_key=KEY_A)
    try:
        result = await brain.run("Find and fix the export bug.")
    finally:
        await brain.close()
        await store.close()
    assert result.ok, result.text

    put_result, get_result = tool_results(messages_api.bodies[1])[0], tool_results(messages_api.bodies[3])[0]
    assert not put_result.get("is_error") and "saved 'export-bug'" in put_result["content"]
    assert not get_result.get("is_error") and get_result["content"] == finding
    # The orchestrator saw the second worker's answer built on the first one's finding.
    second = json.dumps(model.requests[2]["messages"][-1]["content"])
    assert f"fix for: {finding}" in second
    # Stored in the root session's memory, for team-a (the worker's key) only.
    entry = await memory_store.get("team-a", f"session:{result.session_id}", "export-bug")
    assert entry is not None and entry.value == finding
    assert await memory_store.get("team-b", f"session:{result.session_id}", "export-bug") is None
