"""The hand SDK as a user meets it: decorating, describing, serving, and every status a hand service gives."""

from __future__ import annotations

import json

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from structlog.testing import capture_logs

from hands import HandServiceConfig, hand
from hands.v1 import hands_pb2, hands_pb2_grpc
from tests.hands import sample_hands


async def test_health_check_reports_serving_through_the_standard_client(hand_service):
    running = await hand_service(sample_hands.HANDS)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        named = await stub.Check(health_pb2.HealthCheckRequest(service="hands.v1.HandService"))
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert named.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_hand_service(hand_service):
    running = await hand_service(sample_hands.HANDS)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = []
        async for response in responses:
            services = [s.name for s in response.list_services_response.service]
            break
    assert "hands.v1.HandService" in services
    assert "grpc.health.v1.Health" in services


async def test_describe_gives_a_schema_matching_the_signature(hand_service):
    running = await hand_service(sample_hands.HANDS)
    async with grpc.aio.insecure_channel(running.address) as channel:
        response = await hands_pb2_grpc.HandServiceStub(channel).Describe(hands_pb2.DescribeRequest())
    specs = {s.name: s for s in response.hands}
    assert set(specs) == {"echo", "nap", "buggy", "picky", "whoami", "kinds"}
    assert specs["echo"].idempotent and not specs["nap"].idempotent
    assert specs["echo"].description == "Repeat the text back, n times."
    schema = json.loads(specs["kinds"].input_schema_json)
    assert schema["type"] == "object"
    assert schema["required"] == ["path"]
    props = schema["properties"]
    assert props["path"] == {"type": "string", "description": "a path relative to the workspace"}
    assert props["mode"] == {"enum": ["r", "w"], "default": "r"}
    assert props["tags"]["anyOf"][0] == {"type": "array", "items": {"type": "string"}}
    assert props["limits"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert props["ratio"] == {"type": "number", "default": 0.5}
    assert props["strict"] == {"type": "boolean", "default": False}
    assert "ctx" not in json.loads(specs["whoami"].input_schema_json)["properties"]


async def test_a_call_runs_the_hand_and_passes_call_context(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS)
    client = hand_client(running.address)
    assert (await client.execute("echo", {"text": "ab", "n": 3})).output == "ababab"
    result = await client.execute("whoami", {}, call_id="c-1", session_id="s-1", metadata={"x-brainhands-depth": "2"})
    assert result.output == "c-1|s-1|2"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (7, 3)


@pytest.mark.parametrize(
    ("name", "needle"),
    [("", "empty"), ("Bad Name", "must match"), ("9lives", "must match"), ("x" * 65, "must match")],
)
async def test_malformed_names_are_invalid_argument(hand_service, hand_client, name, needle):
    running = await hand_service(sample_hands.HANDS)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hand_client(running.address).execute(name, "{}")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


async def test_input_over_the_size_limit_is_invalid_argument(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS, config=HandServiceConfig(max_input_bytes=1000))
    client = hand_client(running.address)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.execute("echo", {"text": "x" * 2000})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limit is 1000" in err.value.details()
    assert (await client.execute("echo", {"text": "still serving"})).output == "still serving"


async def test_unknown_hand_is_not_found(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hand_client(running.address).execute("fs_read", "{}")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('{"text": 5}', "text: 5 is not of type 'string'"),
        ("{}", "'text' is a required property"),
        ('{"text": "a", "extra": 1}', "Additional properties are not allowed"),
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
async def test_input_not_matching_the_schema_is_an_error_the_model_sees(hand_service, hand_client, raw, needle):
    running = await hand_service(sample_hands.HANDS)
    result = await hand_client(running.address).execute("echo", raw)
    assert result.is_error
    assert needle in result.output


async def test_hand_error_is_is_error_with_its_message(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS)
    result = await hand_client(running.address).execute("picky", {"word": "zyx"})
    assert result.is_error and result.output == "no such word: zyx"


async def test_caller_deadline_gives_deadline_exceeded(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await hand_client(running.address).execute("nap", {"seconds": 5}, timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_service_timeout_inside_the_hand_is_is_error(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS, config=HandServiceConfig(default_timeout=0.2))
    result = await hand_client(running.address).execute("nap", {"seconds": 5}, timeout=10)
    assert result.is_error and "timed out after 0.2s" in result.output


async def test_a_bug_is_internal_with_a_correlation_id_and_no_traceback(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS)
    with capture_logs() as logs, pytest.raises(grpc.aio.AioRpcError) as err:
        await hand_client(running.address).execute("buggy", {})
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details()
    assert "correlation id" in details
    assert "Traceback" not in details and "hunter2" not in details and "RuntimeError" not in details
    correlation_id = details.rsplit(" ", 1)[-1].rstrip(")")
    logged = [entry for entry in logs if entry.get("correlation_id") == correlation_id]
    assert logged and logged[0]["log_level"] == "error"


async def test_one_log_line_per_call_with_outcome(hand_service, hand_client):
    running = await hand_service(sample_hands.HANDS)
    client = hand_client(running.address)
    with capture_logs() as logs:
        await client.execute("echo", {"text": "x"}, call_id="call-42")
        await client.execute("picky", {"word": "x"})
        with pytest.raises(grpc.aio.AioRpcError):
            await client.execute("nope", "{}")
    calls = [entry for entry in logs if entry["event"] == "call"]
    assert [(c["hand"], c["code"], c["is_error"]) for c in calls] == [
        ("echo", "OK", False),
        ("picky", "OK", True),
        ("nope", "NOT_FOUND", False),
    ]
    assert all("duration_ms" in c for c in calls)


async def test_concurrency_limit_queues_calls_instead_of_running_them_all(hand_service, hand_client):
    import asyncio

    peak = 0
    running_now = 0

    @hand(description="Counts how many run at once.")
    async def counted() -> str:
        nonlocal peak, running_now
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.05)
        running_now -= 1
        return "ok"

    running = await hand_service([counted], config=HandServiceConfig(max_concurrency=3))
    client = hand_client(running.address)
    results = await asyncio.gather(*(client.execute("counted", "{}") for _ in range(12)))
    assert all(r.output == "ok" for r in results)
    assert peak == 3


def test_decorator_checks_the_signature_early():
    with pytest.raises(TypeError, match="async def"):
        @hand(description="sync")
        def sync_fn(x: str) -> str:
            return x

    with pytest.raises(TypeError, match="needs a type hint"):
        @hand(description="untyped")
        async def untyped(x) -> str:
            return x

    with pytest.raises(ValueError, match="must match"):
        @hand(name="Bad Name", description="bad")
        async def bad(x: str) -> str:
            return x

    with pytest.raises(ValueError, match="needs a description"):
        @hand
        async def undocumented(x: str) -> str:
            return x

    with pytest.raises(TypeError, match="no JSON schema"):
        @hand(description="odd type")
        async def odd(x: complex) -> str:
            return ""


def test_explicit_schema_is_checked_against_the_signature():
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}

    @hand(description="search", input_schema=schema)
    async def search(q: str) -> str:
        return q

    assert search.input_schema == schema
    with pytest.raises(TypeError, match="not parameters"):
        @hand(description="mismatch", input_schema=schema)
        async def other(query: str = "") -> str:
            return query


async def test_duplicate_names_fail_at_start_up(hand_service):
    @hand(name="echo", description="another echo")
    async def echo_again(text: str) -> str:
        return text

    with pytest.raises(ValueError, match="two hands are named 'echo'"):
        await hand_service([sample_hands.echo, echo_again])


def test_load_hands_raises_a_typed_error_not_system_exit(tmp_path):
    from hands import HandLoadError, load_hands

    with pytest.raises(HandLoadError, match="cannot import hand module 'no.such.module'"):
        load_hands("no.such.module")
    with pytest.raises(HandLoadError, match="has no attribute 'NOPE'"):
        load_hands("tests.hands.sample_hands:NOPE")
    broken = tmp_path / "broken_hands.py"
    broken.write_text("from hands import hand\n\nasync def oops(:\n")
    with pytest.raises(HandLoadError, match=r"syntax error in hand module .*broken_hands.py:3"):
        load_hands(str(broken))


def test_load_hands_takes_a_file_path_with_an_attribute(tmp_path):
    from hands import load_hands

    (tmp_path / "helper_words.py").write_text("GREETING = 'hi'\n")  # a sibling module the file imports
    (tmp_path / "file_hands.py").write_text(
        "from hands import hand\nfrom helper_words import GREETING\n\n"
        "@hand(description='Greet.')\nasync def greet() -> str:\n    return GREETING\n\n"
        "@hand(description='Other.')\nasync def other() -> str:\n    return 'x'\n"
    )
    assert [h.name for h in load_hands(str(tmp_path / "file_hands.py"))] == ["greet", "other"]
    assert [h.name for h in load_hands(f"{tmp_path / 'file_hands.py'}:greet")] == ["greet"]


async def test_a_failing_drain_hook_is_logged_and_the_drain_goes_on(hand_service):
    running = await hand_service(sample_hands.HANDS)
    ran = []

    async def gateway_gone() -> None:
        raise ConnectionError("the gateway is gone")

    async def deregister_elsewhere() -> None:
        ran.append("second hook")

    running.on_drain.extend([gateway_gone, deregister_elsewhere])
    with capture_logs() as logs:
        await running.drain(0)
    assert ran == ["second hook"]
    failed = [entry for entry in logs if entry["event"] == "drain hook failed"]
    assert len(failed) == 1 and "gateway_gone" in failed[0]["hook"]


async def test_reflection_v1_answers_too(hand_service):
    """grpcurl and buf ask grpc.reflection.v1 first: the same answers as v1alpha, and a descriptor to decode."""
    running = await hand_service(sample_hands.HANDS)
    async with grpc.aio.insecure_channel(running.address) as channel:
        call = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )(iter([reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="hands.v1.HandService")]))
        listed, described = [response async for response in call]
    services = [s.name for s in listed.list_services_response.service]
    assert "hands.v1.HandService" in services and "grpc.reflection.v1.ServerReflection" in services
    assert described.file_descriptor_response.file_descriptor_proto
