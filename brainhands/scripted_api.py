"""A local Messages-API server answering from a script: the tests' model and the offline demo's."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from hands.config import DEFAULT_MODEL

#: The error "type" the real API puts in its error JSON, by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received, as it came over the wire."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw: bytes
    body: Any  # the parsed JSON body (a dict for /v1/messages), None if it was not JSON
    client: tuple[str, int] = ("", 0)  # the peer address: one per connection, so keep-alive is visible

    @property
    def api_key(self) -> str | None:
        """The key the client presented: x-api-key, or the bearer token (newer SDKs send that)."""
        return _presented_key(self.headers)


def _presented_key(headers: Mapping[str, str]) -> str | None:
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class HTTPError:
    """A scripted error answer in the API's shape: {"type": "error", "error": {"type", "message"}}."""

    status: int = 429
    retry_after: float | None = 0
    body: Mapping[str, Any] | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def response_body(self, request_id: str) -> dict[str, Any]:
        if self.body is not None:
            return dict(self.body)
        kind = ERROR_TYPES.get(self.status, "api_error")
        return {
            "type": "error",
            "error": {"type": kind, "message": self.message or f"scripted {self.status} {kind}"},
            "request_id": request_id,
        }


Reply = Mapping[str, Any] | Callable[[dict[str, Any]], Any] | HTTPError

_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}{next(_ids):04d}"


def _usage(input_tokens: int, output_tokens: int, cache_read: int, cache_creation: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
    }


def message(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_creation: int = 0,
    model: str | None = None,
) -> dict[str, Any]:
    """A full Messages API response body with the given content blocks.

    model=None means "echo the model the request asked for".
    """
    body = {
        "id": _new_id("msg"),
        "type": "message",
        "role": "assistant",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(input_tokens, output_tokens, cache_read, cache_creation),
    }
    if model is not None:
        body["model"] = model
    return body


def text_reply(
    text: str,
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_creation: int = 0,
    model: str | None = None,
) -> dict[str, Any]:
    """An assistant message with one text block."""
    return message(
        [{"type": "text", "text": text}],
        stop_reason=stop_reason,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read=cache_read,
        cache_creation=cache_creation,
        model=model,
    )


def tool_reply(
    calls: Iterable[tuple[str, Mapping[str, Any]]] | Iterable[Mapping[str, Any]],
    *,
    text: str | None = None,
    input_tokens: int = 10,
    output_tokens: int = 5,
    cache_read: int = 0,
    cache_creation: int = 0,
    model: str | None = None,
) -> dict[str, Any]:
    """An assistant message asking for tools: stop_reason "tool_use", one tool_use block per call.

    A call is (name, input) or a dict with "name", "input" and optionally "id".
    """
    content: list[dict[str, Any]] = []
    if text:
        content.append({"type": "text", "text": text})
    for call in calls:
        if isinstance(call, Mapping):
            name, tool_input, call_id = call["name"], call.get("input", {}), call.get("id")
        else:
            name, tool_input = call
            call_id = None
        content.append(
            {"type": "tool_use", "id": call_id or _new_id("toolu"), "name": name, "input": dict(tool_input)}
        )
    return message(
        content,
        stop_reason="tool_use",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read=cache_read,
        cache_creation=cache_creation,
        model=model,
    )


def tool_results(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The tool_result blocks of the last user message of a request body (what the caller sent back)."""
    messages = body.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return []
    content = messages[-1].get("content")
    if not isinstance(content, list):
        return []
    return [block for block in content if isinstance(block, dict) and block.get("type") == "tool_result"]


def web_search_blocks(query: str, results: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """A web search the API ran itself: its server_tool_use block and its web_search_tool_result block.

    results: (url, title) pairs, each becoming a web_search_result in the documented shape.
    """
    use_id = _new_id("srvtoolu")
    return [
        {"type": "server_tool_use", "id": use_id, "name": "web_search", "input": {"query": query}},
        {"type": "web_search_tool_result", "tool_use_id": use_id, "content": [
            {"type": "web_search_result", "url": url, "title": title, "encrypted_content": _new_id("enc"),
             "page_age": "April 30, 2026"}
            for url, title in results
        ]},
    ]


def web_fetch_blocks(url: str, text: str, title: str = "") -> list[dict[str, Any]]:
    """A page the API fetched itself: its server_tool_use block and its web_fetch_tool_result block."""
    use_id = _new_id("srvtoolu")
    return [
        {"type": "server_tool_use", "id": use_id, "name": "web_fetch", "input": {"url": url}},
        {"type": "web_fetch_tool_result", "tool_use_id": use_id, "content": {
            "type": "web_fetch_result", "url": url, "retrieved_at": "2026-04-30T12:00:00Z",
            "content": {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text},
                        "title": title or None, "citations": {"enabled": True}},
        }},
    ]


def cited_text(text: str, url: str, title: str, quoted: str) -> dict[str, Any]:
    """A text block citing a search result (a web_search_result_location citation)."""
    return {"type": "text", "text": text, "citations": [
        {"type": "web_search_result_location", "url": url, "title": title, "cited_text": quoted,
         "encrypted_index": _new_id("idx")},
    ]}


def server_tool_reply(content: list[dict[str, Any]], *, stop_reason: str = "end_turn", **kwargs: Any) -> dict[str, Any]:
    """A response whose content holds server tool blocks; usage.server_tool_use counts them, as the API does."""
    body = message(content, stop_reason=stop_reason, **kwargs)
    uses = [b.get("name") for b in content if b.get("type") == "server_tool_use"]
    body["usage"]["server_tool_use"] = {"web_search_requests": uses.count("web_search"),
                                        "web_fetch_requests": uses.count("web_fetch")}
    return body


def _halves(index: int, delta_type: str, field: str, value: str) -> list[tuple[str, dict[str, Any]]]:
    """Two content_block_delta events carrying value, so a client that keeps only the last fragment is caught."""
    half = len(value) // 2
    return [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": delta_type, field: piece}})
        for piece in (value[:half], value[half:])
        if piece
    ]


def _pieces(index: int, text: str, size: int = 12) -> list[tuple[str, dict[str, Any]]]:
    """A text block as the real API streams it: many text_delta events of a few words each."""
    pieces = [text[i:i + size] for i in range(0, len(text), size)] or []
    return [
        ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})
        for piece in pieces
    ]


def sse_events(reply: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The stream of events the real API sends for a response body, in order."""
    usage = dict(reply.get("usage") or {})
    start = {k: v for k, v in reply.items() if k not in ("content", "stop_reason", "stop_sequence", "usage")}
    start.update(
        content=[],
        stop_reason=None,
        stop_sequence=None,
        # The real API reports input tokens up front and output tokens in message_delta.
        usage={**usage, "output_tokens": min(1, usage.get("output_tokens", 0))},
    )
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": start})]
    events.append(("ping", {"type": "ping"}))
    for index, block in enumerate(reply.get("content") or []):
        kind = block.get("type")
        if kind == "text":
            text = block.get("text", "")
            events.append(("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""},
            }))
            events += _pieces(index, text)
            for citation in block.get("citations") or ():  # as the API streams them: one delta per citation
                events.append(("content_block_delta", {
                    "type": "content_block_delta", "index": index,
                    "delta": {"type": "citations_delta", "citation": citation},
                }))
        elif kind == "tool_use":
            events.append(("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
            }))
            events += _halves(index, "input_json_delta", "partial_json", json.dumps(block.get("input", {})))
        elif kind == "thinking":
            events.append(("content_block_start", {
                "type": "content_block_start", "index": index,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""},
            }))
            events.append(("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "thinking_delta", "thinking": block.get("thinking", "")},
            }))
            events.append(("content_block_delta", {
                "type": "content_block_delta", "index": index,
                "delta": {"type": "signature_delta", "signature": block.get("signature", "")},
            }))
        else:
            # Any other block arrives whole in its start event.
            events.append(("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": dict(block),
            }))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": reply.get("stop_reason"), "stop_sequence": reply.get("stop_sequence")},
        "usage": usage,
    }))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


class ScriptedMessagesAPI:
    """A real HTTP/1.1 server on 127.0.0.1 (port 0) speaking POST /v1/messages like the Anthropic API.

    Replies are scripted with script(); each request consumes one, in order. An empty
    script answers 500 with x-should-retry: false, so a test that asks more than it
    scripted fails at once with a message saying so, instead of hanging or retrying.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        responder: Callable[[dict[str, Any]], Any] | None = None,
    ):
        self._host = host
        # Answers every request the queue has no reply for, from the request alone (no order assumed).
        self.responder = responder
        # When set, a request presenting another key (x-api-key or bearer) gets the API's 401 authentication_error.
        self.api_key = api_key
        self._port = port
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self.requests: list[RecordedRequest] = []
        # Seconds between the events of a streamed answer, so text arrives over time as it does from the real API.
        self.stream_delay = 0.0
        # When set, a streamed answer pauses after its first text delta until the event is set: a test can look at
        # what a client shows mid-turn without timing anything.
        self.hold_stream: threading.Event | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting -------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies, consumed one per request, in order."""
        for reply in replies:
            if not (isinstance(reply, Mapping | HTTPError) or callable(reply)):
                raise TypeError(f"a reply is a dict, a callable(body) or HTTPError, not {type(reply).__name__}")
        with self._lock:
            self._replies.extend(replies)

    @property
    def pending(self) -> int:
        """How many scripted replies have not been consumed yet."""
        with self._lock:
            return len(self._replies)

    @property
    def bodies(self) -> list[Any]:
        """The parsed JSON bodies of the POST /v1/messages requests so far."""
        return [r.body for r in self.requests if r.path.startswith("/v1/messages")]

    def _next_reply(self) -> Reply | None:
        with self._lock:
            if self._replies:
                return self._replies.popleft()
        return self.responder

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- lifecycle -------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("ScriptedMessagesAPI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ScriptedMessagesAPI:
        if self._server is not None:
            return self
        api = self

        class Handler(_Handler):
            fake = api

        server = ThreadingHTTPServer((self._host, self._port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-messages-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedMessagesAPI:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 so the SDK's connection pool keeps it alive between requests."""

    protocol_version = "HTTP/1.1"
    fake: ScriptedMessagesAPI

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass  # the test output stays clean; requests are recorded instead

    def do_GET(self):
        self._record(b"")
        self._send_json(404, HTTPError(404, message=f"no route GET {self.path}").response_body(_new_id("req")))

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = self._record(raw)
        request_id = _new_id("req")
        if not self.path.split("?", 1)[0] == "/v1/messages":
            error = HTTPError(404, retry_after=None, message=f"no route POST {self.path}")
            self._send_json(404, error.response_body(request_id), request_id=request_id)
            return
        if not isinstance(body, dict):
            error = HTTPError(400, retry_after=None, message="request body is not a JSON object")
            self._send_json(400, error.response_body(request_id), request_id=request_id)
            return
        if self.fake.api_key is not None and _presented_key({k.lower(): v for k, v in self.headers.items()}) != self.fake.api_key:
            error = HTTPError(401, retry_after=None, message="invalid x-api-key")
            self._send_json(401, error.response_body(request_id), request_id=request_id)
            return
        reply = self.fake._next_reply()
        if reply is None:
            n = len(self.fake.requests)
            error = HTTPError(
                500,
                retry_after=None,
                message=f"ScriptedMessagesAPI: the script ran out; request #{n} has no scripted reply",
            )
            self._send_json(500, error.response_body(request_id), request_id=request_id, extra={"x-should-retry": "false"})
            return
        if callable(reply) and not isinstance(reply, HTTPError):
            try:
                reply = reply(body)
            except Exception as exc:  # a broken scripted callable must fail the test, not hang it
                error = HTTPError(500, retry_after=None, message=f"ScriptedMessagesAPI: scripted callable raised {exc!r}")
                self._send_json(500, error.response_body(request_id), request_id=request_id, extra={"x-should-retry": "false"})
                return
        if isinstance(reply, HTTPError):
            extra = dict(reply.headers)
            if reply.retry_after is not None:
                extra.setdefault("retry-after", f"{reply.retry_after:g}")
                # The SDK treats a zero wait as "unset" and backs off ~0.5s; the millisecond
                # header (which it reads first) keeps "retry at once" fast in tests.
                extra.setdefault("retry-after-ms", f"{max(1.0, reply.retry_after * 1000):g}")
            self._send_json(reply.status, reply.response_body(request_id), request_id=request_id, extra=extra)
            return
        reply = dict(reply)
        reply.setdefault("model", body.get("model", DEFAULT_MODEL))
        if body.get("stream"):
            self._send_stream(reply, request_id)
        else:
            self._send_json(200, reply, request_id=request_id)

    def _record(self, raw: bytes) -> Any:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.fake._record(
            RecordedRequest(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                raw=raw,
                body=body,
                client=tuple(self.client_address[:2]),
            )
        )
        return body

    def _send_json(self, status: int, payload: Any, *, request_id: str = "", extra: Mapping[str, str] | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        if request_id:
            self.send_header("request-id", request_id)
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_stream(self, reply: Mapping[str, Any], request_id: str) -> None:
        # Chunked, one event per chunk, flushed as it goes: the client sees each event when it is sent, and the
        # connection stays reusable for the next request.
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("request-id", request_id)
        self.end_headers()
        held = False
        for name, payload in sse_events(reply):
            data = f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            hold = self.fake.hold_stream
            if not held and hold is not None and payload.get("delta", {}).get("type") == "text_delta":
                held = True
                hold.wait(timeout=30)
            elif self.fake.stream_delay and name == "content_block_delta":
                time.sleep(self.fake.stream_delay)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
