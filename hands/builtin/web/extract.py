"""From a response body to text for the model: HTML through trafilatura as markdown, text and JSON as they are."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

#: What web_fetch reads; anything else (images, PDFs, archives, audio, video) is refused before its body is read.
_HTML = {"text/html", "application/xhtml+xml"}
_TEXT_APPLICATION = {
    "application/json", "application/xml", "application/javascript", "application/x-javascript",
    "application/yaml", "application/x-yaml", "application/toml", "application/x-ndjson", "application/csv",
}
_CHARSET = re.compile(r"charset\s*=\s*\"?([A-Za-z0-9._:-]+)", re.I)


@dataclass(frozen=True)
class Page:
    """What a fetch found: the final URL after redirects, a title when the page has one, and the text."""

    url: str
    title: str
    text: str
    content_type: str
    note: str = ""

    def render(self, max_chars: int) -> str:
        head = f"# {self.title}\n\nURL: {self.url}\n" if self.title else f"URL: {self.url}\n"
        if self.content_type not in _HTML:
            head += f"Content-Type: {self.content_type or 'unknown'}\n"
        if self.note:
            head += f"Note: {self.note}\n"
        body = self.text
        if len(body) > max_chars:
            body = body[:max_chars] + f"\n\n[truncated: showing {max_chars} of {len(self.text)} characters]"
        return f"{head}\n{body}"


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def kind_of(content_type: str) -> str:
    """"html", "text" (passed through), "unknown" (no type given: look at the bytes) or "binary" (refused)."""
    mt = media_type(content_type)
    if not mt:
        return "unknown"
    if mt in _HTML:
        return "html"
    if mt.startswith("text/") or mt in _TEXT_APPLICATION or mt.endswith(("+json", "+xml")):
        return "text"
    return "binary"


def sniff(body: bytes) -> str:
    """The kind of an untyped body: "html", "text" or "binary"."""
    start = body[:2048]
    if b"\x00" in start:
        return "binary"
    lowered = start.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html")) or b"<body" in lowered:
        return "html"
    try:
        start.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(start) - 4:  # not merely a character cut at the end of the sample
            return "binary"
    return "text"


def decode_text(body: bytes, content_type: str) -> str:
    match = _CHARSET.search(content_type)
    encoding = match.group(1) if match else "utf-8"
    try:
        return body.decode(encoding, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def page_title(tree) -> str:
    """The title the page gives itself: og:title, else <title>, else its first <h1>.

    (trafilatura's own guess prefers a lone <h1>, which on many sites is a menu's or a dialog's heading.)
    """
    for meta in tree.iter("meta"):
        if (meta.get("property") or meta.get("name") or "").lower() == "og:title" and (meta.get("content") or "").strip():
            return " ".join(meta.get("content").split())
    for path in (".//title", ".//h1"):
        element = tree.find(path)
        if element is not None:
            text = " ".join(element.text_content().split())
            if text:
                return text
    return ""


def html_page(body: bytes, url: str, content_type: str) -> Page:
    """The readable text of an HTML page as markdown (navigation, boilerplate and scripts dropped), and its title.

    CPU-bound (lxml): run it in a thread.
    """
    import trafilatura  # here, not at the top: it takes a second to import, and the service should start at once

    tree = trafilatura.load_html(body)
    if tree is None:
        return Page(url, "", "", media_type(content_type), note="the page could not be parsed as HTML")
    title = page_title(tree)
    options = {"url": url, "output_format": "markdown", "include_comments": False, "include_tables": True}
    text = trafilatura.extract(copy.deepcopy(tree), **options)
    note = ""
    if not text:
        text = trafilatura.extract(copy.deepcopy(tree), favor_recall=True, **options)
    if not text:
        text = trafilatura.html2txt(tree)
        note = "no main article was found; this is all the text of the page" if text else "the page has no text"
    text = (text or "").strip()
    first, _, rest = text.partition("\n")
    if title and first.lstrip("# ").strip() == title:  # the article's own heading repeats the title line
        text = rest.strip()
    return Page(url, title, text, media_type(content_type), note=note)
