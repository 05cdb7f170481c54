"""OpenAIClient against the fake provider over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from corral.llm import (
    AuthFailed,
    BadRequest,
    Message,
    OpenAIClient,
    Overloaded,
    RateLimited,
    Text,
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
async def client(fake: FakeProvider) -> AsyncIterator[OpenAIClient]:
    async with OpenAIClient(fake.openai_url, "sk-test") as c:
        yield c


async def test_text_completion_with_usage_and_request_shape(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    usage = Usage(input_tokens=20, output_tokens=9, cache_read_tokens=64)
    fake.script("openai", Reply.text("Hello there, friend!", usage=usage, model="gpt-x-2025"))

    out = await client.complete("gpt-x", "You are terse.", HELLO, [BASH], max_tokens=512)

    assert out.content == [Text("Hello there, friend!")]
    assert out.stop_reason == "end_turn"
    assert out.usage == usage  # prompt_tokens 84 includes the 64 cached ones
    assert out.usage.total_input_tokens == 84
    assert out.model == "gpt-x-2025"
    [req] = fake.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["authorization"] == "Bearer sk-test"
    assert req.body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello"},
        ],
        "max_tokens": 512,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "bash",
                    "description": "Run a shell command",
                    "parameters": BASH.input_schema,
                },
            }
        ],
    }


async def test_no_key_no_system_no_tools(fake: FakeProvider) -> None:
    fake.script("openai", Reply.text("ok"))
    async with OpenAIClient(fake.openai_url, "") as client:
        await client.complete("llama3", "", HELLO, [], max_tokens=10)
    req = fake.requests[0]
    assert "authorization" not in req.headers
    assert req.body["messages"] == [{"role": "user", "content": "hello"}]
    assert "tools" not in req.body and "reasoning_effort" not in req.body


async def test_multi_tool_calls_assembled_from_fragments(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    bash = ToolUse("call_1", "bash", {"cmd": "ls -la /tmp && echo 'done'", "timeout": 30})
    read = ToolUse("call_2", "read", {"path": "src/main.py", "lines": [1, 2, 3]})
    fake.script("openai", Reply.tools(bash, read, text="Let me look.", fragment=3))

    out = await client.complete("m", "sys", HELLO, [BASH, READ], max_tokens=100)

    assert out.content == [Text("Let me look."), bash, read]
    assert out.stop_reason == "tool_use"


async def test_stop_with_tool_calls_is_tool_use(fake: FakeProvider, client: OpenAIClient) -> None:
    # Some servers (older Ollama) say "stop" even when the turn has tool calls.
    fake.script("openai", Reply.tools(ToolUse("c", "bash", {}), stop_reason="end_turn"))
    out = await client.complete("m", "s", HELLO, [BASH], 10)
    assert out.stop_reason == "tool_use"
    assert out.tool_uses == [ToolUse("c", "bash", {})]


@pytest.mark.parametrize(("stop", "expected"), [("max_tokens", "max_tokens"), ("other", "other")])
async def test_finish_reasons(
    fake: FakeProvider, client: OpenAIClient, stop: str, expected: str
) -> None:
    fake.script("openai", Reply.text("cut", stop_reason=stop))  # type: ignore[arg-type]
    assert (await client.complete("m", "s", HELLO, [], 10)).stop_reason == expected


async def test_second_turn_carries_tool_calls_and_tool_messages(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    a = ToolUse("call_a", "bash", {"cmd": "false"})
    b = ToolUse("call_b", "read", {"path": "x"})
    fake.script("openai", Reply.tools(a, b, text="Checking."), Reply.text("It failed."))

    first = await client.complete("m", "sys", HELLO, [BASH, READ], max_tokens=100)
    history = [
        *HELLO,
        Message("assistant", first.content),
        Message(
            "user",
            [ToolResult("call_a", "exit 1", is_error=True), ToolResult("call_b", "x"), Text("?")],
        ),
    ]
    second = await client.complete("m", "sys", history, [BASH, READ], max_tokens=100)

    assert second.text == "It failed."
    assert fake.requests[1].body["messages"][2:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"cmd": "false"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "read", "arguments": '{"path": "x"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "Error: exit 1"},
        {"role": "tool", "tool_call_id": "call_b", "content": "x"},
        {"role": "user", "content": "?"},
    ]


async def test_assistant_without_text_sends_null_content(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    fake.script("openai", Reply.text("ok"))
    history = [
        *HELLO,
        Message("assistant", [ToolUse("c", "bash", {})]),
        Message("user", [ToolResult("c", "")]),
    ]
    await client.complete("m", "s", history, [BASH], 10)
    assert fake.requests[0].body["messages"][2]["content"] is None


@pytest.mark.parametrize(
    ("level", "effort"),
    [
        ("minimal", "minimal"),
        ("low", "low"),
        ("medium", "medium"),
        ("high", "high"),
        ("xhigh", "high"),
        ("off", None),
        (None, None),
    ],
)
async def test_reasoning_effort(
    fake: FakeProvider, client: OpenAIClient, level: str | None, effort: str | None
) -> None:
    fake.script("openai", Reply.text("ok"))
    await client.complete("m", "s", HELLO, [], 10, thinking_level=level)
    assert fake.requests[0].body.get("reasoning_effort") == effort


async def test_reasoning_disabled_and_max_tokens_field(fake: FakeProvider) -> None:
    fake.script("openai", Reply.text("ok"))
    async with OpenAIClient(
        fake.openai_url, "k", reasoning=False, max_tokens_field="max_completion_tokens"
    ) as client:
        await client.complete("m", "s", HELLO, [], 10, thinking_level="high")
    body = fake.requests[0].body
    assert "reasoning_effort" not in body
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body


async def test_reasoning_content_kept_out_of_text(fake: FakeProvider, client: OpenAIClient) -> None:
    fake.script("openai", Reply([FakeThinking("hmm, let me think"), Text("Answer.")]))
    out = await client.complete("m", "s", HELLO, [], 10, thinking_level="high")
    assert out.content == [Text("Answer.")]


def _openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, object]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (Status(401, _openai_error("Incorrect API key provided")), AuthFailed),
        (Status(403, _openai_error("Country not supported")), AuthFailed),
        (Status(400, _openai_error("Unsupported parameter: 'max_tokens'")), BadRequest),
        (Status(404, _openai_error("The model `gpt-9` does not exist")), BadRequest),
        (Status(422, {"detail": "bad input"}), BadRequest),
        (Status(529, _openai_error("Provider overloaded", "overloaded_error")), Overloaded),
        (Status(503, _openai_error("Service unavailable", "server_error")), Overloaded),
        (
            Status(500, _openai_error("The engine is currently overloaded", "server_error")),
            Overloaded,
        ),
        (Status(500, _openai_error("internal", "server_error")), Unavailable),
    ],
)
async def test_status_errors(
    fake: FakeProvider, client: OpenAIClient, status: Status, cls: type[ProviderError]
) -> None:
    fake.script("openai", status)
    with pytest.raises(cls) as info:
        await client.complete("gpt-x", "s", HELLO, [], 10)
    err = info.value
    assert type(err) is cls
    text = str(err)
    assert "openai" in text and "'gpt-x'" in text and f"{fake.openai_url}/chat/completions" in text
    assert f"HTTP {status.status}" in text
    assert err.provider_message and err.provider_message in text


async def test_rate_limited_retry_after_ms(fake: FakeProvider, client: OpenAIClient) -> None:
    body = _openai_error("Rate limit reached for requests", "requests")
    fake.script("openai", Status(429, body, {"retry-after-ms": "1500", "retry-after": "2"}))
    with pytest.raises(RateLimited, match="Rate limit reached") as info:
        await client.complete("m", "s", HELLO, [], 10)
    assert info.value.retry_after == 1.5


async def test_error_chunk_in_stream(fake: FakeProvider, client: OpenAIClient) -> None:
    fake.script("openai", StreamError("overloaded_error", "Upstream overloaded", after=2))
    with pytest.raises(Overloaded, match="Upstream overloaded"):
        await client.complete("m", "s", HELLO, [], 10)


@pytest.mark.parametrize("after", [0, 1, 3])
async def test_dropped_stream_is_unavailable(
    fake: FakeProvider, client: OpenAIClient, after: int
) -> None:
    fake.script("openai", Reply.text("a long answer that never finishes", cut_after=after))
    with pytest.raises(Unavailable, match="stream interrupted"):
        await client.complete("m", "s", HELLO, [], 10)


async def test_unscripted_request_is_a_clear_failure(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    with pytest.raises(Unavailable, match="nothing scripted for openai"):
        await client.complete("m", "s", HELLO, [], 10)


async def test_stream_ending_before_finish_is_unavailable(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    fake.script("openai", Reply.text("an answer", end_after=2))
    with pytest.raises(Unavailable, match="ended before a finish_reason"):
        await client.complete("m", "s", HELLO, [], 10)


async def test_stream_without_done_after_finish_is_accepted(
    fake: FakeProvider, client: OpenAIClient
) -> None:
    fake.script("openai", Reply.text("fine", end_after=-1))  # usage chunk sent, [DONE] not
    out = await client.complete("m", "s", HELLO, [], 10)
    assert out.text == "fine" and out.usage.output_tokens == 5
