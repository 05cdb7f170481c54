"""The price table: built-in list prices by model id, the project's overrides, costs."""

from __future__ import annotations

import pytest

from corral.llm.pricing import BUILTIN_PRICES, Price, price_for
from corral.llm.types import Usage
from corral.project import ModelConfig


def model(name: str, **fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"provider": "anthropic", "model": name, **fields})


@pytest.mark.parametrize(
    ("model_id", "prefix"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("anthropic/claude-opus-4-5", "claude-opus-4-5"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("openai/GPT-5", "gpt-5"),
    ],
)
def test_built_in_prices_match_the_model_id_less_its_date(model_id: str, prefix: str) -> None:
    assert price_for(model(model_id)) == BUILTIN_PRICES[prefix]


@pytest.mark.parametrize("model_id", ["o3-pro", "gpt-5-pro", "llama3.1:8b", "claude-opus-4-6"])
def test_nothing_else_is_guessed(model_id: str) -> None:
    assert price_for(model(model_id)) is None


def test_a_configured_price_overrides_the_table_and_defaults_cache_to_input() -> None:
    config = model("claude-sonnet-4-5", price={"input": 2, "output": 8.5, "cacheRead": 0.2})
    assert config.price is not None and config.price.cache_read == 0.2
    assert price_for(config) == Price(2.0, 8.5, 0.2, 2.0)
    assert price_for(model("llama3", price={"input": 0, "output": 0})) == Price(0, 0, 0, 0)


def test_cost_adds_every_kind_of_token_at_its_price() -> None:
    sonnet = BUILTIN_PRICES["claude-sonnet-4-5"]
    assert (sonnet.cache_read, sonnet.cache_write) == (0.3, 3.75)
    usage = Usage(
        input_tokens=1_000, output_tokens=2_000, cache_read_tokens=10_000, cache_write_tokens=4_000
    )
    # 1k*3 + 2k*15 + 10k*0.3 + 4k*3.75 = 3,000 + 30,000 + 3,000 + 15,000 per million
    assert sonnet.cost(usage) == pytest.approx(0.051)
    assert sonnet.cost(Usage()) == 0.0
