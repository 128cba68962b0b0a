"""brainhands_brain_* and brainhands_hand_*: served over HTTP, parsed with prometheus_client, moved by exactly the calls made."""

from __future__ import annotations

import asyncio
import os
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from brain import ScriptedModel, open_store
from brain.metrics import BrainMetrics
from brain.service import BrainServiceConfig, start_brain_service
from brain.v1 import brain_pb2, brain_pb2_grpc
from hands import HandClient, HandError, hand
from hands.metrics import HandMetrics

USAGE_1 = {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 50, "cache_creation_input_tokens": 5}
USAGE_2 = {"input_tokens": 200, "output_tokens": 10, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
release = asyncio.Event()


@hand(description="Echo the text back.")
async def echo(text: str) -> str:
    return f"echo: {text}"


@hand(description="Always fails the way a hand reports a failure.")
async def broken() -> str:
    raise HandError("the disk is on fire")


@hand(description="Wait until the test lets it go.")
async def hold() -> str:
    await release.wait()
    return "held"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample on /metrics as {(name, sorted labels): value}, through prometheus_client's own parser."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
async def hand_metrics(hand_service):
    metrics = HandMetrics()
    port = metrics.serve("127.0.0.1:0")
    backend = await hand_service([echo, broken, hold], metrics=metrics)
    yield backend, port
    metrics.close()


async def test_a_hand_service_counts_each_call_by_hand_and_outcome_with_its_duration_and_in_flight(hand_metrics):
    backend, port = hand_metrics
    before = scrape(port)
    assert value(before, "brainhands_hand_calls_total", hand="echo", outcome="ok") == 0
    async with HandClient(backend.address) as client:
        for text in ("a", "b", "c"):
            await client.execute("echo", {"text": text}, timeout=5)
        assert (await client.execute("broken", {}, timeout=5)).is_error
        with pytest.raises(grpc.aio.AioRpcError):
            await client.execute("nosuch", {}, timeout=5)
        assert (await client.execute("echo", {"text": 3}, timeout=5)).is_error  # fails the schema
        held = asyncio.create_task(client.execute("hold", {}, timeout=10))
        for _ in range(200):  # bounded: until the held call is in flight
            if value(scrape(port), "brainhands_hand_calls_in_flight", hand="hold") == 1:
                break
            await asyncio.sleep(0.02)
        during = scrape(port)
        release.set()
        assert (await held).output == "held"
    after = scrape(port)
    assert value(during, "brainhands_hand_calls_in_flight", hand="hold") == 1
    assert value(after, "brainhands_hand_calls_in_flight", hand="hold") == 0
    assert value(after, "brainhands_hand_calls_in_flight", hand="echo") == 0
    assert value(after, "brainhands_hand_calls_total", hand="echo", outcome="ok") == 3
    assert value(after, "brainhands_hand_calls_total", hand="echo", outcome="is_error") == 1
    assert value(after, "brainhands_hand_calls_total", hand="broken", outcome="is_error") == 1
    assert value(after, "brainhands_hand_calls_total", hand="unknown", outcome="NOT_FOUND") == 1
    assert value(after, "brainhands_hand_calls_total", hand="hold", outcome="ok") == 1
    assert value(after, "brainhands_hand_call_duration_seconds_count", hand="echo") == 4
    assert value(after, "brainhands_hand_call_duration_seconds_bucket", hand="echo", le="+Inf") == 4


async def test_the_brain_service_counts_sessions_turns_tool_calls_and_tokens(tmp_path, hand_metrics):
    backend, hand_port = hand_metrics
    model = ScriptedModel([
        {"tool_calls": [["echo", {"text": "a"}], ["echo", {"text": "b"}], ["broken", {}]], "usage": USAGE_1},
        {"text": "done", "usage": USAGE_2},
    ])  # fmt: skip
    metrics = BrainMetrics(tenant="acme")
    port = metrics.serve("127.0.0.1:0")
    store = await open_store(str(tmp_path / "sessions.db"))
    config = BrainServiceConfig(gateway=backend.address, port=0, model="scripted:unused")
    running = await start_brain_service(config, model=model, store=store, metrics=metrics)
    try:
        before = scrape(port)
        assert value(before, "brainhands_brain_approvals_waiting") == 0
        assert value(before, "brainhands_brain_sessions_total", status="started") == 0
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = brain_pb2_grpc.BrainServiceStub(channel)
            events = [e async for e in stub.Run(brain_pb2.RunRequest(task="count things"), timeout=30)]
        assert events[-1].type == "session_finished"
        after = scrape(port)
        # A session another brain left running (its log ends after the first turn's calls) is adopted by Wake.
        logged = await store.events(events[0].session_id)
        orphan = await store.create_session("count things", {}, None)
        for event in logged[:-2]:
            await store.append(orphan, event.seq, event.type, event.data)
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = brain_pb2_grpc.BrainServiceStub(channel)
            woken = [e async for e in stub.Wake(brain_pb2.WakeRequest(session_id=orphan), timeout=30)]
        assert woken[-1].type == "session_finished"
        adopted = scrape(port)
    finally:
        await running.drain(0)
        await store.close()
        metrics.close()
    assert value(after, "brainhands_brain_sessions_total", status="started") == 1
    assert value(after, "brainhands_brain_sessions_total", status="finished") == 1
    assert value(after, "brainhands_brain_sessions_total", status="failed") == 0
    assert value(after, "brainhands_brain_sessions_running") == 0
    assert value(after, "brainhands_brain_turns_total", model="scripted") == 2
    assert value(after, "brainhands_brain_tool_calls_total", hand="echo", outcome="ok") == 2
    assert value(after, "brainhands_brain_tool_calls_total", hand="broken", outcome="is_error") == 1
    assert value(after, "brainhands_brain_tokens_total", tenant="acme", kind="input") == 300
    assert value(after, "brainhands_brain_tokens_total", tenant="acme", kind="output") == 30
    assert value(after, "brainhands_brain_tokens_total", tenant="acme", kind="cache_read") == 50
    assert value(after, "brainhands_brain_tokens_total", tenant="acme", kind="cache_creation") == 5
    assert value(after, "brainhands_brain_approvals_waiting") == 0
    assert value(after, "brainhands_brain_sessions_adopted_total", how="wake") == 0
    assert value(adopted, "brainhands_brain_sessions_adopted_total", how="wake") == 1
    assert value(adopted, "brainhands_brain_sessions_adopted_total", how="orphan") == 0
    assert value(adopted, "brainhands_brain_sessions_total", status="started") == 1  # a wake starts nothing new
    assert value(adopted, "brainhands_brain_sessions_total", status="finished") == 2
    assert value(adopted, "brainhands_brain_turns_total", model="scripted") == 3
    assert value(adopted, "brainhands_brain_tool_calls_total", hand="echo", outcome="ok") == 2
    hands_after = scrape(hand_port)
    assert value(hands_after, "brainhands_hand_calls_total", hand="echo", outcome="ok") == 2
    assert value(hands_after, "brainhands_hand_calls_total", hand="broken", outcome="is_error") == 1


@pytest.mark.parametrize("command", [["serve", "hand", "hands.builtin.fs"], ["serve", "brain", "--gateway", "127.0.0.1:1", "--model", "scripted:x.json"]])
async def test_a_bad_metrics_address_is_one_line_and_exit_2(command, brainhands_procs):
    proc = await brainhands_procs(*command, "--metrics", "nowhere")
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, err.decode()
    assert "--metrics" in lines[0] and "HOST:PORT" in lines[0] and "Traceback" not in err.decode()


@pytest.mark.system
async def test_serve_hand_with_metrics_serves_brainhands_hand_metrics(tmp_path, brainhands_procs):
    from brainhands.stack import free_port, wait_serving

    port, metrics_port = free_port(), free_port()
    (tmp_path / "notes.txt").write_text("hi\n")
    os.environ["BRAINHANDS_WORKSPACE"] = str(tmp_path)  # read by the fs hand's process at start
    try:
        proc = await brainhands_procs("serve", "hand", "hands.builtin.fs", "--port", str(port),
                                      "--metrics", f"127.0.0.1:{metrics_port}")  # fmt: skip
    finally:
        del os.environ["BRAINHANDS_WORKSPACE"]
    assert await wait_serving(f"127.0.0.1:{port}", 60), (await proc.stderr.read(4000)).decode()
    async with HandClient(f"127.0.0.1:{port}") as client:
        assert "notes.txt" in (await client.execute("fs_list", {"path": "."}, timeout=10)).output
        assert (await client.execute("fs_read", {"path": "missing.txt"}, timeout=10)).is_error
    samples = scrape(metrics_port)
    assert value(samples, "brainhands_hand_calls_total", hand="fs_list", outcome="ok") == 1
    assert value(samples, "brainhands_hand_calls_total", hand="fs_read", outcome="is_error") == 1
    assert value(samples, "brainhands_hand_call_duration_seconds_count", hand="fs_list") == 1
