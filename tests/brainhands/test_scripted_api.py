"""The scripted Messages API (brainhands.scripted_api) speaks well enough for the real anthropic SDK: create, retries, streaming, errors."""

from __future__ import annotations

import anthropic
import pytest

from brainhands.scripted_api import HTTPError, ScriptedMessagesAPI, text_reply, tool_reply, tool_results


def _client(api: ScriptedMessagesAPI, **kwargs) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test-key", base_url=api.base_url, **kwargs)


async def test_create_returns_the_scripted_message_and_records_the_request(messages_api):
    messages_api.script(text_reply("Paris.", input_tokens=12, output_tokens=3, cache_read=7))
    async with _client(messages_api) as client:
        msg = await client.messages.create(
            model="claude-sonnet-5-5",
            max_tokens=100,
            system="Answer briefly.",
            messages=[{"role": "user", "content": "Capital of France?"}],
        )
    assert msg.content[0].text == "Paris."
    assert msg.stop_reason == "end_turn"
    assert msg.model == "claude-sonnet-5-5"
    assert (msg.usage.input_tokens, msg.usage.output_tokens, msg.usage.cache_read_input_tokens) == (12, 3, 7)
    [seen] = messages_api.requests
    assert seen.body["system"] == "Answer briefly."
    assert seen.body["messages"][0]["content"] == "Capital of France?"
    assert seen.api_key == "test-key"
    assert "anthropic-version" in seen.headers
    assert seen.raw.startswith(b"{")


async def test_429_with_retry_after_zero_is_retried_by_the_sdk(messages_api):
    messages_api.script(HTTPError(429, retry_after=0), text_reply("after the retry"))
    async with _client(messages_api) as client:
        msg = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert msg.content[0].text == "after the retry"
    assert len(messages_api.requests) == 2
    assert messages_api.requests[0].body == messages_api.requests[1].body


async def test_error_after_the_sdks_retries_surfaces_as_the_typed_error(messages_api):
    messages_api.script(*[HTTPError(529, retry_after=0)] * 2)
    async with _client(messages_api, max_retries=1) as client:
        with pytest.raises(anthropic.InternalServerError) as info:
            await client.messages.create(
                model="claude-sonnet-5-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"
    assert info.value.response.headers["request-id"].startswith("req_")
    assert len(messages_api.requests) == 2


async def test_wrong_key_is_an_authentication_error():
    with ScriptedMessagesAPI(api_key="right") as api:
        api.script(text_reply("never sent"))
        async with anthropic.AsyncAnthropic(api_key="wrong", base_url=api.base_url) as client:
            with pytest.raises(anthropic.AuthenticationError):
                await client.messages.create(
                    model="claude-sonnet-5-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
                )
        assert api.pending == 1


async def test_an_empty_script_fails_loudly_and_at_once(messages_api):
    async with _client(messages_api) as client:
        with pytest.raises(anthropic.InternalServerError, match="script ran out"):
            await client.messages.create(
                model="claude-sonnet-5-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert len(messages_api.requests) == 1  # x-should-retry: false, so no retries


async def test_a_callable_reply_answers_each_tool_use_from_the_request(messages_api):
    messages_api.script(
        tool_reply([("echo", {"text": "a"}), ("echo", {"text": "b"})]),
        lambda body: text_reply(" + ".join(r["content"] for r in tool_results(body))),
    )
    async with _client(messages_api) as client:
        messages = [{"role": "user", "content": "echo a and b"}]
        first = await client.messages.create(model="claude-sonnet-5-5", max_tokens=100, messages=messages)
        assert first.stop_reason == "tool_use"
        uses = [b for b in first.content if b.type == "tool_use"]
        assert [u.input for u in uses] == [{"text": "a"}, {"text": "b"}]
        assert len({u.id for u in uses}) == 2 and all(u.id.startswith("toolu_") for u in uses)
        messages += [
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": u.id, "content": u.input["text"].upper()} for u in uses
            ]},
        ]
        second = await client.messages.create(model="claude-sonnet-5-5", max_tokens=100, messages=messages)
    assert second.content[0].text == "A + B"
    # Two requests over one kept-alive connection.
    assert messages_api.requests[0].client == messages_api.requests[1].client


async def test_streamed_text_and_tool_use_arrive_whole(messages_api):
    messages_api.script(
        text_reply("Hello from a stream", input_tokens=21, output_tokens=8),
        tool_reply([("fs_read", {"path": "README.md", "limit": 10})], text="Let me look.", output_tokens=9),
    )
    async with _client(messages_api) as client:
        async with client.messages.stream(
            model="claude-sonnet-5-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        assert "".join(pieces) == "Hello from a stream"
        assert len(pieces) == 2
        assert final.content[0].text == "Hello from a stream"
        assert final.stop_reason == "end_turn"
        assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 8)

        async with client.messages.stream(
            model="claude-sonnet-5-5", max_tokens=100, messages=[{"role": "user", "content": "read it"}]
        ) as stream:
            final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].text == "Let me look."
    assert final.content[1].name == "fs_read"
    assert final.content[1].input == {"path": "README.md", "limit": 10}
    assert final.usage.output_tokens == 9
    assert all(r.body["stream"] is True for r in messages_api.requests)


async def test_create_with_stream_true_yields_the_raw_events(messages_api):
    messages_api.script(text_reply("raw"))
    async with _client(messages_api) as client:
        stream = await client.messages.create(
            model="claude-sonnet-5-5", max_tokens=10, stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds


def test_a_reply_of_the_wrong_kind_is_refused_when_scripted(messages_api):
    with pytest.raises(TypeError):
        messages_api.script("just a string")
