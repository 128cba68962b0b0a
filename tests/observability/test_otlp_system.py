"""The multi-process case: brain service, gateway, a hand service and the agent hand as separate processes, each
exporting over OTLP/gRPC to a receiver built here on the official opentelemetry-proto TraceService; one trace."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from brain.v1 import brain_pb2, brain_pb2_grpc
from brainhands.scripted_api import ScriptedMessagesAPI, text_reply, tool_reply
from brainhands.stack import free_port, wait_serving

pytestmark = pytest.mark.system

MODEL = "claude-test-5"
HANDS_MODULE = textwrap.dedent('''
    from hands import hand

    @hand(description="Echo the text back.")
    async def echo(text: str) -> str:
        return f"echo: {text}"

    @hand(description="Shout the text back.")
    async def shout(text: str) -> str:
        return text.upper()
''')


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span with the service.name of the process that sent it."""

    def __init__(self):
        self.spans: list[tuple[str, object]] = []

    async def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def reply_for(body):
    """The root session fans out to echo, shout and agent; the agent's session calls echo and shout."""
    task = body["messages"][0]["content"][0]["text"]
    turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
    if re.search(r"\bCHILD\b", task):
        return tool_reply([("echo", {"text": "c1"}), ("shout", {"text": "c2"})], model=MODEL) if turn == 0 else text_reply("CHILD done", model=MODEL)
    if turn == 0:
        return tool_reply([("echo", {"text": "a"}), ("shout", {"text": "b"}),
                           ("agent", {"task": "CHILD: look twice", "tools": ["echo", "shout"]})],
                          input_tokens=120, output_tokens=30, cache_read=100, cache_creation=7, model=MODEL)  # fmt: skip
    return text_reply("ROOT done", model=MODEL)


def spawn(args, cwd, env, log_path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "brainhands", *args], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)  # fmt: skip


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = (v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value")
                       else v.bool_value if v.HasField("bool_value") else [x.string_value for x in v.array_value.values])  # fmt: skip
    return out


async def test_a_session_across_four_processes_exports_one_nested_trace_over_otlp(tmp_path):
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    api = ScriptedMessagesAPI(responder=reply_for).start()
    (tmp_path / "tinyhands.py").write_text(HANDS_MODULE)
    ports = {name: free_port() for name in ("hands", "agent", "gateway", "brain")}
    gateway = f"127.0.0.1:{ports['gateway']}"
    (tmp_path / "gateway.yaml").write_text(
        f"listen: {gateway}\nmetrics: null\nroutes:\n"
        f"  - {{hands: [echo, shout], backends: ['127.0.0.1:{ports['hands']}']}}\n"
        f"  - {{hands: [agent], backends: ['127.0.0.1:{ports['agent']}']}}\n"
    )
    env = {
        **os.environ, "BRAINHANDS_LOG_FORMAT": "json", "PYTHONPATH": os.pathsep.join(sys.path),
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}", "OTEL_BSP_SCHEDULE_DELAY": "100",
        "ANTHROPIC_BASE_URL": api.base_url, "ANTHROPIC_API_KEY": "sk-test", "BRAINHANDS_AGENT_MODEL": MODEL,
        "BRAINHANDS_GATEWAY": gateway, "BRAINHANDS_SESSIONS": str(tmp_path / "agent.db"),
    }  # fmt: skip
    commands = {
        "hands": ["serve", "hand", "tinyhands", "--port", str(ports["hands"])],
        "agent": ["serve", "hand", "brain.agent", "--port", str(ports["agent"])],
        "gateway": ["serve", "gateway", "--config", str(tmp_path / "gateway.yaml")],
        "brain": ["serve", "brain", "--port", str(ports["brain"]), "--gateway", gateway, "--model", MODEL,
                  "--sessions", str(tmp_path / "root.db")],
    }  # fmt: skip
    procs = {}
    try:
        for name, args in commands.items():
            procs[name] = spawn(args, tmp_path, env, tmp_path / f"{name}.log")
            ready = await wait_serving(f"127.0.0.1:{ports[name]}", 60, procs[name])
            assert ready, (tmp_path / f"{name}.log").read_text()[-3000:]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['brain']}") as channel:
            stub = brain_pb2_grpc.BrainServiceStub(channel)
            events = [e async for e in stub.Run(brain_pb2.RunRequest(task="ROOT: audit"), timeout=60)]
        assert events[-1].type == "session_finished", [e.type for e in events]
    finally:
        for proc in procs.values():  # SIGTERM: each drains and its SDK exports what is buffered as it exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():  # waited for off the loop: the receiver on it takes their last exports
            try:
                await asyncio.to_thread(proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()
        api.stop()
    deadline = time.monotonic() + 10  # bounded: exports in flight when the processes exited land here
    while time.monotonic() < deadline and not any(s.name == "brain.v1.BrainService/Run" for _, s in receiver.spans):
        await asyncio.sleep(0.1)
    await server.stop(0)

    spans = receiver.spans
    assert len({s.trace_id for _, s in spans}) == 1, sorted({(svc, s.name) for svc, s in spans})
    index = {s.span_id: (svc, s) for svc, s in spans}

    def chain(span):
        names = []
        while span is not None:
            names.append(span.name)
            span = index.get(span.parent_span_id, (None, None))[1]
        return names

    services = {svc for svc, _ in spans}
    assert services == {"brainhands-brain", "brainhands-gateway", "brainhands-agent", "brainhands-echo"}
    child_calls = [s for svc, s in spans if svc == "brainhands-agent" and s.name.startswith("execute_tool ")]
    assert sorted(s.name for s in child_calls) == ["execute_tool echo", "execute_tool shout"]
    for call in child_calls:
        assert chain(call) == [
            call.name, f"chat {MODEL}", "invoke_agent agent", "hand agent", "attempt 1 agent", "gateway agent",
            "execute_tool agent", f"chat {MODEL}", "invoke_agent brainhands", "brain.v1.BrainService/Run",
        ]
        [routed] = [s for svc, s in spans if s.parent_span_id == call.span_id]
        [attempt] = [s for svc, s in spans if s.parent_span_id == routed.span_id]
        [hand_span] = [(svc, s) for svc, s in spans if s.parent_span_id == attempt.span_id]
        assert hand_span[0] == "brainhands-echo" and hand_span[1].name == call.name.replace("execute_tool", "hand")
    root_calls = [s for svc, s in spans if svc == "brainhands-brain" and s.name.startswith("execute_tool ")]
    assert sorted(s.name for s in root_calls) == ["execute_tool agent", "execute_tool echo", "execute_tool shout"]
    [first_turn] = {s.parent_span_id for s in root_calls}
    turn = attrs(index[first_turn][1])
    assert turn["gen_ai.request.model"] == MODEL and turn["gen_ai.response.finish_reasons"] == ["tool_use"]
    assert (turn["gen_ai.usage.input_tokens"], turn["gen_ai.usage.output_tokens"]) == (120, 30)
    assert (turn["gen_ai.usage.cache_read.input_tokens"], turn["gen_ai.usage.cache_creation.input_tokens"]) == (100, 7)
    routed = [attrs(s) for svc, s in spans if svc == "brainhands-gateway" and s.name.startswith("gateway ")]
    assert len(routed) == 5 and all(a["brainhands.code"] == "OK" and a["brainhands.attempts"] == 1 for a in routed)


async def test_brainhands_up_with_otel_sends_each_services_spans_to_the_receiver(tmp_path):
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    (tmp_path / "notes.txt").write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "ANTHROPIC_API_KEY"}
    env.update({"PYTHONPATH": os.pathsep.join(sys.path), "OTEL_BSP_SCHEDULE_DELAY": "100"})
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "brainhands", "up", "--workspace", str(tmp_path), "--otel", f"127.0.0.1:{otlp_port}",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        addresses = {}
        async with asyncio.timeout(120):  # bounded: until `up` has printed every service's address
            while "gateway" not in addresses:
                line = (await up.stdout.readline()).decode()
                assert line, (await up.stderr.read()).decode()[-3000:]
                name, _, address = line.strip().partition(" ")
                addresses[name] = address.strip()
        from hands import HandClient

        async with HandClient(addresses["gateway"]) as client:
            listed = await client.execute("fs_list", {"path": "."}, timeout=30)
        assert "notes.txt" in listed.output
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)  # `up` stops its services, which export what they hold as they exit
        await asyncio.wait_for(up.wait(), 60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and {"brainhands-gateway", "brainhands-fs"} - {svc for svc, _ in receiver.spans}:
        await asyncio.sleep(0.1)
    await server.stop(0)
    by_service = {}
    for svc, span in receiver.spans:
        by_service.setdefault(svc, []).append(span)
    [routed] = [s for s in by_service["brainhands-gateway"] if s.name == "gateway fs_list"]
    [ran] = [s for s in by_service["brainhands-fs"] if s.name == "hand fs_list"]
    assert ran.trace_id == routed.trace_id  # the fs hand's span continues the gateway's trace
