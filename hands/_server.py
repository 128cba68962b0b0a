"""HandService over grpc.aio: validation, concurrency limit, timeouts, what goes in the log line of a call."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Sequence

import grpc
import structlog
from google.protobuf.message import DecodeError
from pydantic import NonNegativeFloat

from hands import dedupe, tracing
from hands import metadata as md
from hands._hand import NAME_RE, Context, Hand, HandError, HandResult, check_unique
from hands.config import ConfigModel, Duration, whole
from hands.serving import RunningServer, note_call, start_server
from hands.v1 import hands_pb2, hands_pb2_grpc

log = structlog.get_logger("hands")

DEFAULT_MAX_INPUT_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads joins valid pairs, so any left is alone


class HandServiceConfig(ConfigModel):
    """Limits for one hand service, fixed at start."""

    max_input_bytes: whole(1) = DEFAULT_MAX_INPUT_BYTES
    max_concurrency: whole(1) = 64
    default_timeout: Duration = 300.0  # seconds a call may run when neither caller nor hand says less
    dedupe_ttl: NonNegativeFloat = dedupe.DEFAULT_TTL  # seconds a finished call's result answers repeats (0: off)
    dedupe_store: str = "memory"  # or redis://host:port/db, shared by replicas of the service
    # A longer output comes back is_error with its first part and a note: it must fit every hop's message limit.
    max_output_bytes: whole(1) = DEFAULT_MAX_OUTPUT_BYTES


class _Malformed:
    """Stands in for request bytes that are not the message, so the handler can answer INVALID_ARGUMENT.

    grpc turns a deserializer's exception into UNKNOWN with the exception's repr; a malformed
    request is the caller's fault and the contract says INVALID_ARGUMENT.
    """

    def __init__(self, error: str):
        self.error = error


def _parse_or_malformed(parse):
    def deserialize(raw: bytes):
        try:
            return parse(raw)
        except DecodeError as exc:
            return _Malformed(str(exc))

    return deserialize


class HandServicer(hands_pb2_grpc.HandServiceServicer):
    """Runs the hands it was given; knows nothing of gateways or brains."""

    def __init__(self, hands: Sequence[Hand], config: HandServiceConfig = HandServiceConfig(), metrics=None):
        self._hands = check_unique(list(hands))
        self._config = config
        self._metrics = metrics  # a hands.metrics.HandMetrics, or None: no metrics
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self._once = dedupe.once(config.dedupe_store, config.dedupe_ttl)
        self._describe = hands_pb2.DescribeResponse(
            hands=[
                hands_pb2.HandSpec(
                    name=h.name,
                    description=h.description,
                    input_schema_json=h.input_schema_json,
                    idempotent=h.idempotent,
                )
                for h in self._hands.values()
            ]
        )

    async def Describe(self, request, context):
        return self._describe

    async def Execute(self, request: hands_pb2.ExecuteRequest, context: grpc.aio.ServicerContext):
        started = time.perf_counter()  # for the duration histogram (the call's log line times itself)
        name = "" if isinstance(request, _Malformed) else request.name
        response = None
        counted = False  # in the in-flight gauge
        try:
            if isinstance(request, _Malformed):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "the request is not a hands.v1.ExecuteRequest (invalid bytes or UTF-8)"
                )
            if not name:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hand name is empty")
            if not NAME_RE.fullmatch(name):  # not match: "echo\n" would pass
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"hand name {name[:80]!r} must match {NAME_RE.pattern}",
                )
            size = len(request.input.encode())
            if size > self._config.max_input_bytes:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input is {size} bytes; the limit is {self._config.max_input_bytes}",
                )
            the_hand = self._hands.get(name)
            if the_hand is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no hand named {name!r} here")
            if self._metrics is not None:
                self._metrics.started(name)
                counted = True
            if tracing.enabled():
                _trace_hand(name, request)
            if self._once is None:
                response = await self._run(the_hand, request, context)
            else:  # a non-idempotent hand runs once per call id; a repeat gets the stored result
                response = await self._once.run(the_hand, request, context, self._run)
            return response
        finally:
            if self._metrics is not None:
                _observe(self._metrics, name if name in self._hands else "unknown", counted, context.code(), response, started)
            note_call(hand=name[:64], is_error=bool(response is not None and response.is_error))

    async def _run(self, the_hand: Hand, request, context) -> hands_pb2.ExecuteResponse:
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        limits = [t for t in (remaining, the_hand.timeout, self._config.default_timeout) if t is not None]
        budget = min(limits)
        hand_limit_binds = remaining is None or (the_hand.timeout or self._config.default_timeout) < remaining
        meta = md.as_dict(context.invocation_metadata())
        try:
            depth = int(meta.get(md.DEPTH, "0"))
        except ValueError:
            depth = 0
        call_id = request.call_id or meta.get(md.CALL_ID, "")
        session_id = request.session_id or meta.get(md.SESSION_ID, "")
        try:
            args = the_hand.parse_input(request.input)
        except HandError as exc:
            return self._response(the_hand.name, str(exc), True)
        if (where := _invalid_unicode(args)) is not None:
            return hands_pb2.ExecuteResponse(
                output=f"invalid input for {the_hand.name}: {where} holds invalid Unicode (a lone surrogate such as "
                "\\udce9, which is not a character); send text as valid UTF-8",
                is_error=True,
            )
        if the_hand.takes_ctx:
            args["ctx"] = Context(
                call_id=call_id,
                session_id=session_id,
                deadline=loop.time() + budget,
                metadata=meta,
                logger=log.bind(hand=the_hand.name),
                depth=depth,
            )
        try:
            async with asyncio.timeout(budget):
                async with self._slots:
                    result = await the_hand.fn(**args)
        except TimeoutError:
            if hand_limit_binds:
                return hands_pb2.ExecuteResponse(
                    output=f"{the_hand.name} timed out after {budget:g}s", is_error=True
                )
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{the_hand.name} did not finish before the deadline")
        except HandError as exc:
            return self._response(the_hand.name, str(exc), True)
        except asyncio.CancelledError:
            raise
        except Exception:
            correlation_id = uuid.uuid4().hex[:16]
            log.exception("hand raised", hand=the_hand.name, correlation_id=correlation_id)
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"internal error in hand {the_hand.name} (correlation id {correlation_id})",
            )
        if isinstance(result, HandResult) and isinstance(result.output, str):
            output, is_error = self._bounded(the_hand.name, result.output, result.is_error)
            return hands_pb2.ExecuteResponse(
                output=output,
                is_error=is_error,
                usage=hands_pb2.Usage(
                    input_tokens=result.usage.input_tokens,
                    output_tokens=result.usage.output_tokens,
                    tool_calls=result.usage.tool_calls,
                    nested_tokens=result.usage.nested_tokens,
                ),
            )
        if isinstance(result, str):
            return self._response(the_hand.name, result, False)
        correlation_id = uuid.uuid4().hex[:16]
        log.error("hand returned neither str nor HandResult", hand=the_hand.name, type=type(result).__name__,
                  correlation_id=correlation_id)
        await context.abort(
            grpc.StatusCode.INTERNAL,
            f"internal error in hand {the_hand.name}: it returned {type(result).__name__}, not str or HandResult "
            f"(correlation id {correlation_id})",
        )

    def _response(self, name: str, output: str, is_error: bool) -> hands_pb2.ExecuteResponse:
        output, is_error = self._bounded(name, output, is_error)
        return hands_pb2.ExecuteResponse(output=output, is_error=is_error)

    def _bounded(self, name: str, output: str, is_error: bool) -> tuple[str, bool]:
        """The output as the contract can carry it: valid UTF-8, at most max_output_bytes; else is_error with a note.

        Without this a lone surrogate fails serialization (UNKNOWN, with Python's exception text) and an
        output past the message limit comes back RESOURCE_EXHAUSTED, the quota status, with no retry info.
        """
        notes = []
        bad = 0 if output.isascii() else len(_LONE_SURROGATE.findall(output))  # isascii: one fast pass for most
        if bad:
            output = _LONE_SURROGATE.sub("\ufffd", output)
            notes.append(f"[{name}'s output held {bad} invalid Unicode characters (lone surrogates), shown as U+FFFD]")
        limit = self._config.max_output_bytes
        if len(output) * 4 > limit and len(encoded := output.encode()) > limit:  # no encoding for short ones
            note = (f"[output cut: {name} returned {len(encoded)} bytes; the limit is {limit} bytes, "
                    "and only the first part is shown; ask for less (a narrower path, pattern or range)]")
            keep = max(0, limit - len(note.encode()) - 2 - sum(len(n.encode()) + 1 for n in notes))
            output = encoded[:keep].decode("utf-8", "ignore")
            notes.append(note)
        if not notes:
            return output, is_error
        sep = "" if output.endswith("\n") or not output else "\n"
        return output + sep + "\n".join(notes), True


def _invalid_unicode(value, where: str = "") -> str | None:
    """Which field of a parsed input holds a lone surrogate (e.g. from the JSON escape "\\udce9"), or None."""
    if isinstance(value, str):
        if value.isascii() or not _LONE_SURROGATE.search(value):
            return None
        return f"field {where!r}" if where else "the input"
    if isinstance(value, dict):
        for key, item in value.items():
            if _LONE_SURROGATE.search(str(key)):
                return f"a key of {f'field {where!r}' if where else 'the input'}"
            if found := _invalid_unicode(item, f"{where}.{key}" if where else str(key)):
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if found := _invalid_unicode(item, f"{where}[{i}]"):
                return found
    return None


def _trace_hand(name: str, request) -> None:
    """Name the call's SERVER span after the hand, with what the brain's tool call span says too."""
    span = tracing.current_span()
    if span is not None:
        span.update_name(f"hand {name}")
        span.set_attributes({"brainhands.hand": name, "gen_ai.tool.name": name, "gen_ai.tool.call.id": request.call_id})


def _observe(metrics, label: str, counted: bool, code, response, started: float) -> None:
    """Count a finished call; out of the in-flight gauge only when it was counted in (it reached its hand)."""
    if response is not None and code is None:
        outcome = "is_error" if response.is_error else "ok"
    else:
        outcome = code.name if code is not None else "CANCELLED"
    if counted:
        metrics.in_flight.labels(label).dec()
    metrics.calls.labels(label, outcome).inc()
    metrics.duration.labels(label).observe(time.perf_counter() - started)


def handler(servicer: HandServicer) -> grpc.GenericRpcHandler:
    """HandService's method handlers, as generated, but with requests that fail to parse passed on as _Malformed."""
    return grpc.method_handlers_generic_handler(
        hands_pb2.DESCRIPTOR.services_by_name["HandService"].full_name,
        {
            "Execute": grpc.unary_unary_rpc_method_handler(
                servicer.Execute,
                request_deserializer=_parse_or_malformed(hands_pb2.ExecuteRequest.FromString),
                response_serializer=hands_pb2.ExecuteResponse.SerializeToString,
            ),
            "Describe": grpc.unary_unary_rpc_method_handler(
                servicer.Describe,
                request_deserializer=_parse_or_malformed(hands_pb2.DescribeRequest.FromString),
                response_serializer=hands_pb2.DescribeResponse.SerializeToString,
            ),
        },
    )


async def start(
    hands: Sequence[Hand],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: HandServiceConfig = HandServiceConfig(),
    credentials: grpc.ServerCredentials | None = None,
    metrics=None,
) -> RunningServer:
    """Start a hand service in the running loop and return it (port 0 picks a free port).

    metrics: a hands.metrics.HandMetrics the service counts its calls in (serving it is the caller's part).
    """
    servicer = HandServicer(hands, config, metrics)

    def register(server: grpc.aio.Server):
        server.add_generic_rpc_handlers((handler(servicer),))
        return [hands_pb2.DESCRIPTOR.services_by_name["HandService"].full_name]

    # Leave room above the input limit so an oversized input reaches us and gets INVALID_ARGUMENT.
    return await start_server(
        register,
        host=host,
        port=port,
        max_message_bytes=config.max_input_bytes + 1024 * 1024,
        credentials=credentials,
    )
