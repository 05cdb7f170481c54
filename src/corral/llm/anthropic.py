"""The Anthropic Messages API, streamed.

``thinking_level`` maps to extended thinking, ``thinking: {"type": "enabled",
"budget_tokens": N}``:

    ======= ======
    level   N
    ======= ======
    off     (no thinking)
    minimal 1024
    low     2048
    medium  8192
    high    16384
    xhigh   32768
    ======= ======

``max_tokens`` bounds the visible answer: with thinking on, the request's ``max_tokens`` is
``max_tokens + N`` (Anthropic requires it to exceed the budget). Thinking arrives as
:class:`Thinking` / :class:`RedactedThinking` blocks, never as text; send them back
unchanged in the assistant turn of the next request (Anthropic requires that with tools).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from corral.llm._transport import DEFAULT_TIMEOUT, Event, Where, post_events
from corral.llm.errors import BadResponse, Unavailable, error_for_event
from corral.llm.types import (
    Block,
    Completion,
    Message,
    RedactedThinking,
    StopReason,
    Text,
    Thinking,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)

__all__ = ["ANTHROPIC_URL", "THINKING_BUDGETS", "AnthropicClient"]

ANTHROPIC_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
OAUTH_BETA = "oauth-2025-04-20"

THINKING_BUDGETS: dict[str, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 32768,
}

_STOP: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "stop_sequence": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
}


def _block(block: Block) -> dict[str, Any]:
    if isinstance(block, Text):
        return {"type": "text", "text": block.text}
    if isinstance(block, ToolUse):
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    if isinstance(block, ToolResult):
        out: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": block.tool_use_id,
            "content": block.content,
        }
        if block.is_error:
            out["is_error"] = True
        return out
    if isinstance(block, Thinking):
        return {"type": "thinking", "thinking": block.text, "signature": block.signature}
    return {"type": "redacted_thinking", "data": block.data}


def request_body(
    model: str,
    system: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec],
    max_tokens: int,
    thinking_level: str | None,
) -> dict[str, Any]:
    """The JSON body of a streamed Messages API request."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": m.role, "content": [_block(b) for b in m.content]} for m in messages],
        "stream": True,
    }
    if system:
        body["system"] = system
    if tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.input_schema}
            for t in tools
        ]
    budget = THINKING_BUDGETS.get(thinking_level or "off")
    if budget is not None:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        body["max_tokens"] = max_tokens + budget
    return body


@dataclass
class _Partial:
    kind: str
    parts: list[str] = field(default_factory=list)
    id: str = ""
    name: str = ""
    signature: str = ""


@dataclass
class _Assembly:
    """The state of one streamed message, fed event by event."""

    where: Where
    model: str
    blocks: dict[int, _Partial] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: StopReason = "other"
    done: bool = False

    def feed(self, event: Event) -> None:
        data = event.json(self.where)
        kind = event.name or str(data.get("type", ""))
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:  # unknown events (and ping) are ignored, as documented
            handler(data)

    def _on_message_start(self, data: dict[str, Any]) -> None:
        message = data.get("message") or {}
        self.model = message.get("model") or self.model
        self._add_usage(message.get("usage") or {})

    def _on_content_block_start(self, data: dict[str, Any]) -> None:
        block = data.get("content_block") or {}
        partial = _Partial(str(block.get("type", "")))
        partial.id = str(block.get("id", ""))
        partial.name = str(block.get("name", ""))
        if partial.kind == "text" and block.get("text"):
            partial.parts.append(block["text"])
        if partial.kind == "thinking" and block.get("thinking"):
            partial.parts.append(block["thinking"])
        if partial.kind == "redacted_thinking":
            partial.parts.append(str(block.get("data", "")))
        self.blocks[int(data.get("index", len(self.blocks)))] = partial

    def _on_content_block_delta(self, data: dict[str, Any]) -> None:
        partial = self.blocks.get(int(data.get("index", -1)))
        if partial is None:
            raise BadResponse(f"delta for a block never started: {data}", **self.where.kw())
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "signature_delta":
            partial.signature += str(delta.get("signature", ""))
            return
        key = {"text_delta": "text", "input_json_delta": "partial_json"}.get(kind or "")
        key = key or ("thinking" if kind == "thinking_delta" else "")
        if key:
            partial.parts.append(str(delta.get(key, "")))

    def _on_message_delta(self, data: dict[str, Any]) -> None:
        reason = (data.get("delta") or {}).get("stop_reason")
        if reason:
            self.stop_reason = _STOP.get(reason, "other")
        self._add_usage(data.get("usage") or {})

    def _on_message_stop(self, data: dict[str, Any]) -> None:
        self.done = True

    def _on_error(self, data: dict[str, Any]) -> None:
        error = data.get("error") or {}
        raise error_for_event(
            str(error.get("type", "")), str(error.get("message", data)), **self.where.kw()
        )

    def _add_usage(self, usage: dict[str, Any]) -> None:
        for key, value in usage.items():
            if isinstance(value, int):
                self.usage[key] = value  # later events carry cumulative counts

    def _finish(self, partial: _Partial) -> Block | None:
        text = "".join(partial.parts)
        if partial.kind == "text":
            return Text(text)
        if partial.kind == "thinking":
            return Thinking(text, partial.signature)
        if partial.kind == "redacted_thinking":
            return RedactedThinking(text)
        if partial.kind in ("tool_use", "server_tool_use"):
            return ToolUse(partial.id, partial.name, self._tool_input(partial.name, text))
        return None

    def _tool_input(self, name: str, text: str) -> dict[str, Any]:
        try:
            value = json.loads(text) if text.strip() else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise BadResponse(
                f"tool {name!r} input is not a JSON object: {text[:200]!r}", **self.where.kw()
            )
        return value

    def completion(self) -> Completion:
        if not self.done:
            raise Unavailable("stream interrupted: it ended before message_stop", **self.where.kw())
        blocks = [self._finish(self.blocks[i]) for i in sorted(self.blocks)]
        usage = Usage(
            input_tokens=self.usage.get("input_tokens", 0),
            output_tokens=self.usage.get("output_tokens", 0),
            cache_read_tokens=self.usage.get("cache_read_input_tokens", 0),
            cache_write_tokens=self.usage.get("cache_creation_input_tokens", 0),
        )
        content = [b for b in blocks if b is not None]
        return Completion(content, self.stop_reason, usage, self.model)


class AnthropicClient:
    """Streams Messages API requests to ``base_url`` (``/v1/messages`` is appended).

    ``auth_type="oauth_token"`` sends the key as a bearer token (with the OAuth beta
    header) instead of ``x-api-key``. Without ``http`` the client owns an
    :class:`httpx.AsyncClient`; close it with :meth:`aclose` (or ``async with``).
    """

    provider = "anthropic"

    def __init__(
        self,
        base_url: str = ANTHROPIC_URL,
        api_key: str = "",
        *,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        auth_type: str = "api_key",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/v1/messages"
        self._api_key = api_key
        self._auth_type = auth_type
        self._own = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout

    def _headers(self) -> dict[str, str]:
        headers = {
            "anthropic-version": API_VERSION,
            "content-type": "application/json",
            "accept": "text/event-stream",
        }
        if not self._api_key:
            return headers  # none stored (a local server may need none): no empty header
        if self._auth_type == "oauth_token":
            headers["authorization"] = f"Bearer {self._api_key}"
            headers["anthropic-beta"] = OAUTH_BETA
        else:
            headers["x-api-key"] = self._api_key
        return headers

    async def complete(
        self,
        model: str,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None = None,
    ) -> Completion:
        """One assistant turn for ``messages``; raises a :class:`ProviderError` on failure."""
        where = Where(self.provider, model, self.url)
        body = request_body(model, system, messages, tools, max_tokens, thinking_level)
        assembly = _Assembly(where, model)
        events = post_events(self._http, where, self._headers(), body, self._timeout)
        async with aclosing(events) as stream:
            async for event in stream:
                assembly.feed(event)
                if assembly.done:
                    break
        return assembly.completion()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> AnthropicClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
