"""Hand names for MCP tools, and tool results as hand output."""

from __future__ import annotations

import base64

import mcp_types as types
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hands import NAME_RE
from hands.mcp import hand_names, output_text


def test_names_are_prefixed_lower_cased_and_made_valid():
    names = hand_names("gh", ["create_issue", "List.Repos", "search code", "get-file"])
    assert names == {
        "create_issue": "gh_create_issue",
        "List.Repos": "gh_list_repos",
        "search code": "gh_search_code",
        "get-file": "gh_get-file",
    }


def test_a_long_name_is_cut_with_a_hash_that_keeps_it_distinct():
    a, b = "x" * 80 + "alpha", "x" * 80 + "beta"
    names = hand_names("srv", [a, b])
    assert all(len(n) == 64 and NAME_RE.match(n) for n in names.values())
    assert names[a] != names[b] and names[a].startswith("srv_xxx")


def test_collisions_resolve_the_same_whatever_the_listing_order():
    tools = ["Get Data", "get_data", "GET.DATA"]
    first = hand_names("s", tools)
    assert first == hand_names("s", list(reversed(tools)))
    assert first["get_data"] == "s_get_data"  # the tool whose name needed no change keeps it
    assert len(set(first.values())) == 3


@given(st.lists(st.text(min_size=1, max_size=120), min_size=1, max_size=12, unique=True))
def test_any_tool_names_give_valid_distinct_hand_names(tools):
    names = hand_names("mcp", tools)
    assert set(names) == set(tools)
    assert len(set(names.values())) == len(tools)
    assert all(NAME_RE.fullmatch(n) for n in names.values())


@pytest.mark.parametrize("prefix", ["9lives", "files\n"])
def test_a_bad_prefix_is_refused(prefix):
    # "files\n": `$` matches before a trailing newline, so only a full match keeps it out of hand names
    with pytest.raises(ValueError, match="must match"):
        hand_names(prefix, ["x"])


def test_text_is_joined_and_other_content_summarised():
    png = base64.b64encode(b"\0" * 3000).decode()
    result = types.CallToolResult(content=[
        types.TextContent(type="text", text="first"),
        types.ImageContent(type="image", data=png, mime_type="image/png"),
        types.AudioContent(type="audio", data=base64.b64encode(b"\0" * 100).decode(), mime_type="audio/wav"),
        types.ResourceLink(type="resource_link", uri="file:///a.txt", name="a.txt"),
        types.EmbeddedResource(type="resource", resource=types.TextResourceContents(uri="file:///b", text="inline")),
        types.TextContent(type="text", text="last"),
    ])  # fmt: skip
    assert output_text(result) == (
        "first\n[image/png, 3 KB]\n[audio/wav, 100 B]\n[resource link: file:///a.txt (a.txt)]\ninline\nlast"
    )


def test_structured_content_stands_in_when_there_is_no_content():
    result = types.CallToolResult(content=[], structured_content={"temperature": 21})
    assert output_text(result) == '{"temperature": 21}'
