"""web_search's providers: Brave, Tavily, Exa and SearXNG, each spoken in its own request and response format."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx2

from hands import HandError
from hands.builtin.web.config import PROVIDER_ENV, SearchConfig

SNIPPET_CHARS = 500
_TAG = re.compile(r"<[^>]+>")
_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$|^localhost$")


@dataclass(frozen=True)
class SearchQuery:
    query: str
    max_results: int
    include_domains: tuple[str, ...] = ()
    exclude_domains: tuple[str, ...] = ()


def clean_domains(domains: list[str], field: str) -> tuple[str, ...]:
    """Domain names as the filters want them ("example.com"), from what a model may write ("https://www.example.com/")."""
    out = []
    for raw in domains:
        value = raw.strip().lower()
        if "://" in value:
            value = urlsplit(value).hostname or ""
        value = value.split("/", 1)[0].rstrip(".")
        if value.startswith("*."):
            value = value[2:]
        if not _DOMAIN.match(value):
            raise HandError(f"{field}: {raw[:100]!r} is not a domain name (write it like 'example.com')")
        out.append(value)
    return tuple(dict.fromkeys(out))


def _in_domain(url: str, domains: tuple[str, ...]) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return any(host == d or host.endswith("." + d) for d in domains)


def _text(value) -> str:
    """A provider's snippet as plain text: tags stripped (Brave marks matches with <strong>), entities decoded."""
    if isinstance(value, list):
        value = " … ".join(str(v) for v in value if v)
    text = " ".join(html.unescape(_TAG.sub("", str(value or ""))).split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"


def _site_operators(q: SearchQuery) -> str:
    """The query with site: operators, for the providers whose filters live in the query (Brave, SearXNG)."""
    parts = [q.query]
    if q.include_domains:
        sites = " OR ".join(f"site:{d}" for d in q.include_domains)
        parts.append(f"({sites})" if len(q.include_domains) > 1 else sites)
    parts += [f"-site:{d}" for d in q.exclude_domains]
    return " ".join(parts)


class SearchClient:
    """One provider behind web_search's one schema; results come back as [{title, url, snippet}]."""

    def __init__(self, config: SearchConfig):
        self.config = config
        self._ssl = httpx2.create_ssl_context()  # once: loading the trust store is the slow part of a client

    @property
    def provider(self) -> str:
        return self.config.provider

    async def search(self, q: SearchQuery) -> list[dict[str, str]]:
        if not self.config.provider:
            keys = ", ".join(PROVIDER_ENV[p][0] for p in PROVIDER_ENV)
            raise HandError(f"web search is not configured on this hand service: its operator sets one of {keys} "
                            "(and BRAINHANDS_WEB_SEARCH to choose)")
        method = getattr(self, f"_{self.config.provider}")
        async with httpx2.AsyncClient(timeout=self.config.timeout, verify=self._ssl) as client:
            try:
                raw = await method(client, q)
            except httpx2.TimeoutException:
                raise HandError(f"the {self.provider} search API did not answer within {self.config.timeout:g}s") from None
            except httpx2.HTTPError as exc:
                raise HandError(f"the {self.provider} search API is unreachable: {exc or type(exc).__name__}") from None
        results = []
        for item in raw:
            url = str(item.get("url") or "").strip()
            if not url.startswith(("http://", "https://")):
                continue
            # Every provider's filters are applied again here: the ones expressed as site: operators are hints.
            if q.include_domains and not _in_domain(url, q.include_domains):
                continue
            if q.exclude_domains and _in_domain(url, q.exclude_domains):
                continue
            results.append({"title": _text(item.get("title")) or url, "url": url, "snippet": _text(item.get("snippet"))})
            if len(results) >= q.max_results:
                break
        return results

    def _check(self, response: httpx2.Response) -> dict:
        if response.status_code in (401, 403):
            key = PROVIDER_ENV[self.provider][0]
            hint = ("JSON output may be off on this instance (search.formats in its settings.yml)"
                    if self.provider == "searxng" else f"check {key}")
            raise HandError(f"the {self.provider} search API refused the request (HTTP {response.status_code}): {hint}")
        if response.status_code == 429:
            raise HandError(f"the {self.provider} search API is rate limiting this key (HTTP 429): try again later")
        if response.status_code >= 400:
            raise HandError(f"the {self.provider} search API answered HTTP {response.status_code}: "
                            f"{' '.join(response.text.split())[:200]}")
        try:
            body = response.json()
        except ValueError:
            raise HandError(f"the {self.provider} search API answered something that is not JSON") from None
        if not isinstance(body, dict):
            raise HandError(f"the {self.provider} search API answered an unexpected JSON shape")
        return body

    # Brave Web Search: GET /res/v1/web/search?q=&count=, X-Subscription-Token; results in web.results[].
    async def _brave(self, client: httpx2.AsyncClient, q: SearchQuery) -> list[dict]:
        response = await client.get(
            f"{self.config.base_url}/res/v1/web/search",
            params={"q": _site_operators(q), "count": min(20, q.max_results)},
            headers={"Accept": "application/json", "X-Subscription-Token": self.config.api_key},
        )
        body = self._check(response)
        items = ((body.get("web") or {}).get("results")) or []
        return [{"title": i.get("title"), "url": i.get("url"), "snippet": i.get("description")} for i in items]

    # Tavily: POST /search with a JSON body and Authorization: Bearer; results[] with content.
    async def _tavily(self, client: httpx2.AsyncClient, q: SearchQuery) -> list[dict]:
        payload: dict = {"query": q.query, "max_results": min(20, q.max_results), "search_depth": "basic"}
        if q.include_domains:
            payload["include_domains"] = list(q.include_domains)
        if q.exclude_domains:
            payload["exclude_domains"] = list(q.exclude_domains)
        response = await client.post(
            f"{self.config.base_url}/search",
            json=payload,
            headers={"Authorization": f"Bearer {self.config.api_key}"},
        )
        items = self._check(response).get("results") or []
        return [{"title": i.get("title"), "url": i.get("url"), "snippet": i.get("content")} for i in items]

    # Exa: POST /search with x-api-key; camelCase body; highlights asked for as the snippet.
    async def _exa(self, client: httpx2.AsyncClient, q: SearchQuery) -> list[dict]:
        payload: dict = {"query": q.query, "numResults": q.max_results, "type": "auto", "contents": {"highlights": True}}
        if q.include_domains:
            payload["includeDomains"] = list(q.include_domains)
        if q.exclude_domains:
            payload["excludeDomains"] = list(q.exclude_domains)
        response = await client.post(f"{self.config.base_url}/search", json=payload,
                                     headers={"x-api-key": self.config.api_key})
        items = self._check(response).get("results") or []
        return [
            {"title": i.get("title"), "url": i.get("url"),
             "snippet": i.get("highlights") or i.get("summary") or i.get("text")}
            for i in items
        ]

    # SearXNG: GET /search?q=&format=json (the instance must allow the json format); results[] with content.
    async def _searxng(self, client: httpx2.AsyncClient, q: SearchQuery) -> list[dict]:
        response = await client.get(
            f"{self.config.base_url}/search",
            params={"q": _site_operators(q), "format": "json", "pageno": 1},
            headers={"Accept": "application/json"},
        )
        items = self._check(response).get("results") or []
        return [{"title": i.get("title"), "url": i.get("url"), "snippet": i.get("content")} for i in items]
