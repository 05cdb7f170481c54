"""Provider-neutral conversations and results of the built-in LLM harness.

A conversation is a list of :class:`Message`; each carries blocks. A user message holds
:class:`Text` and :class:`ToolResult` blocks; an assistant message holds :class:`Text`,
:class:`ToolUse` and (Anthropic extended thinking) :class:`Thinking` /
:class:`RedactedThinking` blocks. Thinking blocks are never part of
:attr:`Completion.text`; they are kept in :attr:`Completion.content` only so that a tool
loop can send the assistant turn back unchanged, which Anthropic requires when thinking is
on. Clients for APIs without thinking blocks drop them from the history they send.

Token accounting (:class:`Usage`) is the same for every provider: ``input_tokens`` counts
prompt tokens billed at the normal input price, i.e. *excluding* tokens read from or
written to the prompt cache, which are counted in ``cache_read_tokens`` and
``cache_write_tokens``. (OpenAI reports cached tokens inside ``prompt_tokens``; the OpenAI
client subtracts them.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "Block",
    "Completion",
    "LLMClient",
    "Message",
    "RedactedThinking",
    "Role",
    "StopReason",
    "Text",
    "Thinking",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "Usage",
]

Role = Literal["user", "assistant"]
StopReason = Literal["end_turn", "tool_use", "max_tokens", "other"]


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ToolUse:
    """The model asks for tool ``name`` to run with ``input``; ``id`` pairs it with its result."""

    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class ToolResult:
    """The outcome of the tool call ``tool_use_id``, sent back in the next user message."""

    tool_use_id: str
    content: str
    is_error: bool = False


@dataclass(frozen=True)
class Thinking:
    """Anthropic extended thinking: the reasoning text and its signature."""

    text: str
    signature: str = ""


@dataclass(frozen=True)
class RedactedThinking:
    """Anthropic thinking the provider encrypted; ``data`` is sent back as is."""

    data: str


Block = Text | ToolUse | ToolResult | Thinking | RedactedThinking


@dataclass(frozen=True)
class Message:
    role: Role
    content: list[Block]


@dataclass(frozen=True)
class ToolSpec:
    """A tool offered to the model; ``input_schema`` is a JSON Schema object."""

    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_input_tokens(self) -> int:
        """Every prompt token, cached or not."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


@dataclass(frozen=True)
class Completion:
    """One assistant turn: its blocks, why it stopped, what it cost and which model answered."""

    content: list[Block]
    stop_reason: StopReason
    usage: Usage = field(default_factory=Usage)
    model: str = ""

    @property
    def text(self) -> str:
        """The concatenated :class:`Text` blocks (thinking excluded)."""
        return "".join(b.text for b in self.content if isinstance(b, Text))

    @property
    def tool_uses(self) -> list[ToolUse]:
        return [b for b in self.content if isinstance(b, ToolUse)]


class LLMClient(Protocol):
    """What every provider client offers."""

    async def complete(
        self,
        model: str,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None = None,
    ) -> Completion: ...

    async def aclose(self) -> None: ...
