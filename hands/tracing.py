"""OpenTelemetry tracing for every brainhands service: off unless configured, W3C traceparent on every call.

Tracing is on only when `configure_tracing()` is called with an endpoint (the `--otel` flag) or finds
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT in the environment (and OTEL_SDK_DISABLED is
not true), as the OpenTelemetry environment conventions say; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_EXPORTER_OTLP_HEADERS, OTEL_BSP_* and the rest are read by the SDK itself. Off, no provider or exporter
is made, the server adds no interceptor and every hook here is one boolean test.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import grpc

from hands import metadata as md

#: Methods that get no span: the gateway probes health every few seconds and reflection is for people.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")

# Set by configure_tracing(); None while tracing is off. The SDK is imported only then.
_tracer = None
_provider = None
_exporter = None


def enabled() -> bool:
    return _tracer is not None


def exporter():
    """The span exporter tracing was configured with (None while off): tests assert none was made."""
    return _exporter


def endpoint_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def normalize_endpoint(endpoint: str) -> str:
    """`host:port` as a person writes it means plain gRPC to that address (the OTLP exporter would try TLS)."""
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def configure_tracing(service_name: str, endpoint: str | None = None, *, exporter=None) -> bool:
    """Turn tracing on for this process when an endpoint is given or in the environment; True when it is on.

    service_name is the default for `service.name` (OTEL_SERVICE_NAME wins). exporter: a span exporter to
    use instead of OTLP/gRPC (tests pass the SDK's InMemorySpanExporter; it is exported synchronously).
    Called again, it replaces the previous set-up (tests do this); an entry point calls it once.
    """
    global _tracer, _provider, _exporter
    if exporter is None:
        endpoint = endpoint or endpoint_from_env()
        if not endpoint:
            return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    shutdown_tracing()
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME over this default.
    attributes = {SERVICE_NAME: service_name}
    if os.environ.get("OTEL_SERVICE_NAME"):
        attributes[SERVICE_NAME] = os.environ["OTEL_SERVICE_NAME"]
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=normalize_endpoint(endpoint))
        provider.add_span_processor(BatchSpanProcessor(exporter))
    with contextlib.suppress(Exception):  # the global is set once per process; ours is used either way
        if not getattr(trace, "_TRACER_PROVIDER", None):
            trace.set_tracer_provider(provider)
    _provider, _exporter = provider, exporter
    _tracer = provider.get_tracer("brainhands")
    return True


def shutdown_tracing() -> None:
    """Export what is buffered and stop (also run at exit by the SDK)."""
    global _tracer, _provider, _exporter
    provider, _tracer, _provider, _exporter = _provider, None, None, None
    if provider is not None:
        with contextlib.suppress(Exception):
            provider.shutdown()


def tracer():
    return _tracer


# --- spans and context ------------------------------------------------------------------------------------


def start_span(name: str, *, kind: str = "internal", attributes: Mapping[str, Any] | None = None, parent=None, links=()):
    """A span as a context manager that makes it current; a no-op context while tracing is off.

    kind: internal | server | client. parent: a SpanContext or Span to nest under instead of the current one.
    """
    if _tracer is None:
        return contextlib.nullcontext(None)
    from opentelemetry import trace

    ctx = None
    if parent is not None:
        span_context = parent.get_span_context() if hasattr(parent, "get_span_context") else parent
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    return _tracer.start_as_current_span(
        name,
        context=ctx,
        kind=_KINDS()[kind],
        attributes=dict(attributes or {}),
        links=[_link(link) for link in links],
        record_exception=False,
        set_status_on_exception=False,
    )


def _KINDS():  # noqa: N802 - a constant table, built once the SDK is imported
    from opentelemetry.trace import SpanKind

    return {"internal": SpanKind.INTERNAL, "server": SpanKind.SERVER, "client": SpanKind.CLIENT}


def _link(ids: Mapping[str, str]):
    from opentelemetry import trace

    return trace.Link(
        trace.SpanContext(int(ids["trace_id"], 16), int(ids["span_id"], 16), is_remote=True,
                          trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)),
        attributes={"brainhands.link": "earlier_run_of_session"},
    )  # fmt: skip


def current_span():
    """The current recording span, or None (tracing off, or outside a span)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.is_recording() else None


def set_attributes(**attributes: Any) -> None:
    """Set attributes on the current span; dots in keys are written as `__` (brainhands__quota -> brainhands.quota)."""
    span = current_span()
    if span is not None:
        span.set_attributes({k.replace("__", "."): v for k, v in attributes.items() if v is not None})


def mark_error(span, description: str, error_type: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description[:300]))


def ids(span=None) -> dict[str, str] | None:
    """{trace_id, span_id} of the span (default: current) as hex, for storing with a session; None when off."""
    span = span if span is not None else current_span()
    if span is None:
        return None
    c = span.get_span_context()
    return {"trace_id": format(c.trace_id, "032x"), "span_id": format(c.span_id, "016x")}


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None: for log lines."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    c = trace.get_current_span().get_span_context()
    return format(c.trace_id, "032x") if c.is_valid else None


def inject(carrier: dict[str, str]) -> dict[str, str]:
    """Add the current span's `traceparent` (and `tracestate`) to carrier; unchanged while off."""
    if _tracer is not None:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        TraceContextTextMapPropagator().inject(carrier)
    return carrier


def headers() -> list[tuple[str, str]]:
    """The current context as gRPC metadata pairs (empty while off or outside a span)."""
    return list(inject({}).items()) if _tracer is not None else []


def extract(metadata: Mapping[str, str]):
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(metadata)


# --- the server side -------------------------------------------------------------------------------------


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What start_server puts first when tracing is on: one SERVER span per call, the caller's trace continued."""
    return [TracingInterceptor()] if _tracer is not None else []


class TracingInterceptor(grpc.aio.ServerInterceptor):
    """Continues the caller's trace (traceparent) with a SERVER span around each call, current while it runs.

    The handler and the interceptors after this one (auth, quotas) add their attributes to it through
    set_attributes(); its status is the call's gRPC status.
    """

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_UNTRACED):
            return handler
        service, _, rpc = method.lstrip("/").partition("/")
        # Describe starts no trace of its own: the gateway's probes call it every few seconds. A traced
        # caller's Describe (a worker agent listing its tools) is part of the caller's trace.
        only_when_traced = rpc == "Describe"
        base = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}

        def span_for(context):
            if _tracer is None:  # turned off since the server started (tests reconfigure)
                return contextlib.nullcontext(None)
            meta = md.as_dict(context.invocation_metadata())
            if only_when_traced and md.TRACEPARENT not in meta:
                return contextlib.nullcontext(None)
            attributes = dict(base)
            for key, attr in ((md.SESSION_ID, "brainhands.session_id"), (md.CALL_ID, "brainhands.call_id"),
                              (md.DEPTH, "brainhands.depth")):  # fmt: skip
                if key in meta:
                    attributes[attr] = meta[key]
            return _tracer.start_as_current_span(
                f"{service}/{rpc}", context=extract(meta), kind=_KINDS()["server"], attributes=attributes,
                record_exception=False, set_status_on_exception=False,
            )  # fmt: skip

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            async def unary_unary(request, context):
                with span_for(context) as span:
                    try:
                        return await inner_uu(request, context)
                    finally:
                        _end_status(span, context)

            return handler._replace(unary_unary=unary_unary)
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            async def unary_stream(request, context):
                with span_for(context) as span:
                    try:
                        result = inner_us(request, context)
                        if hasattr(result, "__aiter__"):
                            async for item in result:
                                yield item
                        else:
                            for item in await result:
                                yield item
                    finally:
                        _end_status(span, context)

            return handler._replace(unary_stream=unary_stream)
        return handler


def _end_status(span, context) -> None:
    if span is None:
        return
    code = context.code()
    name = code.name if code is not None else "OK"
    span.set_attribute("rpc.grpc.status_code", code.value[0] if code is not None else 0)
    if name != "OK":
        mark_error(span, context.details() or name, name)
