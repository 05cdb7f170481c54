"""client_for: which client, which base URL, which errors."""

from __future__ import annotations

import contextlib

import pytest

from corral.llm import (
    AnthropicClient,
    AuthFailed,
    Message,
    OpenAIClient,
    ProviderError,
    Text,
    client_for,
)
from corral.project import ModelConfig
from tests.llm.fakeprovider import Api, FakeProvider, Reply


@pytest.mark.parametrize(
    ("provider", "url"),
    [
        ("openai", "https://api.openai.com/v1"),
        ("openrouter", "https://openrouter.ai/api/v1"),
        ("groq", "https://api.groq.com/openai/v1"),
        ("xai", "https://api.x.ai/v1"),
        ("mistral", "https://api.mistral.ai/v1"),
    ],
)
async def test_openai_shaped_providers(provider: str, url: str) -> None:
    client = client_for(ModelConfig(provider=provider, model="m"), "k")  # type: ignore[arg-type]
    assert isinstance(client, OpenAIClient)
    assert client.base_url == url
    assert client.url == f"{url}/chat/completions"
    assert client.provider == provider
    assert client.reasoning is (provider != "mistral")
    expected = "max_completion_tokens" if provider == "openai" else "max_tokens"
    assert client.max_tokens_field == expected
    await client.aclose()


async def test_anthropic_default_and_override() -> None:
    client = client_for(ModelConfig(provider="anthropic", model="claude"), "k")
    assert isinstance(client, AnthropicClient)
    assert client.url == "https://api.anthropic.com/v1/messages"
    await client.aclose()
    config = ModelConfig(provider="anthropic", model="c", baseUrl="http://proxy:8080/")
    client = client_for(config, "k")
    assert isinstance(client, AnthropicClient)
    assert client.url == "http://proxy:8080/v1/messages"
    await client.aclose()


async def test_custom_needs_base_url() -> None:
    with pytest.raises(ProviderError, match="needs a baseUrl"):
        client_for(ModelConfig(provider="custom", model="llama3"), "")
    client = client_for(
        ModelConfig(provider="custom", model="llama3", baseUrl="http://localhost:11434/v1"), "k"
    )
    assert isinstance(client, OpenAIClient)
    assert client.url == "http://localhost:11434/v1/chat/completions"
    await client.aclose()


def test_google_is_not_supported_yet() -> None:
    with pytest.raises(ProviderError, match="not supported") as info:
        client_for(ModelConfig(provider="google", model="gemini-2.5-pro"), "k")
    assert 'provider = "custom"' in str(info.value)
    assert "baseUrl" in str(info.value)


async def test_end_to_end_through_client_for(fake: FakeProvider) -> None:
    fake.script("anthropic", Reply.text("from anthropic"))
    fake.script("openai", Reply.text("from openrouter"))
    configs = [
        ModelConfig(provider="anthropic", model="a", baseUrl=fake.url, thinkingLevel="low"),
        ModelConfig(provider="openrouter", model="b", baseUrl=fake.openai_url),
    ]
    texts = []
    for config in configs:
        client = client_for(config, "key")
        try:
            msgs = [Message("user", [Text("hi")])]
            out = await client.complete(config.model, "s", msgs, [], 50, config.thinking_level)
            texts.append(out.text)
        finally:
            await client.aclose()
    assert texts == ["from anthropic", "from openrouter"]
    assert fake.requests[0].body["thinking"]["budget_tokens"] == 2048
    assert fake.pending("anthropic") == fake.pending("openai") == 0


@pytest.mark.parametrize(
    ("provider", "api", "header"),
    [("openai", "openai", "authorization"), ("anthropic", "anthropic", "x-api-key")],
)
async def test_the_key_is_sent_as_the_provider_wants_it(
    provider: str, api: Api, header: str
) -> None:
    key = "sk-" + "s3cret" * 6
    async with FakeProvider(require_key=key) as server:
        server.script(api, Reply.text("hello"))
        url = server.url if api == "anthropic" else server.openai_url
        config = ModelConfig(provider=provider, model="m", baseUrl=url)  # type: ignore[arg-type]
        msgs = [Message("user", [Text("hi")])]
        async with contextlib.aclosing(client_for(config, key)) as client:
            assert (await client.complete("m", "s", msgs, [], 50)).text == "hello"
        sent = server.requests[0].headers[header]
        assert sent == (f"Bearer {key}" if header == "authorization" else key)
        # Without a key the provider refuses, and the error names the credential to add.
        async with contextlib.aclosing(client_for(config, "")) as client:
            with pytest.raises(AuthFailed) as info:
                await client.complete("m", "s", msgs, [], 50)
        assert header not in server.requests[1].headers
        assert f"no {provider}_key credential is stored" in str(info.value)
        assert f"`corral creds add {provider}_key`" in str(info.value)
