"""A hand service as a real process: the CLI serves it, and SIGTERM drains it without dropping a call."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hands import HandClient
from tests.procs import ROOT, start_service

pytestmark = pytest.mark.system


@pytest.fixture
def hand_process():
    started = []

    def _start(*args, **kwargs):
        service = start_service(["serve", "hand", *args], **kwargs)
        started.append(service)
        return service

    yield _start
    for service in started:
        service.stop()


async def test_sigterm_finishes_the_call_in_flight_refuses_new_ones_and_exits_zero(hand_process):
    service = hand_process("tests.hands.sample_hands", "--port", "0")
    async with HandClient(service.address) as client, grpc.aio.insecure_channel(service.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await anext(aiter(watch))
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        in_flight = asyncio.create_task(client.execute("nap", {"seconds": 1.5}, timeout=20))
        await asyncio.sleep(0.3)  # let the call reach the hand before the signal
        service.signal(signal.SIGTERM)

        second = await asyncio.wait_for(anext(aiter(watch)), timeout=5)
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.execute("echo", {"text": "late"}, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        result = await in_flight
        assert result.output == "slept 1.5"
    assert await asyncio.to_thread(service.proc.wait, 15) == 0


async def test_cli_lists_and_calls_a_served_hand(hand_process):
    service = hand_process("examples.word_count", "--port", "0")
    proc = await asyncio.create_subprocess_exec(
        "brainhands", "hands", "call", "word_count", '{"text": "one two three"}', "--target", service.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().strip() == "3"
    proc = await asyncio.create_subprocess_exec(
        "brainhands", "hands", "list", "--target", service.address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.decode().startswith("word_count  Count the words in a text.")


async def test_cli_says_plainly_when_nothing_listens():
    proc = await asyncio.create_subprocess_exec(
        "brainhands", "hands", "list", "--target", "127.0.0.1:9",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2
    assert len(lines) == 1 and lines[0].startswith("brainhands: cannot reach 127.0.0.1:9")
    assert "Traceback" not in err.decode()


async def test_serving_a_module_without_hands_is_one_clear_line():
    proc = await asyncio.create_subprocess_exec(
        "brainhands", "serve", "hand", "no.such.module", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().strip() == "brainhands: cannot import hand module 'no.such.module': No module named 'no'"


async def test_a_port_in_use_is_one_clear_line_and_modules_load_from_the_current_directory(tmp_path):
    import socket

    (tmp_path / "my_hands.py").write_text(
        "from hands import hand\n\n@hand(description='Say hi.')\nasync def hi() -> str:\n    return 'hi'\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            "brainhands", "serve", "hand", "my_hands", "--port", str(port),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await proc.communicate()
    assert proc.returncode == 2
    # One line: ours, without the gRPC core's own log line ahead of it.
    assert err.decode().strip().splitlines() == [
        f"brainhands: could not listen on 127.0.0.1:{port}: the port is in use (another service, or one still stopping?)"
    ]


async def _run(*argv: str, cwd=None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


async def test_a_hand_file_serves_from_any_directory_by_path(hand_process, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    service = hand_process(str(ROOT / "examples" / "word_count.py"), "--port", "0", cwd=elsewhere, timeout=90)
    async with HandClient(service.address) as client:
        assert (await client.execute("word_count", {"text": "one two"}, timeout=20)).output == "2"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "words.py").write_text("SEP = ' '\n")
    (tmp_path / "mine" / "splitter.py").write_text(
        "from hands import hand\nfrom words import SEP\n\n"
        "@hand(description='Split a text.')\nasync def split(text: str) -> str:\n    return '|'.join(text.split(SEP))\n"
    )
    relative = hand_process("mine/splitter.py", "--port", "0", cwd=tmp_path, timeout=90)
    async with HandClient(relative.address) as client:
        assert (await client.execute("split", {"text": "a b"}, timeout=20)).output == "a|b"


async def test_a_hand_module_with_a_syntax_error_is_one_line(tmp_path):
    (tmp_path / "typo.py").write_text("from hands import hand\n\n@hand(description='x')\nasync def f(:\n")
    code, _, err = await _run("brainhands", "serve", "hand", "typo", "--port", "0", cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [f"brainhands: syntax error in hand module {tmp_path / 'typo.py'}:4: invalid syntax"]


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", help_text)) - {"--help"}


async def test_every_python_m_entry_point_takes_the_flags_of_serve_hand():
    code, serve_help, _ = await _run("brainhands", "serve", "hand", "--help")
    assert code == 0 and {"--port", "--register", "--max-concurrency", "--timeout"} <= _flags(serve_help)
    modules = ["hands.builtin.fs", "hands.builtin.sandbox", "hands.builtin.llm", "hands.builtin.memory", "brain.agent"]
    helps = await asyncio.gather(*(_run(sys.executable, "-m", module, "--help", cwd=ROOT) for module in modules))
    for module, (code, out, err) in zip(modules, helps, strict=True):
        assert code == 0, err
        assert _flags(out) == _flags(serve_help), module
