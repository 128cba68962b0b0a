"""The web hands through a real gRPC hand server, against a fake web and fake search APIs on loopback.

The fake web is on 127.0.0.1, which web_fetch refuses by default: the cases that must reach it allow
127.0.0.1 the way an operator would (BRAINHANDS_WEB_ALLOW); the refusals are proved without it. No test
sends a packet to a private address: those are refused before any connection is made.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys

import pytest

from hands.builtin.web import AddressPolicy, SearchConfig, WebConfig, make_web_hands
from tests.hands.fake_web import (
    ARTICLE,
    BOILERPLATE_MARKERS,
    FakeHTTP,
    Reply,
    dripping,
    json_reply,
    redirect,
    slow,
)

LOOPBACK = AddressPolicy.parse("127.0.0.1")
ARTICLE_SENTENCES = [
    "Hydrothermal vents are fissures on the sea floor",
    "## Life without sunlight",
    "ARTICLE-MARKER-42 was first observed in 1977",
]
MIB = 1024 * 1024


def allowed(**kwargs) -> WebConfig:
    return WebConfig(allow=LOOPBACK, **kwargs)


@pytest.fixture
def web():
    routes = {
        "/robots.txt": Reply(200, "User-agent: *\nDisallow: /private/\n", "text/plain"),
        "/article": Reply(200, ARTICLE),
        "/chain/1": redirect("/chain/2", 301),
        "/chain/2": redirect("/chain/3", 307),
        "/chain/3": redirect("/article", 302),
        "/loop": redirect("/loop"),
        "/to-private": redirect("http://10.1.2.3/admin"),
        "/to-metadata": redirect("http://169.254.169.254/latest/meta-data/"),
        "/to-loopback-v6": redirect("http://[::1]/"),
        "/huge": Reply(200, b"<p>" + b"x" * (3 * MIB) + b"</p>"),
        "/huge-chunked": Reply(200, chunks=[b"<p>" + b"y" * 65536 + b"</p>"] * 40),
        "/slow": slow(30),
        "/drip": dripping(300, 0.1),
        "/notes.txt": Reply(200, "line one\nline two: plain text passes through\n", "text/plain; charset=utf-8"),
        "/long.txt": Reply(200, "word " * 5000, "text/plain"),
        "/data.json": json_reply({"answer": 42, "items": ["a", "b"]}),
        "/photo.png": Reply(200, b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000, "image/png"),
        "/paper.pdf": Reply(200, b"%PDF-1.7\n" + b"\x00\x01" * 500, "application/pdf"),
        "/untyped-binary": Reply(200, b"\x00\x01\x02\x03" * 500, ""),
        "/untyped-html": Reply(200, ARTICLE, ""),
        "/private/page": Reply(200, ARTICLE),
        "/gone": Reply(404, "no such page", "text/plain"),
        "/broken": Reply(500, "oops", "text/plain"),
        "/a": Reply(200, ARTICLE.replace("ARTICLE-MARKER-42", "PAGE-A")),
        "/b": Reply(200, ARTICLE.replace("ARTICLE-MARKER-42", "PAGE-B")),
    }
    with FakeHTTP(routes) as fake:
        yield fake


@pytest.fixture
def refused_port():
    """A loopback port that refuses connections: bound (so no other process takes it) but not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def web_hands(hand_service, hand_client):
    """start(config, **make_web_hands kwargs) -> call(name, **input) on a real hand server serving the web hands."""

    async def start(config: WebConfig | None = None, **kwargs):
        running = await hand_service(make_web_hands(config or WebConfig(), **kwargs))
        client = hand_client(running.address)

        async def call(name, **inp):
            return await client.execute(name, inp, timeout=60)

        return call

    return start


# --- web_fetch: reading pages -------------------------------------------------------------------------------


async def test_fetch_keeps_the_article_and_drops_navigation_boilerplate_and_scripts(web, web_hands):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url("/article"))
    assert not reply.is_error, reply.output
    assert reply.output.startswith("# Hydrothermal vents | Ocean Notes\n")
    assert f"URL: {web.url('/article')}" in reply.output
    for sentence in ARTICLE_SENTENCES:
        assert sentence in reply.output
    for marker in BOILERPLATE_MARKERS:
        assert marker not in reply.output


async def test_the_title_is_the_one_the_page_gives_itself_not_a_dialogs_heading(web, web_hands):
    page = ARTICLE.replace("<header>", '<div class="dialog" hidden><h1>Keyboard shortcuts</h1></div><header>').replace(
        "<h1>Hydrothermal vents</h1>", "<h2>Hydrothermal vents</h2>")
    web.routes["/dialog"] = Reply(200, page)
    web.routes["/og"] = Reply(200, page.replace("<head>", '<head><meta property="og:title" content="Vents, explained">'))
    call = await web_hands(allowed())
    titled = await call("web_fetch", url=web.url("/dialog"))
    assert titled.output.startswith("# Hydrothermal vents | Ocean Notes\n"), titled.output[:200]
    og = await call("web_fetch", url=web.url("/og"))
    assert og.output.startswith("# Vents, explained\n"), og.output[:200]


async def test_fetch_follows_a_redirect_chain_and_names_the_final_url(web, web_hands):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url("/chain/1"))
    assert not reply.is_error, reply.output
    assert f"URL: {web.url('/article')}\n" in reply.output
    assert ARTICLE_SENTENCES[0] in reply.output
    assert [s.path for s in web.seen if s.path != "/robots.txt"] == ["/chain/1", "/chain/2", "/chain/3", "/article"]


async def test_too_many_redirects_are_refused(web, web_hands):
    call = await web_hands(allowed(max_redirects=2))
    reply = await call("web_fetch", url=web.url("/chain/1"))
    assert reply.is_error
    assert "too many redirects (more than 2)" in reply.output
    assert web.requests_to("/article") == []
    looping = await call("web_fetch", url=web.url("/loop"))
    assert looping.is_error and "too many redirects" in looping.output


@pytest.mark.parametrize(
    "path,why",
    [("/to-private", "10.1.2.3 is a private address"),
     ("/to-metadata", "169.254.169.254 is a link-local address"),
     ("/to-loopback-v6", "::1 is a loopback address")],
)
async def test_a_redirect_to_a_private_address_is_refused_before_connecting(web, web_hands, path, why):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url(path))
    assert reply.is_error
    assert why in reply.output and "BRAINHANDS_WEB_ALLOW" in reply.output


async def test_loopback_is_refused_without_the_allow_list_and_nothing_is_sent(web, web_hands):
    call = await web_hands(WebConfig())
    for url, why in [
        (web.url("/article"), "127.0.0.1 is a loopback address"),
        (web.url("/article", host="localhost"), "localhost resolves to 127.0.0.1, which is a loopback address"),
        (web.url("/article", host="[::ffff:127.0.0.1]"), "is a loopback address"),
        (f"http://2130706433:{web.port}/article", "2130706433 resolves to 127.0.0.1"),  # 127.0.0.1 as one number
        (f"http://0.0.0.0:{web.port}/article", "the unspecified address"),
    ]:
        reply = await call("web_fetch", url=url)
        assert reply.is_error, url
        assert why in reply.output, (url, reply.output)
    assert web.seen == []


async def test_the_allow_list_names_hosts_as_well_as_networks(web, web_hands):
    call = await web_hands(WebConfig(allow=AddressPolicy.parse("localhost")))
    by_name = await call("web_fetch", url=web.url("/article", host="localhost"))
    assert not by_name.is_error, by_name.output
    by_address = await call("web_fetch", url=web.url("/article"))
    assert by_address.is_error and "127.0.0.1 is a loopback address" in by_address.output


async def test_the_checked_address_is_the_one_connected_to(web, web_hands):
    """A name only our resolver knows: the fetch can only succeed by connecting to the address that was checked."""
    asked: list[str] = []

    async def resolver(host, port):
        asked.append(host)
        return {"news.example": ["127.0.0.1"], "mixed.example": ["127.0.0.1", "10.0.0.7"]}[host]

    call = await web_hands(allowed(), resolver=resolver)
    reply = await call("web_fetch", url=web.url("/article", host="news.example"))
    assert not reply.is_error, reply.output
    assert f"URL: http://news.example:{web.port}/article" in reply.output
    assert {s.headers["host"] for s in web.seen} == {f"news.example:{web.port}"}
    assert set(asked) == {"news.example"}
    mixed = await call("web_fetch", url=web.url("/article", host="mixed.example"))
    assert mixed.is_error and "mixed.example resolves to 10.0.0.7, which is a private address" in mixed.output


async def test_a_name_that_rebinds_to_a_private_address_is_refused(web, web_hands):
    """Every request resolves and checks again: a name that answers loopback (allowed) once and then a private
    address is refused on the request that got the private answer."""
    answers = iter([["127.0.0.1"]] + [["10.0.0.8"]] * 10)

    async def resolver(host, port):
        return next(answers)

    call = await web_hands(allowed(), resolver=resolver)
    reply = await call("web_fetch", url=web.url("/article", host="rebind.example"))
    assert reply.is_error and "rebind.example resolves to 10.0.0.8, which is a private address" in reply.output
    assert web.requests_to("/article") == []


async def test_https_connects_to_the_checked_address_with_the_name_in_sni_and_the_certificate(web_hands):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("secure.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def resolver(host, port):
        return ["127.0.0.1"]

    with FakeHTTP({"/article": Reply(200, ARTICLE)}, ssl_context=server_ctx) as secure:
        call = await web_hands(allowed(), resolver=resolver, ssl_context=client_ctx)
        reply = await call("web_fetch", url=secure.url("/article", host="secure.example"))
        assert not reply.is_error, reply.output
        assert ARTICLE_SENTENCES[0] in reply.output
        wrong = await call("web_fetch", url=secure.url("/article", host="other.example"))
        assert wrong.is_error and "could not connect to other.example" in wrong.output
        assert "certificate" in wrong.output.lower()


# --- web_fetch: limits -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
async def test_a_page_over_the_size_limit_is_refused(web, web_hands, path):
    call = await web_hands(allowed(max_bytes=1 * MIB))
    reply = await call("web_fetch", url=web.url(path))
    assert reply.is_error
    assert f"refused: {web.url(path)} is too big" in reply.output and "1 MiB" in reply.output


@pytest.mark.parametrize("path", ["/slow", "/drip"])
async def test_a_page_that_takes_too_long_is_refused(web, web_hands, path):
    call = await web_hands(allowed(timeout=1.0))
    reply = await call("web_fetch", url=web.url(path))
    assert reply.is_error
    assert f"too slow: {web.url(path)} did not arrive within 1s" in reply.output


async def test_text_is_cut_to_max_chars_and_says_so(web, web_hands):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url("/long.txt"), max_chars=500)
    assert not reply.is_error
    assert "[truncated: showing 500 of 25000 characters]" in reply.output
    assert reply.output.count("word") == 100


# --- web_fetch: content types, robots, errors ---------------------------------------------------------------


async def test_plain_text_and_json_pass_through(web, web_hands):
    call = await web_hands(allowed())
    text = await call("web_fetch", url=web.url("/notes.txt"))
    assert not text.is_error
    assert text.output.endswith("line one\nline two: plain text passes through\n")
    assert "Content-Type: text/plain" in text.output
    data = await call("web_fetch", url=web.url("/data.json"))
    assert not data.is_error
    assert json.loads(data.output.split("\n\n", 1)[1]) == {"answer": 42, "items": ["a", "b"]}


@pytest.mark.parametrize(
    "path,why",
    [("/photo.png", "is image/png, not text"),
     ("/paper.pdf", "is application/pdf, not text"),
     ("/untyped-binary", "sent no content type and its body is binary")],
)
async def test_binaries_are_refused(web, web_hands, path, why):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url(path))
    assert reply.is_error and why in reply.output
    assert "HTML, plain text and JSON" in reply.output


async def test_an_untyped_html_page_is_still_read_as_html(web, web_hands):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url("/untyped-html"))
    assert not reply.is_error
    assert ARTICLE_SENTENCES[0] in reply.output and "TRACKING-SCRIPT-TEXT" not in reply.output


async def test_robots_txt_is_honoured(web, web_hands):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=web.url("/private/page"))
    assert reply.is_error
    assert "refused: robots.txt of 127.0.0.1 disallows brainhands-web/0.1 from /private/page" in reply.output
    assert web.requests_to("/private/page") == []
    assert not (await call("web_fetch", url=web.url("/article"))).is_error
    assert len(web.requests_to("/robots.txt")) == 1  # read once per site, then cached


async def test_robots_txt_rules_for_brainhands_web_take_precedence_over_the_star_group(web_hands):
    robots = "User-agent: *\nDisallow: /\n\nUser-agent: brainhands-web\nDisallow: /no-bots\n"
    routes = {"/robots.txt": Reply(200, robots, "text/plain"), "/article": Reply(200, ARTICLE),
              "/no-bots": Reply(200, ARTICLE)}
    call = await web_hands(allowed())
    with FakeHTTP(routes) as site:
        assert not (await call("web_fetch", url=site.url("/article"))).is_error
        reply = await call("web_fetch", url=site.url("/no-bots"))
        assert reply.is_error and "disallows brainhands-web/0.1 from /no-bots" in reply.output
        assert site.requests_to("/no-bots") == []


async def test_robots_txt_can_be_ignored_by_the_operator(web, web_hands):
    call = await web_hands(allowed(robots=False))
    reply = await call("web_fetch", url=web.url("/private/page"))
    assert not reply.is_error, reply.output
    assert web.requests_to("/robots.txt") == []


async def test_robots_txt_missing_allows_and_failing_disallows(web_hands):
    call = await web_hands(allowed())
    with FakeHTTP({"/article": Reply(200, ARTICLE)}) as no_robots:
        assert not (await call("web_fetch", url=no_robots.url("/article"))).is_error
    with FakeHTTP({"/robots.txt": Reply(503, "busy", "text/plain"), "/article": Reply(200, ARTICLE)}) as failing:
        reply = await call("web_fetch", url=failing.url("/article"))
        assert reply.is_error and "robots.txt of 127.0.0.1 could not be read (HTTP 503)" in reply.output
        assert failing.requests_to("/article") == []


async def test_a_huge_robots_txt_is_read_up_to_its_first_512_kib(web_hands):
    robots = "User-agent: *\nDisallow: /secret/\n" + "# padding\n" * 60_000 + "Disallow: /article\n"
    routes = {"/robots.txt": Reply(200, robots, "text/plain"), "/article": Reply(200, ARTICLE),
              "/secret/plan": Reply(200, ARTICLE)}
    call = await web_hands(allowed())
    with FakeHTTP(routes) as site:
        assert not (await call("web_fetch", url=site.url("/article"))).is_error  # its rule comes after the cut
        reply = await call("web_fetch", url=site.url("/secret/plan"))
        assert reply.is_error and "robots.txt of 127.0.0.1 disallows" in reply.output


@pytest.mark.parametrize(
    "url,why",
    [("file:///etc/passwd", "only http:// and https:// URLs can be fetched, not file:"),
     ("ftp://example.com/x", "not ftp:"),
     ("example.com/page", "without a scheme"),
     ("http://user:secret@example.com/", "carries a user name or password"),
     ("http:///nohost", "has no host")],
)
async def test_urls_that_are_not_web_pages_are_refused(web_hands, url, why):
    call = await web_hands(allowed())
    reply = await call("web_fetch", url=url)
    assert reply.is_error and why in reply.output


async def test_http_errors_and_dead_hosts_are_errors_that_say_what_happened(web, web_hands, refused_port):
    call = await web_hands(allowed())
    gone = await call("web_fetch", url=web.url("/gone"))
    assert gone.is_error and f"HTTP 404 Not Found from {web.url('/gone')}" in gone.output
    broken = await call("web_fetch", url=web.url("/broken"))
    assert broken.is_error and "HTTP 500 Internal Server Error" in broken.output
    port = refused_port
    dead = await call("web_fetch", url=f"http://127.0.0.1:{port}/")
    assert dead.is_error and f"could not connect to 127.0.0.1:{port}" in dead.output


# --- web_fetch: the cache ----------------------------------------------------------------------------------


async def test_pages_are_cached_by_url(web, web_hands):
    call = await web_hands(allowed())
    first = await call("web_fetch", url=web.url("/article"))
    again = await call("web_fetch", url=web.url("/article") + "#section")  # the fragment is not part of the page
    shorter = await call("web_fetch", url=web.url("/article"), max_chars=100)
    assert first.output == again.output and not first.is_error
    assert "[truncated: showing 100 of" in shorter.output
    assert len(web.requests_to("/article")) == 1


async def test_the_same_page_asked_for_at_once_is_downloaded_once(web, web_hands):
    web.routes["/popular"] = Reply(200, ARTICLE, delay=1.0)  # long enough for all three asks to arrive
    call = await web_hands(allowed())
    replies = await asyncio.gather(*(call("web_fetch", url=web.url("/popular")) for _ in range(3)))
    assert all(not r.is_error and ARTICLE_SENTENCES[0] in r.output for r in replies)
    assert len(web.requests_to("/popular")) == 1


async def test_the_cache_is_bounded_and_expires(web, web_hands):
    bounded = await web_hands(allowed(cache_entries=1))
    for path in ["/a", "/b", "/a"]:
        assert not (await bounded("web_fetch", url=web.url(path))).is_error
    assert (len(web.requests_to("/a")), len(web.requests_to("/b"))) == (2, 1)
    uncached = await web_hands(allowed(cache_ttl=0))
    for _ in range(2):
        await uncached("web_fetch", url=web.url("/article"))
    assert len(web.requests_to("/article")) == 2


async def test_web_hands_are_idempotent_and_describe_their_limits(web_hands, hand_service, hand_client):
    running = await hand_service(make_web_hands(WebConfig(max_bytes=2 * MIB, timeout=7, max_redirects=3)))
    specs = {s.name: s for s in await hand_client(running.address).describe(timeout=10)}
    assert set(specs) == {"web_search", "web_fetch"}
    assert all(s.idempotent for s in specs.values())
    assert "2 MiB, 7s, 3 redirects" in specs["web_fetch"].description
    assert "robots.txt" in specs["web_fetch"].description
    schema = json.loads(specs["web_search"].input_schema_json)
    assert set(schema["properties"]) == {"query", "max_results", "include_domains", "exclude_domains"}


# --- web_search: each provider's real request and response -------------------------------------------------

KEY = "test-key-9f3a"
DOCS = {"title": "The Python Tutorial", "url": "https://docs.python.org/3/tutorial/"}
WIKI = {"title": "Python wiki", "url": "https://wiki.python.org/moin/BeginnersGuide"}
ELSEWHERE = {"title": "A blog", "url": "https://blog.example.com/python"}
FILTERS = {"include_domains": ["python.org"], "exclude_domains": ["https://wiki.python.org/"]}


async def _search(web_hands, provider, fake, **inp):
    config = WebConfig(search=SearchConfig(provider=provider, base_url=fake.base, api_key=KEY if provider != "searxng" else ""))
    call = await web_hands(config)
    reply = await call("web_search", **inp)
    assert KEY not in reply.output
    return reply


def _only_docs(reply, provider):
    assert not reply.is_error, reply.output
    out = json.loads(reply.output)
    assert out["provider"] == provider
    # wiki.python.org is excluded and blog.example.com is outside the included domain, whatever the provider sent.
    assert [r["url"] for r in out["results"]] == [DOCS["url"]]
    return out["results"][0]


async def test_brave_gets_its_token_header_and_site_operators(web_hands):
    answer = {"type": "search", "query": {"original": "python tutorial", "more_results_available": True},
              "web": {"type": "search", "results": [
                  {**DOCS, "description": "This <strong>tutorial</strong> introduces the reader &amp; more.",
                   "extra_snippets": ["x"], "page_age": "2026-01-01"},
                  {**WIKI, "description": "wiki"}, {**ELSEWHERE, "description": "blog"}]}}
    with FakeHTTP({"/res/v1/web/search": json_reply(answer)}) as brave:
        reply = await _search(web_hands, "brave", brave, query="python tutorial", max_results=3, **FILTERS)
    result = _only_docs(reply, "brave")
    assert result == {**DOCS, "snippet": "This tutorial introduces the reader & more."}
    [seen] = brave.seen
    assert (seen.method, seen.path) == ("GET", "/res/v1/web/search")
    assert seen.headers["x-subscription-token"] == KEY
    assert seen.headers["accept"] == "application/json"
    assert seen.query["q"] == ["python tutorial site:python.org -site:wiki.python.org"]
    assert seen.query["count"] == ["3"]


async def test_tavily_gets_a_json_body_with_bearer_auth(web_hands):
    answer = {"query": "python tutorial", "answer": None, "images": [], "response_time": "0.8", "results": [
        {**DOCS, "content": "An informal introduction to Python.", "score": 0.9, "raw_content": None},
        {**WIKI, "content": "wiki", "score": 0.5, "raw_content": None}]}
    with FakeHTTP({"/search": json_reply(answer)}) as tavily:
        reply = await _search(web_hands, "tavily", tavily, query="python tutorial", max_results=4, **FILTERS)
    assert _only_docs(reply, "tavily")["snippet"] == "An informal introduction to Python."
    [seen] = tavily.seen
    assert (seen.method, seen.path) == ("POST", "/search")
    assert seen.headers["authorization"] == f"Bearer {KEY}"
    assert seen.headers["content-type"] == "application/json"
    body = seen.json()
    assert body["query"] == "python tutorial" and body["max_results"] == 4
    assert body["include_domains"] == ["python.org"] and body["exclude_domains"] == ["wiki.python.org"]
    assert KEY not in seen.body.decode()


async def test_exa_gets_its_api_key_header_and_camel_case_body(web_hands):
    answer = {"requestId": "b5947044c4b78efa9552a7c89b306d95", "resolvedSearchType": "neural", "results": [
        {**DOCS, "id": DOCS["url"], "publishedDate": "2026-01-01T00:00:00.000Z", "author": None,
         "highlights": ["Python is an easy to learn language.", "It has efficient data structures."],
         "highlightScores": [0.4, 0.3]},
        {**ELSEWHERE, "id": ELSEWHERE["url"], "highlights": ["blog"]}]}
    with FakeHTTP({"/search": json_reply(answer)}) as exa:
        reply = await _search(web_hands, "exa", exa, query="python tutorial", max_results=2, **FILTERS)
    assert _only_docs(reply, "exa")["snippet"] == "Python is an easy to learn language. … It has efficient data structures."
    [seen] = exa.seen
    assert (seen.method, seen.path) == ("POST", "/search")
    assert seen.headers["x-api-key"] == KEY and "authorization" not in seen.headers
    body = seen.json()
    assert body["query"] == "python tutorial" and body["numResults"] == 2
    assert body["includeDomains"] == ["python.org"] and body["excludeDomains"] == ["wiki.python.org"]
    assert body["contents"] == {"highlights": True}


async def test_searxng_gets_format_json_and_results_are_capped(web_hands):
    many = [{"url": f"https://docs.python.org/3/page{i}", "title": f"Page {i}", "content": f"snippet {i}",
             "engine": "duckduckgo", "engines": ["duckduckgo"], "score": 1.0, "category": "general"}
            for i in range(8)]
    answer = {"query": "python", "number_of_results": 0, "results": many, "answers": [], "corrections": [],
              "infoboxes": [], "suggestions": [], "unresponsive_engines": []}
    with FakeHTTP({"/search": json_reply(answer)}) as searx:
        reply = await _search(web_hands, "searxng", searx, query="python", max_results=3)
    assert not reply.is_error, reply.output
    results = json.loads(reply.output)["results"]
    assert results == [{"title": f"Page {i}", "url": f"https://docs.python.org/3/page{i}", "snippet": f"snippet {i}"}
                       for i in range(3)]
    [seen] = searx.seen
    assert (seen.method, seen.path) == ("GET", "/search")
    assert seen.query["q"] == ["python"] and seen.query["format"] == ["json"]


@pytest.mark.parametrize(
    "provider,path,reply,why",
    [("brave", "/res/v1/web/search", json_reply({"error": "bad token"}, 401), "refused the request (HTTP 401): check BRAVE_API_KEY"),
     ("tavily", "/search", json_reply({"detail": "slow down"}, 429), "rate limiting this key (HTTP 429)"),
     ("exa", "/search", Reply(502, "bad gateway", "text/plain"), "answered HTTP 502: bad gateway"),
     ("searxng", "/search", Reply(403, "Forbidden", "text/html"), "JSON output may be off on this instance"),
     ("tavily", "/search", Reply(200, "<html>not json</html>", "text/html"), "answered something that is not JSON")],
)
async def test_search_failures_are_errors_that_say_why(web_hands, provider, path, reply, why):
    with FakeHTTP({path: reply}) as fake:
        result = await _search(web_hands, provider, fake, query="anything")
    assert result.is_error and why in result.output


async def test_search_without_a_provider_or_reachable_api_says_what_to_set(web_hands, refused_port):
    unconfigured = await web_hands(WebConfig())
    reply = await unconfigured("web_search", query="anything")
    assert reply.is_error
    for var in ("BRAVE_API_KEY", "TAVILY_API_KEY", "EXA_API_KEY", "BRAINHANDS_SEARXNG_URL"):
        assert var in reply.output
    base = f"http://127.0.0.1:{refused_port}"
    dead = await web_hands(WebConfig(search=SearchConfig(provider="brave", base_url=base, api_key=KEY)))
    reply = await dead("web_search", query="anything")
    assert reply.is_error and "the brave search API is unreachable" in reply.output


async def test_search_input_is_checked(web_hands):
    call = await web_hands(WebConfig())
    empty = await call("web_search", query="   ")
    assert empty.is_error and "query is empty" in empty.output
    bad = await call("web_search", query="x", include_domains=["not a domain!"])
    assert bad.is_error and "include_domains: 'not a domain!' is not a domain name" in bad.output


# --- configuration from the hand's environment ---------------------------------------------------------------


def test_the_provider_is_chosen_by_the_environment():
    assert WebConfig.from_env({}).search.provider == ""
    first = WebConfig.from_env({"TAVILY_API_KEY": "t", "EXA_API_KEY": "e"}).search
    assert (first.provider, first.base_url, first.api_key) == ("tavily", "https://api.tavily.com", "t")
    chosen = WebConfig.from_env({"BRAINHANDS_WEB_SEARCH": "exa", "TAVILY_API_KEY": "t", "EXA_API_KEY": "e",
                                 "BRAINHANDS_EXA_URL": "http://127.0.0.1:9/"}).search
    assert (chosen.provider, chosen.base_url, chosen.api_key) == ("exa", "http://127.0.0.1:9", "e")
    searx = WebConfig.from_env({"BRAINHANDS_SEARXNG_URL": "http://searx.internal:8080"}).search
    assert (searx.provider, searx.base_url) == ("searxng", "http://searx.internal:8080")
    assert "api_key" not in repr(first)


@pytest.mark.parametrize(
    "env,message",
    [({"BRAINHANDS_WEB_SEARCH": "brave"}, "BRAINHANDS_WEB_SEARCH=brave needs BRAVE_API_KEY"),
     ({"BRAINHANDS_WEB_SEARCH": "bing"}, "BRAINHANDS_WEB_SEARCH must be one of brave, tavily, exa, searxng"),
     ({"BRAINHANDS_SEARXNG_URL": "searx.internal"}, "BRAINHANDS_SEARXNG_URL must be an http:// or https:// URL"),
     ({"BRAINHANDS_WEB_ALLOW": "10.0.0.0/8, not/valid"}, "BRAINHANDS_WEB_ALLOW: 'not/valid' is neither"),
     ({"BRAINHANDS_WEB_MAX_BYTES": "lots"}, "BRAINHANDS_WEB_MAX_BYTES must be an integer"),
     ({"BRAINHANDS_WEB_TIMEOUT": "-1"}, "BRAINHANDS_WEB_TIMEOUT must not be negative"),
     ({"BRAINHANDS_WEB_ROBOTS": "maybe"}, "BRAINHANDS_WEB_ROBOTS must be 'respect' or 'ignore'")],
)
def test_a_bad_setting_is_one_error_naming_it(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        WebConfig.from_env(env)


def test_the_allow_list_reads_networks_addresses_and_hosts():
    policy = AddressPolicy.parse("10.0.0.0/8, 192.168.1.7 intranet.example,*.corp.example [fd00::1]")
    assert [str(n) for n in policy.networks] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::1/128"]
    assert policy.host_allowed("intranet.example") and policy.host_allowed("wiki.corp.example")
    assert policy.host_allowed("corp.example") and not policy.host_allowed("evilcorp.example")


def test_the_service_refuses_to_start_on_a_bad_setting_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "hands.builtin.web", "--port", "0"],
        env={"PATH": "/usr/bin:/bin", "BRAINHANDS_WEB_ALLOW": "not/valid", "BRAINHANDS_LOG_FORMAT": "json"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert "BRAINHANDS_WEB_ALLOW: 'not/valid' is neither a CIDR" in proc.stderr
    assert "Traceback" not in proc.stderr
