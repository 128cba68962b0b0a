"""A fake web and fake search APIs on loopback: real HTTP servers (threads) that record what they were sent."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    # Instead of a body: chunks written one by one with `drip` seconds between (no Content-Length).
    chunks: list[bytes] | None = None
    drip: float = 0.0
    delay: float = 0.0  # seconds before the status line (a slow server)
    length: bool = True  # send Content-Length


Route = Callable[[Seen], Reply]


class FakeHTTP:
    """routes[path] -> Reply or a function of the request; every request is kept in .seen."""

    def __init__(self, routes: dict[str, Reply | Route] | None = None, *, ssl_context: ssl.SSLContext | None = None):
        self.routes: dict[str, Reply | Route] = dict(routes or {})
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self):
                parts = urlsplit(self.path)
                size = int(self.headers.get("Content-Length") or 0)
                seen = Seen(self.command, parts.path, parse_qs(parts.query),
                            {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(size) if size else b"")
                fake.seen.append(seen)
                route = fake.routes.get(parts.path)
                reply = Reply(404, "not here", "text/plain") if route is None else (
                    route(seen) if callable(route) else route)
                if reply.delay:
                    fake.stopping.wait(reply.delay)
                body = reply.body.encode() if isinstance(reply.body, str) else reply.body
                try:
                    self.send_response(reply.status)
                    if reply.content_type:
                        self.send_header("Content-Type", reply.content_type)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    if reply.chunks is not None:
                        self.send_header("Connection", "close")
                        self.end_headers()
                        for chunk in reply.chunks:
                            if fake.stopping.is_set():
                                return
                            self.wfile.write(chunk)
                            self.wfile.flush()
                            if reply.drip:
                                fake.stopping.wait(reply.drip)
                        self.close_connection = True
                        return
                    if reply.length:
                        self.send_header("Content-Length", str(len(body)))
                    else:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client stopped reading: that is what a limit does

            do_GET = _serve
            do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if ssl_context is not None else "http"
        self.base = f"{self.scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def requests_to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    def __enter__(self) -> FakeHTTP:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


ARTICLE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Hydrothermal vents | Ocean Notes</title>
  <script>var trackingPixel = "TRACKING-SCRIPT-TEXT"; window.dataLayer = [];</script>
  <style>.menu { color: red } /* STYLE-RULE-TEXT */</style>
</head>
<body>
  <div class="cookie-banner">We use cookies. COOKIE-BANNER-TEXT Accept all?</div>
  <header><nav class="menu">
    <a href="/">Home</a> <a href="/about">About us NAV-LINK-TEXT</a> <a href="/shop">Shop</a> <a href="/login">Log in</a>
  </nav></header>
  <aside class="sidebar"><h3>Related</h3><ul>
    <li><a href="/r1">SIDEBAR-RELATED-TEXT ten facts about whales</a></li><li><a href="/r2">Subscribe now</a></li>
  </ul></aside>
  <main><article>
    <h1>Hydrothermal vents</h1>
    <p>Hydrothermal vents are fissures on the sea floor from which geothermally heated water discharges.
    They are commonly found near volcanically active places, where tectonic plates move apart.</p>
    <p>The water that comes out can reach 400 degrees Celsius, yet it does not boil because of the pressure
    at depth. Minerals dissolved in it precipitate on contact with the cold sea water and build chimneys.</p>
    <h2>Life without sunlight</h2>
    <p>Vent ecosystems rely on chemosynthesis rather than photosynthesis: bacteria oxidise hydrogen sulphide
    and feed giant tube worms, clams and shrimp. ARTICLE-MARKER-42 was first observed in 1977 near the Galapagos.</p>
    <script>console.log("INLINE-SCRIPT-IN-ARTICLE")</script>
  </article></main>
  <footer><p>Copyright 2026 Ocean Notes. FOOTER-BOILERPLATE-TEXT All rights reserved.</p>
    <a href="/privacy">Privacy policy</a> <a href="/terms">Terms</a></footer>
</body>
</html>
"""

BOILERPLATE_MARKERS = [
    "TRACKING-SCRIPT-TEXT", "STYLE-RULE-TEXT", "COOKIE-BANNER-TEXT", "NAV-LINK-TEXT", "SIDEBAR-RELATED-TEXT",
    "FOOTER-BOILERPLATE-TEXT", "INLINE-SCRIPT-IN-ARTICLE",
]


def redirect(to: str, status: int = 302) -> Reply:
    return Reply(status, b"", "", headers={"Location": to})


def json_reply(payload, status: int = 200) -> Reply:
    return Reply(status, json.dumps(payload), "application/json")


def slow(seconds: float) -> Reply:
    return Reply(200, ARTICLE, delay=seconds)


def dripping(chunks: int, every: float) -> Reply:
    """A body that keeps coming: each chunk is quick, all of them are not."""
    return Reply(200, chunks=[b"<p>" + b"still coming " * 20 + b"</p>\n"] * chunks, drip=every)


