"""web_fetch's engine: one URL to a Page, with every hop checked, every limit held and robots.txt honoured."""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.robotparser
from collections import OrderedDict
from dataclasses import dataclass

import httpx2

from hands import HandError
from hands.builtin.web.addresses import Resolver, checked_address, system_resolver
from hands.builtin.web.config import WebConfig
from hands.builtin.web.extract import Page, decode_text, html_page, kind_of, media_type, sniff

REDIRECTS = {301, 302, 303, 307, 308}
ROBOTS_MAX_BYTES = 512 * 1024  # RFC 9309 asks crawlers to parse at least 500 KiB
ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.9,*/*;q=0.1"


def size_words(n: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


class TTLCache:
    """A bounded map whose entries expire: least recently used goes first when it is full."""

    def __init__(self, entries: int, ttl: float):
        self.entries, self.ttl = entries, ttl
        self._items: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def get(self, key: str):
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if time.monotonic() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: object) -> None:
        if self.entries <= 0 or self.ttl <= 0:
            return
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.entries:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class Hop:
    url: httpx2.URL
    status: int
    headers: httpx2.Headers
    body: bytes = b""


def parse_url(raw: str) -> httpx2.URL:
    try:
        url = httpx2.URL(raw.strip())
    except (httpx2.InvalidURL, TypeError, ValueError) as exc:
        raise HandError(f"not a valid URL: {raw[:200]!r} ({exc})") from None
    if url.scheme not in ("http", "https"):
        scheme = f"{url.scheme}:" if url.scheme else "a URL without a scheme"
        raise HandError(f"refused: only http:// and https:// URLs can be fetched, not {scheme} ({raw[:200]!r})")
    if not url.host:
        raise HandError(f"not a valid URL: {raw[:200]!r} has no host")
    if url.userinfo:
        raise HandError("refused: the URL carries a user name or password; web_fetch sends no credentials")
    return url.copy_with(fragment=None)


class Fetcher:
    """Fetches pages for web_fetch; holds the page cache and the robots.txt cache (one per hand service)."""

    def __init__(self, config: WebConfig, *, resolver: Resolver | None = None, ssl_context: ssl.SSLContext | None = None):
        self.config = config
        self.resolver = resolver or system_resolver
        self.ssl_context = ssl_context or httpx2.create_ssl_context(trust_env=False)
        self.cache = TTLCache(config.cache_entries, config.cache_ttl)
        self.robots = TTLCache(max(64, config.cache_entries), max(config.cache_ttl, 60.0))
        self._inflight: dict[str, asyncio.Future[Page]] = {}

    async def fetch(self, raw_url: str, *, time_left: float | None = None) -> tuple[Page, bool]:
        """(the page, whether it came from the cache) or HandError saying why not."""
        url = parse_url(raw_url)
        key = str(url)
        cached = self.cache.get(key)
        if cached is not None:
            return cached, True
        # Workers fanned out on one question often read the same page at once: one download serves them all.
        task = self._inflight.get(key)
        if task is None:
            # Within the caller's deadline, with a moment to spare, so the model hears "too slow" rather than nothing.
            budget = self.config.timeout if time_left is None else max(0.1, min(self.config.timeout, time_left - 0.5))
            task = asyncio.ensure_future(self._load(key, url, budget))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        return await asyncio.shield(task), False

    def _forget(self, key: str, task: asyncio.Future[Page]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: when every caller gave up, nobody else will

    async def _load(self, key: str, url: httpx2.URL, budget: float) -> Page:
        try:
            async with asyncio.timeout(budget):
                async with self._client(budget) as client:
                    page = await self._fetch(client, url)
        except TimeoutError:
            raise HandError(f"too slow: {key} did not arrive within {budget:g}s") from None
        self.cache.put(key, page)
        return page

    def _client(self, budget: float) -> httpx2.AsyncClient:
        # No keep-alive: requests go to a pinned address with the name in Host and SNI, so a pooled connection
        # must never be reused for another name. No proxies from the environment: the check is of the target.
        return httpx2.AsyncClient(
            verify=self.ssl_context,
            trust_env=False,
            follow_redirects=False,
            timeout=httpx2.Timeout(budget),
            limits=httpx2.Limits(max_connections=8, max_keepalive_connections=0),
        )

    async def _fetch(self, client: httpx2.AsyncClient, url: httpx2.URL) -> Page:
        start = url
        for _ in range(self.config.max_redirects + 1):
            if self.config.robots:
                await self._check_robots(client, url)
            hop = await self._request(client, url, self.config.max_bytes, page=True)
            if hop.status in REDIRECTS:
                url = self._next(hop)
                continue
            if not 200 <= hop.status < 300:
                reason = httpx2.codes.get_reason_phrase(hop.status)
                raise HandError(f"HTTP {hop.status} {reason} from {hop.url}".rstrip())
            return await self._page(hop)
        raise HandError(
            f"refused: too many redirects (more than {self.config.max_redirects}) starting at {start}; "
            f"the last pointed to {url}"
        )

    def _next(self, hop: Hop) -> httpx2.URL:
        location = hop.headers.get("location", "").strip()
        if not location:
            raise HandError(f"HTTP {hop.status} redirect from {hop.url} has no Location")
        try:
            target = hop.url.join(location)
        except (httpx2.InvalidURL, ValueError) as exc:
            raise HandError(f"{hop.url} redirects to an invalid URL {location[:200]!r} ({exc})") from None
        return parse_url(str(target))

    async def _page(self, hop: Hop) -> Page:
        content_type = hop.headers.get("content-type", "")
        kind = kind_of(content_type)
        if kind == "unknown":
            kind = sniff(hop.body)
            if kind == "binary":
                raise HandError(f"refused: {hop.url} sent no content type and its body is binary; web_fetch reads "
                                "HTML, plain text and JSON")
        if kind == "html":
            return await asyncio.to_thread(html_page, hop.body, str(hop.url), content_type or "text/html")
        return Page(str(hop.url), "", decode_text(hop.body, content_type), media_type(content_type) or "text/plain")

    async def _request(self, client: httpx2.AsyncClient, url: httpx2.URL, max_bytes: int, *, page: bool) -> Hop:
        """One GET to the checked address of url's host; the body only for a 2xx answer, at most max_bytes.

        A page over max_bytes is refused; robots.txt (page=False) is cut there instead, as RFC 9309 allows.
        """
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        ip = await checked_address(self.config.allow, self.resolver, host, port)
        request = client.build_request(
            "GET",
            url.copy_with(host=str(ip)),
            headers={"Host": url.netloc.decode("ascii"), "User-Agent": self.config.user_agent, "Accept": ACCEPT},
            extensions={"sni_hostname": host} if url.scheme == "https" else {},
        )
        try:
            response = await client.send(request, stream=True)
        except httpx2.TimeoutException:
            raise TimeoutError from None
        except httpx2.ConnectError as exc:
            raise HandError(f"could not connect to {url.netloc.decode('ascii')}: {exc or type(exc).__name__}") from None
        except httpx2.HTTPError as exc:
            raise HandError(f"the request to {url} failed: {exc or type(exc).__name__}") from None
        try:
            hop = Hop(url, response.status_code, response.headers)
            if response.status_code in REDIRECTS or not 200 <= response.status_code < 300:
                return hop
            if page and kind_of(response.headers.get("content-type", "")) == "binary":
                ctype = media_type(response.headers["content-type"])
                raise HandError(f"refused: {url} is {ctype}, not text; web_fetch reads HTML, plain text and JSON")
            declared = response.headers.get("content-length", "")
            if page and declared.isdigit() and int(declared) > max_bytes:
                raise HandError(f"refused: {url} is too big ({size_words(int(declared))}; the limit is "
                                f"{size_words(max_bytes)})")
            chunks, size = [], 0
            try:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        if not page:
                            chunks.append(chunk[: len(chunk) - (size - max_bytes)])
                            break
                        raise HandError(f"refused: {url} is too big (more than the {size_words(max_bytes)} limit)")
                    chunks.append(chunk)
            except httpx2.TimeoutException:
                raise TimeoutError from None
            except httpx2.HTTPError as exc:
                raise HandError(f"reading {url} failed: {exc or type(exc).__name__}") from None
            hop.body = b"".join(chunks)
            return hop
        finally:
            await response.aclose()

    async def _check_robots(self, client: httpx2.AsyncClient, url: httpx2.URL) -> None:
        origin = f"{url.scheme}://{url.netloc.decode('ascii')}"
        rules = self.robots.get(origin)
        if rules is None:
            rules = await self._robots_for(client, httpx2.URL(origin + "/robots.txt"))
            self.robots.put(origin, rules)
        if isinstance(rules, str):
            if rules == "allow":
                return
            raise HandError(f"refused: robots.txt of {url.host} could not be read ({rules}), which RFC 9309 treats "
                            "as disallowing everything")
        if not rules.can_fetch(self.config.user_agent, str(url)):
            path = url.raw_path.decode("ascii")
            raise HandError(f"refused: robots.txt of {url.host} disallows {self.config.user_agent} from {path}")

    async def _robots_for(self, client: httpx2.AsyncClient, url: httpx2.URL):
        """Parsed rules, "allow" (no robots.txt: everything is allowed) or the reason it is unreachable (disallow)."""
        for _ in range(5):  # RFC 9309: follow at least five redirects
            try:
                hop = await self._request(client, url, ROBOTS_MAX_BYTES, page=False)
            except HandError as exc:
                if str(exc).startswith("refused:"):  # it redirects somewhere we may not go: as if it were absent
                    return "allow"
                raise
            if hop.status in REDIRECTS:
                try:
                    url = self._next(hop)
                except HandError:
                    return "allow"
                continue
            if 400 <= hop.status < 500:
                return "allow"
            if hop.status >= 500:
                return f"HTTP {hop.status}"
            parser = urllib.robotparser.RobotFileParser()
            parser.parse(decode_text(hop.body, hop.headers.get("content-type", "")).splitlines())
            return parser
        return "allow"
