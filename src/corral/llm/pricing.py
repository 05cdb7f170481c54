"""What model calls cost: a price table per model id, overridable per project model.

Prices are US dollars per million tokens, as the providers list them. A model's price
comes from its ``[models.<name>] price`` table when the project sets one, else from the
built-in table below, matched by the provider's model id less a date or ``-latest``
suffix (so ``claude-sonnet-4-5-20250929`` is priced as ``claude-sonnet-4-5``; an
OpenRouter id such as ``anthropic/claude-sonnet-4-5`` is matched after its ``vendor/``
part). Nothing else is guessed: ``o3-pro`` is not priced as ``o3``. A model in
neither (a local model, a new release) has no price: corral then refuses to start a run
that needs one (a cost budget or a daily cap applies) rather than count it as free.

The built-in figures are the providers' list prices for standard (not batch) requests;
Anthropic's cache writes are the 5-minute ones. They go stale: set ``price`` in the
project's config to override.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.llm.types import Usage
from corral.project import ModelConfig

__all__ = ["BUILTIN_PRICES", "Price", "price_for"]

_MILLION = 1_000_000


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens of each kind."""

    input: float
    output: float
    cache_read: float
    cache_write: float

    def cost(self, usage: Usage) -> float:
        """The dollars ``usage`` costs at this price."""
        return (
            usage.input_tokens * self.input
            + usage.output_tokens * self.output
            + usage.cache_read_tokens * self.cache_read
            + usage.cache_write_tokens * self.cache_write
        ) / _MILLION


def _anthropic(input: float, output: float) -> Price:
    # Cache reads are a tenth of the input price; 5-minute cache writes 1.25 times it.
    return Price(input, output, round(input * 0.1, 6), round(input * 1.25, 6))


def _openai(input: float, output: float, cached: float) -> Price:
    # OpenAI charges nothing extra to write its cache: those tokens are plain input.
    return Price(input, output, cached, input)


#: Model id (without a date suffix) -> price.
BUILTIN_PRICES: dict[str, Price] = {
    "claude-opus-4-5": _anthropic(5.0, 25.0),
    "claude-opus-4-1": _anthropic(15.0, 75.0),
    "claude-opus-4": _anthropic(15.0, 75.0),
    "claude-sonnet-4-5": _anthropic(3.0, 15.0),
    "claude-sonnet-4": _anthropic(3.0, 15.0),
    "claude-3-7-sonnet": _anthropic(3.0, 15.0),
    "claude-3-5-sonnet": _anthropic(3.0, 15.0),
    "claude-haiku-4-5": _anthropic(1.0, 5.0),
    "claude-3-5-haiku": _anthropic(0.8, 4.0),
    "claude-3-haiku": _anthropic(0.25, 1.25),
    "gpt-5-nano": _openai(0.05, 0.40, 0.005),
    "gpt-5-mini": _openai(0.25, 2.0, 0.025),
    "gpt-5": _openai(1.25, 10.0, 0.125),
    "gpt-4.1-nano": _openai(0.10, 0.40, 0.025),
    "gpt-4.1-mini": _openai(0.40, 1.60, 0.10),
    "gpt-4.1": _openai(2.0, 8.0, 0.50),
    "gpt-4o-mini": _openai(0.15, 0.60, 0.075),
    "gpt-4o": _openai(2.50, 10.0, 1.25),
    "o4-mini": _openai(1.10, 4.40, 0.275),
    "o3-mini": _openai(1.10, 4.40, 0.55),
    "o3": _openai(2.0, 8.0, 0.50),
}


def price_for(config: ModelConfig) -> Price | None:
    """The price of ``config``'s model: its own ``price`` table, else the built-in one."""
    if config.price is not None:
        given = config.price
        return Price(
            given.input,
            given.output,
            given.input if given.cache_read is None else given.cache_read,
            given.input if given.cache_write is None else given.cache_write,
        )
    model = config.model.rsplit("/", 1)[-1].lower()
    return BUILTIN_PRICES.get(_DATED.sub("", model))


_DATED = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2}|latest)$")
