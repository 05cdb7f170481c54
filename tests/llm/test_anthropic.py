"""AnthropicClient against the fake provider over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from corral.llm import (
    AnthropicClient,
    AuthFailed,
    BadRequest,
    BadResponse,
    Message,
    Overloaded,
    RateLimited,
    Text,
    Thinking,
    ToolResult,
    ToolSpec,
    ToolUse,
    Unavailable,
    Usage,
)
from corral.llm.errors import ProviderError
from tests.llm.fakeprovider import FakeProvider, FakeThinking, Reply, Status, StreamError

BASH = ToolSpec("bash", "Run a shell command", {"type": "object", "properties": {"cmd": {}}})
READ = ToolSpec("read", "Read a file", {"type": "object", "properties": {"path": {}}})
HELLO = [Message("user", [Text("hello")])]


@pytest.fixture
async def client(fake: FakeProvider) -> AsyncIterator[AnthropicClient]:
    async with AnthropicClient(fake.url, "sk-ant-test") as c:
        yield c


async def test_text_completion_with_usage_and_request_shape(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    usage = Usage(input_tokens=12, output_tokens=7, cache_read_tokens=100, cache_write_tokens=30)
    fake.script("anthropic", Reply.text("Hello there, friend!", usage=usage, model="claude-x-1"))

    out = await client.complete("claude-x", "You are terse.", HELLO, [BASH], max_tokens=512)

    assert out.content == [Text("Hello there, friend!")]
    assert out.text == "Hello there, friend!"
    assert out.stop_reason == "end_turn"
    assert out.usage == usage
    assert out.model == "claude-x-1"
    [req] = fake.requests
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-test"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers
    assert req.body == {
        "model": "claude-x",
        "max_tokens": 512,
        "stream": True,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "tools": [
            {
                "name": "bash",
                "description": "Run a shell command",
                "input_schema": BASH.input_schema,
            }
        ],
    }


async def test_empty_system_and_no_tools_are_omitted(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    fake.script("anthropic", Reply.text("ok"))
    await client.complete("m", "", HELLO, [], max_tokens=10)
    body = fake.requests[0].body
    assert "system" not in body and "tools" not in body and "thinking" not in body


async def test_multi_block_tool_use_assembled_from_fragments(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    bash = ToolUse("toolu_1", "bash", {"cmd": "ls -la /tmp && echo 'done'", "timeout": 30})
    read = ToolUse("toolu_2", "read", {"path": "src/main.py", "lines": [1, 2, 3]})
    fake.script("anthropic", Reply.tools(bash, read, text="Let me look.", fragment=3))

    out = await client.complete("m", "sys", HELLO, [BASH, READ], max_tokens=100)

    assert out.content == [Text("Let me look."), bash, read]
    assert out.tool_uses == [bash, read]
    assert out.stop_reason == "tool_use"


async def test_second_turn_carries_tool_use_and_result(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    call = ToolUse("toolu_9", "bash", {"cmd": "false"})
    fake.script("anthropic", Reply.tools(call), Reply.text("It failed."))

    first = await client.complete("m", "sys", HELLO, [BASH], max_tokens=100)
    history = [
        *HELLO,
        Message("assistant", first.content),
        Message("user", [ToolResult("toolu_9", "exit 1", is_error=True), Text("why?")]),
    ]
    second = await client.complete("m", "sys", history, [BASH], max_tokens=100)

    assert second.text == "It failed."
    assert fake.requests[1].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_9", "name": "bash", "input": {"cmd": "false"}}
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_9",
                    "content": "exit 1",
                    "is_error": True,
                },
                {"type": "text", "text": "why?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("level", "budget"),
    [("minimal", 1024), ("low", 2048), ("medium", 8192), ("high", 16384), ("xhigh", 32768)],
)
async def test_thinking_levels_map_to_budgets(
    fake: FakeProvider, client: AnthropicClient, level: str, budget: int
) -> None:
    fake.script("anthropic", Reply.text("ok"))
    await client.complete("m", "s", HELLO, [], max_tokens=1000, thinking_level=level)
    body = fake.requests[0].body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert body["max_tokens"] == 1000 + budget


@pytest.mark.parametrize("level", ["off", None])
async def test_thinking_off_sends_nothing(
    fake: FakeProvider, client: AnthropicClient, level: str | None
) -> None:
    fake.script("anthropic", Reply.text("ok"))
    await client.complete("m", "s", HELLO, [], max_tokens=1000, thinking_level=level)
    assert "thinking" not in fake.requests[0].body
    assert fake.requests[0].body["max_tokens"] == 1000


async def test_thinking_blocks_kept_out_of_text_and_sent_back(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    call = ToolUse("toolu_1", "bash", {"cmd": "ls"})
    fake.script(
        "anthropic",
        Reply([FakeThinking("I should list files.", "sig-1"), Text("Listing."), call]),
        Reply.text("done"),
    )
    out = await client.complete("m", "s", HELLO, [BASH], 100, thinking_level="low")
    assert out.text == "Listing."
    assert out.content[0] == Thinking("I should list files.", "sig-1")

    history = [
        *HELLO,
        Message("assistant", out.content),
        Message("user", [ToolResult("toolu_1", "a")]),
    ]
    await client.complete("m", "s", history, [BASH], 100, thinking_level="low")
    sent = fake.requests[1].body["messages"][1]["content"]
    assert sent[0] == {"type": "thinking", "thinking": "I should list files.", "signature": "sig-1"}
    assert [b["type"] for b in sent] == ["thinking", "text", "tool_use"]


async def test_oauth_token_is_a_bearer(fake: FakeProvider) -> None:
    fake.script("anthropic", Reply.text("ok"))
    async with AnthropicClient(fake.url, "oat-1", auth_type="oauth_token") as client:
        await client.complete("m", "s", HELLO, [], 10)
    headers = fake.requests[0].headers
    assert headers["authorization"] == "Bearer oat-1"
    assert "oauth" in headers["anthropic-beta"]
    assert "x-api-key" not in headers


def _anthropic_error(kind: str, message: str) -> dict[str, object]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (Status(401, _anthropic_error("authentication_error", "invalid x-api-key")), AuthFailed),
        (Status(403, _anthropic_error("permission_error", "no access")), AuthFailed),
        (Status(400, _anthropic_error("invalid_request_error", "max_tokens: too big")), BadRequest),
        (Status(404, _anthropic_error("not_found_error", "model: nope")), BadRequest),
        (Status(422, "unprocessable"), BadRequest),
        (Status(529, _anthropic_error("overloaded_error", "Overloaded")), Overloaded),
        (Status(503, "upstream unavailable"), Overloaded),
        (Status(500, _anthropic_error("api_error", "Internal server error")), Unavailable),
        (Status(502, "bad gateway"), Unavailable),
    ],
)
async def test_status_errors(
    fake: FakeProvider, client: AnthropicClient, status: Status, cls: type[ProviderError]
) -> None:
    fake.script("anthropic", status)
    with pytest.raises(cls) as info:
        await client.complete("claude-x", "s", HELLO, [], 10)
    err = info.value
    assert type(err) is cls
    assert err.status == status.status
    text = str(err)
    assert "anthropic" in text and "'claude-x'" in text and fake.url in text
    assert f"HTTP {status.status}" in text
    expected = status.body if isinstance(status.body, str) else status.body["error"]["message"]  # type: ignore[index]
    assert err.provider_message == expected and expected in text


async def test_rate_limited_carries_retry_after(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    body = _anthropic_error("rate_limit_error", "Number of request tokens has exceeded your limit")
    fake.script("anthropic", Status(429, body, {"retry-after": "17"}), Status(429, body))
    with pytest.raises(RateLimited) as info:
        await client.complete("m", "s", HELLO, [], 10)
    assert info.value.retry_after == 17.0
    assert "exceeded your limit" in str(info.value)
    with pytest.raises(RateLimited) as info:
        await client.complete("m", "s", HELLO, [], 10)
    assert info.value.retry_after is None


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("overloaded_error", Overloaded),
        ("api_error", Unavailable),
        ("rate_limit_error", RateLimited),
        ("invalid_request_error", BadRequest),
    ],
)
async def test_error_event_in_stream(
    fake: FakeProvider, client: AnthropicClient, kind: str, cls: type[ProviderError]
) -> None:
    fake.script("anthropic", StreamError(kind, "something broke", after=3))
    with pytest.raises(cls, match="something broke") as info:
        await client.complete("m", "s", HELLO, [], 10)
    assert type(info.value) is cls


@pytest.mark.parametrize("after", [0, 1, 4])
async def test_dropped_stream_is_unavailable(
    fake: FakeProvider, client: AnthropicClient, after: int
) -> None:
    fake.script("anthropic", Reply.text("a long answer that never finishes", cut_after=after))
    with pytest.raises(Unavailable, match="stream interrupted") as info:
        await client.complete("m", "s", HELLO, [], 10)
    assert fake.url in str(info.value)


async def test_read_timeout_is_unavailable(fake: FakeProvider) -> None:
    fake.script("anthropic", Reply.text("slow", hang_after=2))
    timeout = httpx.Timeout(connect=10.0, read=0.3, write=5.0, pool=5.0)
    async with AnthropicClient(fake.url, "k", timeout=timeout) as client:
        with pytest.raises(Unavailable, match=r"no data from the provider for 0.3 s"):
            await client.complete("m", "s", HELLO, [], 10)


async def test_connection_refused_is_unavailable() -> None:
    async with FakeProvider() as gone:
        url = gone.url
    async with AnthropicClient(url, "k") as client:
        with pytest.raises(Unavailable, match="could not connect"):
            await client.complete("m", "s", HELLO, [], 10)


async def test_malformed_tool_json_is_bad_response(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    # A tool whose input is a JSON list, not an object.
    fake.script("anthropic", Reply.tools(ToolUse("t", "bash", ["not", "an", "object"])))  # type: ignore[arg-type]
    with pytest.raises(BadResponse, match="not a JSON object"):
        await client.complete("m", "s", HELLO, [], 10)


async def test_shared_http_client_is_not_closed(fake: FakeProvider) -> None:
    fake.script("anthropic", Reply.text("one"), Reply.text("two"))
    async with httpx.AsyncClient() as http:
        async with AnthropicClient(fake.url + "/", "k", http=http) as client:
            assert (await client.complete("m", "s", HELLO, [], 10)).text == "one"
        assert not http.is_closed
        again = AnthropicClient(fake.url, "k", http=http)
        assert (await again.complete("m", "s", HELLO, [], 10)).text == "two"


async def test_stream_ending_before_message_stop_is_unavailable(
    fake: FakeProvider, client: AnthropicClient
) -> None:
    fake.script("anthropic", Reply.text("an answer", end_after=5))
    with pytest.raises(Unavailable, match="ended before message_stop"):
        await client.complete("m", "s", HELLO, [], 10)
