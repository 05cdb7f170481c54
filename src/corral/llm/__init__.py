"""The provider layer of corral's built-in LLM harness: one streamed completion per call.

    client = client_for(model_config, api_key)
    completion = await client.complete(model, system, messages, tools, max_tokens)

See :mod:`corral.llm.types` for the neutral message shapes, :mod:`corral.llm.errors` for
the errors, :mod:`corral.llm.anthropic` and :mod:`corral.llm.openai` for the wire mappings.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from corral.credentials import KEYLESS_AUTH, model_key_type
from corral.llm.anthropic import ANTHROPIC_URL, AnthropicClient
from corral.llm.errors import (
    AuthFailed,
    BadRequest,
    BadResponse,
    Overloaded,
    ProviderError,
    RateLimited,
    Unavailable,
)
from corral.llm.openai import OPENAI_URL, OpenAIClient
from corral.llm.types import (
    Block,
    Completion,
    LLMClient,
    Message,
    RedactedThinking,
    Text,
    Thinking,
    ToolResult,
    ToolSpec,
    ToolUse,
    Usage,
)
from corral.project import ModelConfig

__all__ = [
    "DEFAULT_BASE_URLS",
    "AnthropicClient",
    "AuthFailed",
    "BadRequest",
    "BadResponse",
    "Block",
    "Completion",
    "LLMClient",
    "Message",
    "OpenAIClient",
    "Overloaded",
    "ProviderError",
    "RateLimited",
    "RedactedThinking",
    "Text",
    "Thinking",
    "ToolResult",
    "ToolSpec",
    "ToolUse",
    "Unavailable",
    "Usage",
    "client_for",
]

#: Where each provider is reached when the model config sets no ``baseUrl``.
DEFAULT_BASE_URLS: dict[str, str] = {
    "anthropic": ANTHROPIC_URL,
    "openai": OPENAI_URL,
    "openrouter": "https://openrouter.ai/api/v1",
    "groq": "https://api.groq.com/openai/v1",
    "xai": "https://api.x.ai/v1",
    "mistral": "https://api.mistral.ai/v1",
}

# Providers whose chat API does not take ``reasoning_effort``.
_NO_REASONING_EFFORT = {"mistral"}


def client_for(
    config: ModelConfig, api_key: str, http: httpx.AsyncClient | None = None
) -> LLMClient:
    """The client for ``config``'s provider, at its ``base_url`` or the provider's default.

    Raises :class:`ProviderError` for ``google`` (not supported yet) and for ``custom``
    without a ``baseUrl``.
    """
    provider = config.provider
    if provider == "google":
        raise ProviderError(
            "the google provider is not supported by the built-in harness yet; use Gemini's "
            'OpenAI-compatible endpoint instead: provider = "custom", baseUrl = '
            '"https://generativelanguage.googleapis.com/v1beta/openai"',
            provider=provider,
            model=config.model,
        )
    base_url = config.base_url or DEFAULT_BASE_URLS.get(provider)
    if base_url is None:
        raise ProviderError(
            f"provider {provider!r} needs a baseUrl in the model config (the URL of an "
            'OpenAI-compatible API, e.g. "http://localhost:11434/v1" for Ollama)',
            provider=provider,
            model=config.model,
        )
    client: LLMClient
    if provider == "anthropic":
        client = AnthropicClient(base_url, api_key, http=http, auth_type=config.auth_type)
    else:
        client = OpenAIClient(
            base_url,
            api_key,
            http=http,
            provider=provider,
            max_tokens_field="max_completion_tokens" if provider == "openai" else "max_tokens",
            reasoning=provider not in _NO_REASONING_EFFORT,
        )
    if not api_key and config.auth_type not in KEYLESS_AUTH:
        return _Keyless(client, model_key_type(provider))
    return client


class _Keyless:
    """A client given no key (none is stored; a local server may need none): when the
    provider refuses the request for want of one, the error says which credential to add."""

    def __init__(self, client: LLMClient, key_type: str) -> None:
        self._client = client
        self._key_type = key_type

    async def complete(
        self,
        model: str,
        system: str,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        max_tokens: int,
        thinking_level: str | None = None,
    ) -> Completion:
        try:
            return await self._client.complete(
                model, system, messages, tools, max_tokens, thinking_level
            )
        except AuthFailed as exc:
            exc.args = (
                f"{exc} (no API key was sent: no {self._key_type} credential is stored; add "
                f"it with `corral creds add {self._key_type}`)",
            )
            raise

    async def aclose(self) -> None:
        await self._client.aclose()
