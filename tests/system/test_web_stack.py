"""The web hands as the local stack runs them: a real hand process behind a real gateway process."""

from __future__ import annotations

import json

import pytest

from brainhands.stack import start_local_stack
from hands import HandClient
from tests.hands.fake_web import ARTICLE, FakeHTTP, Reply, json_reply

pytestmark = pytest.mark.system


@pytest.fixture
def clean_env(monkeypatch):
    """The stack's children inherit this process's environment: start from none of the web settings."""
    for var in ("BRAINHANDS_WEB_ALLOW", "BRAINHANDS_WEB_SEARCH", "BRAVE_API_KEY", "TAVILY_API_KEY", "EXA_API_KEY",
                "BRAINHANDS_SEARXNG_URL"):
        monkeypatch.delenv(var, raising=False)


async def test_in_the_local_stack_web_fetch_cannot_reach_loopback_services(tmp_path, clean_env):
    with FakeHTTP({"/article": Reply(200, ARTICLE)}) as local_service:
        stack = await start_local_stack(tmp_path, hands=("web",), timeout=120)
        try:
            async with HandClient(stack.gateway) as client:
                for url in [local_service.url("/article"), f"http://{stack.gateway}/", "http://localhost:6379/"]:
                    reply = await client.execute("web_fetch", {"url": url}, timeout=30)
                    assert reply.is_error, url
                    assert "loopback address" in reply.output and "BRAINHANDS_WEB_ALLOW" in reply.output
        finally:
            stack.stop()
        assert local_service.seen == []


async def test_research_through_the_gateway_searches_then_fetches(tmp_path, clean_env):
    with FakeHTTP({"/article": Reply(200, ARTICLE)}) as site:
        answer = {"query": "vents", "results": [
            {"url": site.url("/article"), "title": "Hydrothermal vents", "content": "Fissures on the sea floor."}]}
        with FakeHTTP({"/search": json_reply(answer)}) as searx:
            stack = await start_local_stack(tmp_path, hands=("web",), extra_env={
                "BRAINHANDS_WEB_ALLOW": "127.0.0.1", "BRAINHANDS_SEARXNG_URL": searx.base}, timeout=120)
            try:
                async with HandClient(stack.gateway) as client:
                    specs = {s.name: s for s in await client.describe(timeout=30)}
                    assert specs["web_search"].idempotent and specs["web_fetch"].idempotent
                    assert "Provider: searxng" in specs["web_search"].description
                    found = await client.execute("web_search", {"query": "deep sea vents"}, timeout=30)
                    assert not found.is_error, found.output
                    [result] = json.loads(found.output)["results"]
                    page = await client.execute("web_fetch", {"url": result["url"]}, timeout=30)
                    assert not page.is_error, page.output
                    assert page.output.startswith("# Hydrothermal vents | Ocean Notes")
                    assert "chemosynthesis" in page.output and "TRACKING-SCRIPT-TEXT" not in page.output
            finally:
                stack.stop()
        assert searx.seen[0].query["format"] == ["json"]
