"""A scripted fake model provider on loopback, speaking both API shapes over real HTTP.

    async with FakeProvider() as fake:
        fake.script("anthropic", Reply.text("hello"), Status(529, {...}))
        fake.script("openai", Reply.tools(ToolUse("call_1", "bash", {"cmd": "ls"})))
        client = AnthropicClient(fake.url, "key")          # POST {url}/v1/messages
        client = OpenAIClient(fake.openai_url, "key")      # POST {url}/v1/chat/completions
        ...
        fake.requests[0].headers["x-api-key"], fake.requests[0].body["system"]

With ``FakeProvider(require_key=KEY)`` a request that does not carry KEY
(``Authorization: Bearer KEY``, or Anthropic's ``x-api-key: KEY``) is refused with HTTP 401,
as a real provider refuses it, and takes nothing from the script.

Each API has its own queue; every request takes the next scripted response of its API (an
empty queue answers HTTP 500 "nothing scripted"). A :class:`Reply` is rendered as that
API's stream: text and tool input are split into ``fragment``-sized deltas; ``cut_after``
drops the connection after that many events (an incomplete chunked body), ``end_after``
ends the body cleanly after that many events (a stream missing its final events),
``hang_after`` stops sending (for read-timeout tests). :class:`Status` answers a plain HTTP error;
:class:`StreamError` sends a 200 stream that reports an error event. Every request is
recorded in :attr:`FakeProvider.requests` (headers lower-cased, JSON body parsed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.llm.types import StopReason, Text, ToolUse, Usage

__all__ = [
    "Api",
    "FakeProvider",
    "FakeThinking",
    "Recorded",
    "Reply",
    "Response",
    "Status",
    "StreamError",
]

Api = Literal["anthropic", "openai"]
_PATHS: dict[str, Api] = {"/v1/messages": "anthropic", "/v1/chat/completions": "openai"}


@dataclass(frozen=True)
class FakeThinking:
    """A thinking block (Anthropic) / ``reasoning_content`` deltas (OpenAI-compatible)."""

    text: str
    signature: str = "sig-fake"


@dataclass(frozen=True)
class Reply:
    """A successful streamed answer."""

    content: list[Text | ToolUse | FakeThinking]
    stop_reason: StopReason | None = None  # None: tool_use if any ToolUse, else end_turn
    usage: Usage = field(default_factory=lambda: Usage(input_tokens=10, output_tokens=5))
    model: str | None = None  # None: echo the requested model
    fragment: int = 5
    cut_after: int | None = None
    hang_after: int | None = None
    end_after: int | None = None

    @classmethod
    def text(cls, text: str, **kw: Any) -> Reply:
        return cls([Text(text)], **kw)

    @classmethod
    def tools(cls, *uses: ToolUse, text: str = "", **kw: Any) -> Reply:
        head: list[Text | ToolUse | FakeThinking] = [Text(text)] if text else []
        return cls([*head, *uses], **kw)

    @property
    def stop(self) -> StopReason:
        if self.stop_reason is not None:
            return self.stop_reason
        return "tool_use" if any(isinstance(b, ToolUse) for b in self.content) else "end_turn"


@dataclass(frozen=True)
class Status:
    """A non-streamed HTTP answer: ``body`` is JSON (dict) or text (str)."""

    status: int
    body: dict[str, Any] | str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamError:
    """HTTP 200, then ``after`` ordinary events, then the API's in-stream error report."""

    type: str
    message: str
    after: int = 1


Response = Reply | Status | StreamError


@dataclass(frozen=True)
class Recorded:
    api: Api | None
    method: str
    path: str
    headers: dict[str, str]
    body: Any


def _chunks(text: str, size: int) -> Iterator[str]:
    for i in range(0, len(text), max(1, size)):
        yield text[i : i + max(1, size)]


def _anthropic_block(i: int, block: Text | ToolUse | FakeThinking, size: int) -> Iterator[Any]:
    def delta(d: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return "content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}

    if isinstance(block, Text):
        start: dict[str, Any] = {"type": "text", "text": ""}
        parts = [delta({"type": "text_delta", "text": c}) for c in _chunks(block.text, size)]
    elif isinstance(block, ToolUse):
        start = {"type": "tool_use", "id": block.id, "name": block.name, "input": {}}
        raw = json.dumps(block.input)
        parts = [delta({"type": "input_json_delta", "partial_json": ""})]
        parts += [
            delta({"type": "input_json_delta", "partial_json": c}) for c in _chunks(raw, size)
        ]
    else:
        start = {"type": "thinking", "thinking": ""}
        parts = [
            delta({"type": "thinking_delta", "thinking": c}) for c in _chunks(block.text, size)
        ]
        parts.append(delta({"type": "signature_delta", "signature": block.signature}))
    yield "content_block_start", {"type": "content_block_start", "index": i, "content_block": start}
    yield from parts
    yield "content_block_stop", {"type": "content_block_stop", "index": i}


def anthropic_events(reply: Reply, model: str) -> list[tuple[str, dict[str, Any]]]:
    u = reply.usage
    start_usage = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": 1,
    }
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "usage": start_usage,
    }
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        ("ping", {"type": "ping"}),
    ]
    for i, block in enumerate(reply.content):
        events += _anthropic_block(i, block, reply.fragment)
    delta = {"stop_reason": reply.stop, "stop_sequence": None}
    events.append(
        (
            "message_delta",
            {"type": "message_delta", "delta": delta, "usage": {"output_tokens": u.output_tokens}},
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return events


_FINISH = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "other": "content_filter",
}


def openai_events(reply: Reply, model: str) -> list[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [choice],
        }

    out = [chunk({"role": "assistant", "content": ""})]
    calls = 0
    for block in reply.content:
        if isinstance(block, Text):
            out += [chunk({"content": c}) for c in _chunks(block.text, reply.fragment)]
        elif isinstance(block, FakeThinking):
            out += [chunk({"reasoning_content": c}) for c in _chunks(block.text, reply.fragment)]
        else:
            head = {
                "index": calls,
                "id": block.id,
                "type": "function",
                "function": {"name": block.name, "arguments": ""},
            }
            out.append(chunk({"tool_calls": [head]}))
            for c in _chunks(json.dumps(block.input), reply.fragment):
                out.append(chunk({"tool_calls": [{"index": calls, "function": {"arguments": c}}]}))
            calls += 1
    out.append(chunk({}, _FINISH[reply.stop]))
    u = reply.usage
    usage = {
        "prompt_tokens": u.input_tokens + u.cache_read_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.cache_read_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cache_read_tokens},
    }
    out.append(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": usage,
        }
    )
    return out


def _sse(api: Api, reply: Reply, model: str) -> list[bytes]:
    if api == "anthropic":
        return [
            f"event: {n}\ndata: {json.dumps(d)}\n\n".encode()
            for n, d in anthropic_events(reply, model)
        ]
    lines = [f"data: {json.dumps(d)}\n\n".encode() for d in openai_events(reply, model)]
    return [*lines, b"data: [DONE]\n\n"]


def _stream_error(api: Api, err: StreamError, model: str) -> list[bytes]:
    events = _sse(api, Reply([Text("partial answer")]), model)[: err.after]
    if api == "anthropic":
        body = {"type": "error", "error": {"type": err.type, "message": err.message}}
        return [*events, f"event: error\ndata: {json.dumps(body)}\n\n".encode()]
    body = {"error": {"type": err.type, "message": err.message, "code": err.type}}
    return [*events, f"data: {json.dumps(body)}\n\n".encode()]


class FakeProvider:
    """The scripted server; see the module docstring."""

    def __init__(self, require_key: str | None = None) -> None:
        self.require_key = require_key
        self.requests: list[Recorded] = []
        self._queues: dict[Api, deque[Response]] = {"anthropic": deque(), "openai": deque()}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = asyncio.Event()
        self.url = ""

    @property
    def openai_url(self) -> str:
        """The base URL for an OpenAI-shaped client (``{url}/v1``)."""
        return f"{self.url}/v1"

    def script(self, api: Api, *responses: Response) -> None:
        """Queue ``responses`` for the next requests of ``api``."""
        self._queues[api].extend(responses)

    def pending(self, api: Api) -> int:
        """How many scripted responses of ``api`` were not requested yet."""
        return len(self._queues[api])

    async def __aenter__(self) -> FakeProvider:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        api = _PATHS.get(path.split("?")[0])
        self.requests.append(Recorded(api, method, path, headers, body))
        if api is None or method != "POST":
            await self._status(
                writer, Status(404, {"error": {"message": f"no route {method} {path}"}})
            )
            return
        if not self._authorized(api, headers):
            error = {"type": "authentication_error", "message": "invalid or missing API key"}
            await self._status(writer, Status(401, {"type": "error", "error": error}))
            return
        refused = self.admit(api, body)
        if refused is not None:
            await self._status(writer, refused)
            return
        if not self._queues[api] and (answer := self.answer(api, body)) is not None:
            model = str(body.get("model", "")) if isinstance(body, dict) else ""
            await self._respond(writer, api, answer, model)
            return
        if not self._queues[api]:
            msg = f"fake provider: nothing scripted for {api}"
            await self._status(
                writer, Status(500, {"error": {"type": "api_error", "message": msg}})
            )
            return
        response = self._queues[api].popleft()
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        await self._respond(writer, api, response, model)

    def admit(self, api: Api, body: Any) -> Status | None:
        """A refusal of an authorised request before the script is read (None: go on);
        subclasses limit rates here."""
        return None

    def answer(self, api: Api, body: Any) -> Response | None:
        """The response when nothing is scripted (None: HTTP 500 "nothing scripted")."""
        return None

    def _authorized(self, api: Api, headers: dict[str, str]) -> bool:
        if self.require_key is None:
            return True
        if headers.get("authorization") == f"Bearer {self.require_key}":
            return True
        return api == "anthropic" and headers.get("x-api-key") == self.require_key

    async def _respond(
        self, writer: asyncio.StreamWriter, api: Api, response: Response, model: str
    ) -> None:
        if isinstance(response, Status):
            await self._status(writer, response)
        elif isinstance(response, StreamError):
            await self._stream(writer, _stream_error(api, response, model), None, None)
        else:
            events = _sse(api, response, response.model or model)[: response.end_after]
            await self._stream(writer, events, response.cut_after, response.hang_after)

    async def _status(self, writer: asyncio.StreamWriter, status: Status) -> None:
        is_json = isinstance(status.body, dict)
        data = (json.dumps(status.body) if is_json else str(status.body)).encode()
        headers = {
            "content-type": "application/json" if is_json else "text/plain",
            "content-length": str(len(data)),
            "connection": "close",
            **status.headers,
        }
        writer.write(_head(status.status, headers) + data)
        await writer.drain()

    async def _stream(
        self, writer: asyncio.StreamWriter, events: list[bytes], cut: int | None, hang: int | None
    ) -> None:
        headers = {
            "content-type": "text/event-stream",
            "transfer-encoding": "chunked",
            "cache-control": "no-cache",
            "connection": "close",
        }
        writer.write(_head(200, headers))
        for n, event in enumerate(events):
            if n == cut:
                await writer.drain()
                return  # the connection closes with the chunked body incomplete
            if n == hang:
                await writer.drain()
                await self._closing.wait()
                return
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()
