"""The OpenAI Chat Completions API, streamed; also OpenRouter, Groq, xAI, Mistral, vLLM,
Ollama and any other OpenAI-compatible server (set ``base_url``).

Mapping from the neutral types:

* the system prompt is the first message, ``{"role": "system"}``;
* tools are ``{"type": "function", "function": {name, description, parameters}}``;
* an assistant :class:`ToolUse` becomes an entry of the message's ``tool_calls``
  (arguments as a JSON string); thinking blocks are dropped;
* each :class:`ToolResult` becomes a ``{"role": "tool", "tool_call_id"}`` message, placed
  before any text of the same user turn; an error result's content is prefixed ``Error: ``
  (the API has no error flag).

``thinking_level`` maps to ``reasoning_effort`` (when the client is built with
``reasoning=True``): minimal, low, medium and high as themselves, xhigh as ``high``, off (or
none) omits it.

Stop reasons: ``stop`` is end_turn, ``tool_calls`` is tool_use (so is ``stop`` when the turn
has tool calls, as some servers say), ``length`` is max_tokens, anything else other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import httpx

from corral.llm._transport import DEFAULT_TIMEOUT, Where, post_events
from corral.llm.errors import BadResponse, Unavailable, error_for_event
from corral.llm.types import (
    Completion,
    Message,
    StopReason,
    Text,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)

__all__ = ["OPENAI_URL", "REASONING_EFFORT", "OpenAIClient"]

OPENAI_URL = "https://api.openai.com/v1"

REASONING_EFFORT: dict[str, str] = {
    "minimal": "minimal",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
}

_STOP: dict[str, StopReason] = {
    "stop": "end_turn",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
}


def _user(message: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    texts: list[str] = []
    for block in message.content:
        if isinstance(block, ToolResult):
            content = f"Error: {block.content}" if block.is_error else block.content
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content})
        elif isinstance(block, Text):
            texts.append(block.text)
    if texts:
        out.append({"role": "user", "content": "\n\n".join(texts)})
    return out


def _assistant(message: Message) -> dict[str, Any]:
    text = "".join(b.text for b in message.content if isinstance(b, Text))
    out: dict[str, Any] = {"role": "assistant", "content": text or None}
    calls = [
        {
            "id": b.id,
            "type": "function",
            "function": {"name": b.name, "arguments": json.dumps(b.input)},
        }
        for b in message.content
        if isinstance(b, ToolUse)
    ]
    if calls:
        out["tool_calls"] = calls
    return out


def messages_json(system: str, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The ``messages`` array for ``system`` and the conversation."""
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for message in messages:
        if message.role == "assistant":
            out.append(_assistant(message))
        else:
            out.extend(_user(message))
    return out


@dataclass
class _Call:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Assembly:
    where: Where
    model: str
    text: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)
    finish: str | None = None
    usage: Usage = field(default_factory=Usage)
    done: bool = False

    def feed(self, data: dict[str, Any]) -> None:
        if isinstance(error := data.get("error"), dict):
            kind = str(error.get("type") or error.get("code") or "")
            raise error_for_event(kind, str(error.get("message", error)), **self.where.kw())
        self.model = data.get("model") or self.model
        usage = data.get("usage") or (data.get("x_groq") or {}).get("usage")
        if usage:
            self._usage(usage)
        for choice in data.get("choices") or []:
            if choice.get("index", 0) == 0:
                self._choice(choice)

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if content := delta.get("content"):
            self.text.append(content)
        for i, fragment in enumerate(delta.get("tool_calls") or []):
            call = self.calls.setdefault(int(fragment.get("index", i)), _Call())
            call.id = call.id or str(fragment.get("id") or "")
            function = fragment.get("function") or {}
            call.name += function.get("name") or ""
            call.arguments.append(function.get("arguments") or "")
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def _usage(self, usage: dict[str, Any]) -> None:
        prompt = int(usage.get("prompt_tokens") or 0)
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        self.usage = Usage(
            input_tokens=prompt - cached,
            output_tokens=int(usage.get("completion_tokens") or 0),
            cache_read_tokens=cached,
        )

    def _tool_use(self, index: int, call: _Call) -> ToolUse:
        text = "".join(call.arguments)
        try:
            value = json.loads(text) if text.strip() else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise BadResponse(
                f"tool {call.name!r} arguments are not a JSON object: {text[:200]!r}",
                **self.where.kw(),
            )
        return ToolUse(call.id or f"call_{index}", call.name, value)

    def completion(self) -> Completion:
        if not self.done and self.finish is None:
            raise Unavailable(
                "stream interrupted: it ended before a finish_reason or [DONE]",
                **self.where.kw(),
            )
        content: list[Any] = [Text("".join(self.text))] if self.text else []
        content += [self._tool_use(i, self.calls[i]) for i in sorted(self.calls)]
        stop = _STOP.get(self.finish or "", "other")
        if self.calls and stop == "end_turn":
            stop = "tool_use"
        return Completion(content, stop, self.usage, self.model)


class OpenAIClient:
    """Streams Chat Completions requests to ``base_url`` (``/chat/completions`` appended).

    ``provider`` only labels errors. ``max_tokens_field`` names the length limit
    (``max_completion_tokens`` for OpenAI itself, ``max_tokens`` elsewhere);
    ``reasoning`` says whether ``reasoning_effort`` may be sent. An empty ``api_key``
    sends no Authorization header (local servers).
    """

    def __init__(
        self,
        base_url: str = OPENAI_URL,
        api_key: str = "",
        *,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        provider: str = "openai",
        max_tokens_field: str = "max_tokens",
        reasoning: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.provider = provider
        self.max_tokens_field = max_tokens_field
        self.reasoning = reasoning
        self._api_key = api_key
        self._own = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._timeout = timeout

    def request_body(
        self,
        model: str,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": messages_json(system, messages),
            self.max_tokens_field: max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.input_schema,
                    },
                }
                for t in tools
            ]
        effort = REASONING_EFFORT.get(thinking_level or "off")
        if effort and self.reasoning:
            body["reasoning_effort"] = effort
        return body

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
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        body = self.request_body(model, system, messages, tools, max_tokens, thinking_level)
        assembly = _Assembly(where, model)
        events = post_events(self._http, where, headers, body, self._timeout)
        async with aclosing(events) as stream:
            async for event in stream:
                if event.data.strip() == "[DONE]":
                    assembly.done = True
                    break
                assembly.feed(event.json(where))
        return assembly.completion()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> OpenAIClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
