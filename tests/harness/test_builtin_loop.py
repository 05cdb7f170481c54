"""The built-in harness's tool loop over real HTTP against the scripted fake provider,
with real tools on the host runtime: both API shapes, fallback, budgets, failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.harness.builtin import (
    EXIT_AUTH,
    EXIT_RATE_LIMITED,
    EXIT_UNRECOVERABLE,
    Budgets,
    run_loop,
)
from corral.harness.tools import Toolbox
from corral.llm import AnthropicClient, OpenAIClient, ToolUse, Usage
from corral.llm.fallback import ChainEntry, ModelChain
from tests.harness.test_tools import _toolbox
from tests.llm.fakeprovider import FakeProvider, Reply, Status

SHAPES = ["anthropic", "openai"]


class Transcript:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    async def __call__(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as server:
        yield server


def client(fake: FakeProvider, shape: str) -> AnthropicClient | OpenAIClient:
    if shape == "anthropic":
        return AnthropicClient(fake.url, "sk-test")
    return OpenAIClient(fake.openai_url, "sk-test")


def chain(*entries: tuple[str, AnthropicClient | OpenAIClient]) -> ModelChain:
    return ModelChain([ChainEntry(name, f"{name}-model", c) for name, c in entries])


@pytest.fixture
def box(tmp_path: Path) -> Toolbox:
    return _toolbox(tmp_path)


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_multi_turn_tool_loop(
    fake: FakeProvider, box: Toolbox, tmp_path: Path, shape: str
) -> None:
    fake.script(
        shape,  # type: ignore[arg-type]
        Reply.tools(ToolUse("t1", "bash", {"command": "echo hello > greeting; cat greeting"})),
        Reply.tools(ToolUse("t2", "read_file", {"path": "greeting"}), text="Checking."),
        Reply.text("All done: the greeting says hello."),
    )
    transcript = Transcript()
    result = await run_loop(chain(("m", client(fake, shape))), box, "Be brief.", "Go.", transcript)
    assert result.exit_code == 0 and result.error is None
    assert result.turns == 3 and result.final_text == "All done: the greeting says hello."
    assert result.usage == Usage(input_tokens=30, output_tokens=15)
    assert (tmp_path / "greeting").read_text() == "hello\n"
    kinds = [entry["type"] for entry in transcript.entries]
    assert kinds == ["turn", "tool", "turn", "tool", "turn"]
    assert transcript.entries[1]["output"] == "hello"
    assert transcript.entries[3]["output"] == "     1\thello"
    # The second request carried the first tool's result back to the model.
    second = fake.requests[1].body
    assert "hello" in str(second["messages"])


async def test_fallback_moves_to_the_next_model_on_a_rate_limit(
    fake: FakeProvider, box: Toolbox
) -> None:
    fake.script("anthropic", Status(429, {"type": "error", "error": {"message": "slow down"}}))
    fake.script("openai", Reply.text("answered by the second model"))
    transcript = Transcript()
    models = chain(("first", client(fake, "anthropic")), ("second", client(fake, "openai")))
    result = await run_loop(models, box, "s", "p", transcript)
    assert result.exit_code == 0 and result.final_text == "answered by the second model"
    assert transcript.entries[0]["model"] == "second"


async def test_every_model_throttled_ends_with_the_rate_limit_code(
    fake: FakeProvider, box: Toolbox
) -> None:
    fake.script("anthropic", Status(429, {"type": "error", "error": {"message": "slow"}}))
    fake.script("openai", Status(529, {"error": {"message": "overloaded"}}))
    models = chain(("a", client(fake, "anthropic")), ("b", client(fake, "openai")))
    result = await run_loop(models, box, "s", "p", Transcript())
    assert result.exit_code == EXIT_RATE_LIMITED
    assert result.error is not None and "rate limited" in result.error


async def test_an_authentication_failure_ends_with_the_auth_code(
    fake: FakeProvider, box: Toolbox
) -> None:
    fake.script("anthropic", Status(401, {"type": "error", "error": {"message": "bad key"}}))
    fake.script("openai", Reply.text("never asked"))
    models = chain(("a", client(fake, "anthropic")), ("b", client(fake, "openai")))
    transcript = Transcript()
    result = await run_loop(models, box, "s", "p", transcript)
    assert result.exit_code == EXIT_AUTH
    assert result.error is not None and result.error.startswith("auth: ")
    assert transcript.entries[-1]["kind"] == "auth"
    assert fake.pending("openai") == 1  # the other model was not tried


@pytest.mark.parametrize(
    ("budgets", "budget", "turns"),
    [
        (Budgets(max_turns=2), "turns", 2),
        (Budgets(max_tokens=20), "tokens", 2),  # 15 tokens a turn: the 2nd reaches 30
    ],
)
async def test_a_budget_stops_the_run_and_says_which(
    fake: FakeProvider, box: Toolbox, budgets: Budgets, budget: str, turns: int
) -> None:
    fake.script(
        "anthropic",
        *[Reply.tools(ToolUse(f"t{i}", "bash", {"command": "true"})) for i in range(5)],
    )
    transcript = Transcript()
    result = await run_loop(
        chain(("a", client(fake, "anthropic"))), box, "s", "p", transcript, budgets
    )
    assert result.budget == budget and result.turns == turns
    assert result.exit_code == EXIT_UNRECOVERABLE
    assert result.error is not None and f"the {budget} budget" in result.error
    assert transcript.entries[-1] == {"type": "budget", "budget": budget, "error": result.error}


async def test_the_wall_clock_budget(fake: FakeProvider, box: Toolbox) -> None:
    fake.script("anthropic", Reply.tools(ToolUse("t1", "bash", {"command": "true"})))
    now = [0.0]

    def clock() -> float:
        now[0] += 4.0
        return now[0]

    result = await run_loop(
        chain(("a", client(fake, "anthropic"))),
        box,
        "s",
        "p",
        Transcript(),
        Budgets(wall_seconds=5),
        clock=clock,
    )
    assert result.budget == "wall clock" and result.exit_code == 124
