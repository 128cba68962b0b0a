"""The web hands: web_search (one schema over Brave, Tavily, Exa or SearXNG) and web_fetch (a page as markdown)."""

from __future__ import annotations

import json
import ssl
from typing import Annotated

import structlog

from hands import Context, Hand, HandError, hand
from hands.builtin.web.addresses import Resolver
from hands.builtin.web.config import WebConfig
from hands.builtin.web.fetch import Fetcher, size_words
from hands.builtin.web.search import SearchClient, SearchQuery, clean_domains

log = structlog.get_logger("hands.web")

MAX_RESULTS = 20
MAX_CHARS = 100_000


def make_web_hands(
    config: WebConfig = WebConfig(),
    *,
    resolver: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> list[Hand]:
    """web_search and web_fetch under one config; resolver and ssl_context are for tests and special deployments."""
    searcher = SearchClient(config.search)
    fetcher = Fetcher(config, resolver=resolver, ssl_context=ssl_context)
    provider = config.search.provider or "none configured (every call fails until the operator sets a key)"
    robots = (
        f"It honours robots.txt (the rules for user-agent {config.user_agent.split('/')[0]!r}, else '*'; "
        "a missing robots.txt allows all, one that answers 5xx disallows all, as RFC 9309 says)."
        if config.robots else "robots.txt is not consulted on this service (its operator turned it off)."
    )

    @hand(
        description=(
            "Search the web. Returns JSON {provider, query, results: [{title, url, snippet}]}, best first. "
            "Use it to find sources, then read the promising ones with web_fetch; cite the url of what you use. "
            f"Provider: {provider}."
        ),
        idempotent=True,
    )
    async def web_search(
        query: Annotated[str, "What to search for, in plain words (operators such as quotes may work)."],
        max_results: Annotated[int, f"How many results to return (1-{MAX_RESULTS})."] = 5,
        include_domains: Annotated[list[str], "Only results from these domains, e.g. ['python.org']."] = [],  # noqa: B006 - a JSON default
        exclude_domains: Annotated[list[str], "No results from these domains."] = [],  # noqa: B006
    ) -> str:
        if not query.strip():
            raise HandError("query is empty: say what to search for")
        q = SearchQuery(
            query=" ".join(query.split())[:400],
            max_results=max(1, min(MAX_RESULTS, max_results)),
            include_domains=clean_domains(include_domains, "include_domains"),
            exclude_domains=clean_domains(exclude_domains, "exclude_domains"),
        )
        results = await searcher.search(q)
        return json.dumps({"provider": searcher.provider, "query": q.query, "results": results}, ensure_ascii=False)

    @hand(
        description=(
            "Read a web page: returns its readable text as markdown (navigation, ads and scripts removed) with "
            "its title and the final URL after redirects. Plain text and JSON come back as they are; images, "
            f"PDFs and other binaries are refused. Limits: {size_words(config.max_bytes)}, {config.timeout:g}s, "
            f"{config.max_redirects} redirects; private, loopback and link-local addresses are refused. {robots} "
            "Pages are cached by URL for a while, so fetching the same URL again (or at the same time as another worker) is cheap."
        ),
        idempotent=True,
    )
    async def web_fetch(
        url: Annotated[str, "The http:// or https:// URL to read."],
        max_chars: Annotated[int, f"The most characters of text to return (100-{MAX_CHARS})."] = 20_000,
        *,
        ctx: Context,
    ) -> str:
        page, cached = await fetcher.fetch(url, time_left=ctx.time_remaining())
        ctx.logger.info("web page fetched", url=page.url, chars=len(page.text), cached=cached)
        return page.render(max(100, min(MAX_CHARS, max_chars)))

    return [web_search, web_fetch]


def HANDS() -> list[Hand]:  # noqa: N802 - the name `brainhands serve hand` looks for
    """The web hands configured from this process's environment (BRAINHANDS_WEB_*, the search provider's key)."""
    config = WebConfig.from_env()
    log.info(
        "web hands configured",
        search=config.search.provider or "none",
        allow=[str(n) for n in config.allow.networks] + list(config.allow.hosts),
        robots=config.robots,
    )
    return make_web_hands(config)
