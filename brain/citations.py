"""Checks an answer's [n] citations against the URLs the session's hands (and server tools) returned or fetched."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from brain.events import Citations, SessionState

#: A citation in the text: [3] (and [2][3]), not a[3] (an index), [3](url) (a link) or [[3]] (a wiki link).
_MARKER = re.compile(r"(?<![\w\[])\[(\d{1,3})\](?![\(\]])")
#: A line of the sources list: "[3] https://...", "- [3]: Title, https://...".
_SOURCE_LINE = re.compile(r"^\s*(?:[-*]\s*)?\[(\d{1,3})\]:?\s+(.*)$")
_URL = re.compile(r"https?://[^\s<>\"'`\]\[]+")
_TRAILING = ".,;:!?)>*_"


def normalize(url: str) -> str:
    """The form two URLs are compared in: no fragment, scheme and host lower-case, no trailing slash."""
    url = url.strip().rstrip(_TRAILING)
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def parse(text: str) -> tuple[list[int], dict[int, str | None]]:
    """The numbers cited in the text (in order of first use) and the sources list: n -> its URL (None: no URL)."""
    cited: list[int] = []
    sources: dict[int, str | None] = {}
    for line in text.splitlines():
        source = _SOURCE_LINE.match(line)
        if source is not None and (_URL.search(source.group(2)) or not _MARKER.search(source.group(2))):
            url = _URL.search(source.group(2))
            sources.setdefault(int(source.group(1)), url.group(0).rstrip(_TRAILING) if url else None)
            continue
        for marker in _MARKER.finditer(line):
            n = int(marker.group(1))
            if n not in cited:
                cited.append(n)
    return cited, sources


def seen_urls(states: Iterable[SessionState]) -> set[str]:
    """Every URL a hand returned or fetched in these sessions, normalized: the results of a search
    ({"results": [{"url"}]}), the final URL of a fetched page ("URL: ..."), the URL a successful fetch asked for,
    and the results of the Anthropic server tools (web_search_tool_result, web_fetch_tool_result) in the log."""
    urls: set[str] = set()
    for state in states:
        for call in state.calls.values():
            finished = call.finished
            if finished is None or finished.is_error or call.not_run:
                continue
            urls.update(_urls_in_output(finished.output or ""))
            if isinstance(call.input, dict) and isinstance(call.input.get("url"), str):
                urls.add(normalize(call.input["url"]))
        for turn in state.turns:
            for block in turn.content:
                urls.update(_urls_in_server_result(block))
    return urls


def _urls_in_output(output: str) -> set[str]:
    urls: set[str] = set()
    try:
        data = json.loads(output)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        for result in data["results"]:
            if isinstance(result, dict) and isinstance(result.get("url"), str):
                urls.add(normalize(result["url"]))
        return urls
    for line in output.splitlines()[:20]:  # a fetched page names its final URL in its header lines
        if line.startswith("URL: "):
            urls.add(normalize(line[5:]))
    return urls


def _urls_in_server_result(block: dict[str, Any]) -> set[str]:
    kind, content = block.get("type"), block.get("content")
    if kind == "web_search_tool_result" and isinstance(content, list):
        return {normalize(r["url"]) for r in content if isinstance(r, dict) and isinstance(r.get("url"), str)}
    if kind == "web_fetch_tool_result" and isinstance(content, dict) and isinstance(content.get("url"), str):
        return {normalize(content["url"])} if content.get("type") == "web_fetch_result" else set()
    return set()


def check(text: str, seen: set[str]) -> Citations | None:
    """Each [n] of the text and of its sources list, checked: its sources-list line names a URL in seen.
    None when the text cites nothing."""
    cited, sources = parse(text)
    if not cited and not sources:
        return None
    checked: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    # Every [n] cited, then any source listed and not cited: it too claims the session read it.
    for n in [*cited, *(n for n in sorted(sources) if n not in cited)]:
        url = sources.get(n)
        if url is None:
            why = "no URL for it in the sources list" if n in sources else "not in the sources list"
            unknown.append({"n": n, "url": None, "why": why})
        elif normalize(url) in seen:
            checked.append({"n": n, "url": url})
        else:
            unknown.append({"n": n, "url": url, "why": "no hand returned or fetched this URL in the session"})
    return Citations(checked=checked, unknown=unknown)


def server_citation_urls(state: SessionState) -> list[str]:
    """The URLs the answer's citation blocks name (Anthropic server tools), in order, once each."""
    out: list[str] = []
    for turn in state.turns:
        for block in turn.content:
            for citation in block.get("citations") or []:
                url = citation.get("url") if isinstance(citation, dict) else None
                if isinstance(url, str) and url not in out:
                    out.append(url)
    return out


def check_session(state: SessionState, text: str, subs: Iterable[SessionState] = ()) -> Citations | None:
    """The citations of a session's answer: its [n] and the server tools' citation blocks, each checked against
    the URLs the session and its sub-sessions saw."""
    seen = seen_urls([state, *subs])
    found = check(text, seen) or Citations()
    for url in server_citation_urls(state):
        entry = {"n": None, "url": url}
        if normalize(url) in seen:
            found.checked.append(entry)
        else:
            found.unknown.append({**entry, "why": "no server tool result in the session has this URL"})
    return found if found.checked or found.unknown else None
