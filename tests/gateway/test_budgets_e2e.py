"""Budgets and accounting of built-in harness runs, end to end: the scheduler runs the loop
against a scripted fake provider over real HTTP (both API shapes), the store records
tokens and dollars after every turn, and each budget stops a run with its own outcome."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.credentials import CredentialStore
from corral.llm import ToolUse, Usage
from corral.store import ItemState, Run, RunState, Store
from tests.gateway.fleet import running_fleet
from tests.llm.fakeprovider import FakeProvider, Reply

#: Each scripted turn: 10 input and 5 output tokens; at the test price, $0.10 + $0.20.
TURN = Usage(input_tokens=10, output_tokens=5)
TURN_COST = 0.30
PRICE = "price = { input = 10000, output = 40000 }\n"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as server:
        yield server


@pytest.fixture(params=["anthropic", "openai"])
def shape(request: pytest.FixtureRequest) -> str:
    """The provider API the agent's model speaks."""
    return str(request.param)


def project_toml(fake: FakeProvider, shape: str, *, price: bool = True, extra: str = "") -> str:
    if shape == "anthropic":
        model = f'provider = "anthropic"\nmodel = "claude-test"\nbaseUrl = "{fake.url}"\n'
    else:
        model = f'provider = "custom"\nmodel = "local-test"\nbaseUrl = "{fake.openai_url}"\n'
    return "[models.m]\n" + model + (PRICE if price else "") + extra


def agent_tables(budget: str = "") -> dict[str, str]:
    return {"dev": 'type = "builtin"\n' + ("[budget]\n" + budget if budget else "")}


def busy(n: int) -> list[Reply]:
    """``n`` turns that each call a tool, so the loop would go on without a budget."""
    return [
        Reply.tools(ToolUse(f"t{i}", "bash", {"command": f"echo turn {i}"}), usage=TURN)
        for i in range(n)
    ]


def transcript(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


AGENTS: dict[str, dict[str, object]] = {"dev": {"command": "unused", "models": ["m"]}}


async def one_run(
    tmp_path: Path, store: Store, toml: str, tables: dict[str, str], timeout: str = ""
) -> tuple[Run, str]:
    agents = {"dev": {**AGENTS["dev"], **({"timeout": int(timeout)} if timeout else {})}}
    async with running_fleet(tmp_path / "p", store, agents, toml, tables) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1, timeout=60)
        return run, f.scheduler.executor.log_path(run.id).read_text()


async def test_a_finished_run_records_its_tokens_and_cost(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    fake.script(shape, *busy(2), Reply.text("done", usage=TURN))
    run, log = await one_run(tmp_path, store, project_toml(fake, shape), agent_tables())
    assert run.state is RunState.SUCCEEDED and run.outcome == "succeeded", run.error
    assert (run.input_tokens, run.output_tokens, run.tokens) == (30, 15, 45)
    assert run.cost_usd == pytest.approx(3 * TURN_COST)
    turns = [e for e in transcript(log) if e["type"] == "turn"]
    assert [e["costUsd"] for e in turns] == [pytest.approx(TURN_COST)] * 3
    assert turns[-1]["totalCostUsd"] == pytest.approx(3 * TURN_COST)


@pytest.mark.parametrize(
    ("budget", "name", "limit", "turns"),
    [
        ("maxTurns = 2\n", "turns", "2 turns", 2),
        ("maxTokens = 40\n", "tokens", "40 tokens", 3),  # 15 a turn: 45 >= 40 after 3
        ("maxCost = 0.5\n", "cost", "$0.50", 2),  # $0.30 a turn: $0.60 >= $0.50 after 2
    ],
)
async def test_each_budget_stops_a_run_and_says_which(
    tmp_path: Path,
    store: Store,
    fake: FakeProvider,
    shape: str,
    budget: str,
    name: str,
    limit: str,
    turns: int,
) -> None:
    fake.script(shape, *busy(6))
    toml = project_toml(fake, shape)
    run, log = await one_run(tmp_path, store, toml, agent_tables(budget))
    assert run.state is RunState.FAILED and run.exit_code == 15
    assert (run.budget, run.outcome) == (name, "over_budget")
    assert run.error == f"stopped by the {name} budget ({limit})"
    assert run.tokens == 15 * turns and run.cost_usd == pytest.approx(turns * TURN_COST)
    entries = transcript(log)
    assert sum(e["type"] == "turn" for e in entries) == turns
    assert entries[-1] == {"run": run.id, "type": "budget", "budget": name, "error": run.error}
    assert len(fake.requests) == turns  # no model call after the budget was spent


async def test_the_wall_clock_budget_is_the_timeout(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    slow = Reply.tools(ToolUse("t0", "bash", {"command": "sleep 1.2"}), usage=TURN)
    fake.script(shape, slow, *busy(3))
    toml = project_toml(fake, shape)
    run, _ = await one_run(tmp_path, store, toml, agent_tables(), timeout="1")
    assert run.state is RunState.TIMED_OUT and run.exit_code == 124
    assert run.error == "stopped by the wall clock budget (1 s)"
    assert run.tokens == 15 and len(fake.requests) == 1


async def test_a_cost_budget_needs_a_price_for_every_model(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    toml = project_toml(fake, shape, price=False)
    run, _ = await one_run(tmp_path, store, toml, agent_tables("maxCost = 1\n"))
    assert run.state is RunState.FAILED and fake.requests == []
    assert run.error is not None and run.error.startswith("model 'm' ("), run.error
    assert "has no known price, and agent 'dev' is limited in dollars (budget.maxCost)" in (
        run.error
    )
    assert "set [models.m] price = { input = …, output = … }" in run.error


async def test_an_unpriced_model_without_limits_counts_tokens_only(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    fake.script(shape, Reply.text("hi", usage=TURN))
    toml = project_toml(fake, shape, price=False)
    run, _ = await one_run(tmp_path, store, toml, agent_tables())
    assert run.state is RunState.SUCCEEDED
    assert (run.tokens, run.cost_usd) == (15, None)


async def test_the_agent_daily_cap_refuses_new_runs_and_queued_ones(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    # The first run spends $0.60 of a $0.50 day; the second was queued before that
    # (scale 1: it waits), so it is stopped when it starts; a third is refused at once.
    fake.script(shape, *busy(1), Reply.text("done", usage=TURN))
    toml = project_toml(fake, shape)
    async with running_fleet(
        tmp_path / "p", store, AGENTS, toml, agent_tables("dailyCost = 0.5\n")
    ) as f:
        await f.trigger("dev")
        second = await f.trigger("dev")
        assert second.state is ItemState.QUEUED
        first, stopped = await f.finished("dev", 2, timeout=60)
        third = await f.trigger("dev")
    assert first.state is RunState.SUCCEEDED
    assert first.cost_usd == pytest.approx(2 * TURN_COST)
    assert (stopped.state, stopped.outcome, stopped.budget) == (
        RunState.FAILED,
        "over_budget",
        "daily cost",
    )
    assert stopped.cost_usd == 0.0
    expected = (
        "daily cost cap reached: agent 'dev' has spent $0.60 today (UTC) of its $0.50 a day "
        "([budget] dailyCost in agents/dev/config.toml); new runs are refused until 00:00 UTC"
    )
    assert stopped.error is not None and stopped.error.startswith(expected)
    assert third.state is ItemState.REJECTED
    assert third.reason is not None and third.reason.startswith(expected)
    assert len(fake.requests) == 2  # only the first run reached the model


async def test_the_project_daily_cap_refuses_every_agent(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    fake.script(shape, Reply.text("done", usage=TURN))
    toml = project_toml(fake, shape, extra="[budget]\ndailyCost = 0.25\n")
    agents = {**AGENTS, "other": {"command": "true"}}
    async with running_fleet(tmp_path / "p", store, agents, toml, agent_tables()) as f:
        await f.trigger("dev")
        await f.finished("dev", 1, timeout=60)
        refused = await f.trigger("other")
    assert refused.state is ItemState.REJECTED
    assert refused.reason is not None and refused.reason.startswith(
        "daily cost cap reached: the project has spent $0.30 today (UTC) of its $0.25 a day"
    )


async def test_a_credential_value_never_reaches_the_transcript(
    tmp_path: Path,
    store: Store,
    fake: FakeProvider,
    shape: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = "ghp_" + "Zq8x" * 9
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    CredentialStore(tmp_path / "home" / "credentials").add(
        "github_token", "default", {"token": token}
    )
    # The tool prints the token; the model then repeats it in its answer.
    fake.script(
        shape,
        Reply.tools(ToolUse("t0", "bash", {"command": "echo token=$GITHUB_TOKEN"}), usage=TURN),
        Reply.text(f"I found {token} in the environment", usage=TURN),
    )
    agents = {"dev": {**AGENTS["dev"], "credentials": ["github_token"]}}
    async with running_fleet(
        tmp_path / "p", store, agents, project_toml(fake, shape), agent_tables()
    ) as f:
        await f.trigger("dev")
        (run,) = await f.finished("dev", 1, timeout=60)
        log = f.scheduler.executor.log_path(run.id).read_text()
    assert run.state is RunState.SUCCEEDED, run.error
    entries = transcript(log)
    tool = next(e for e in entries if e["type"] == "tool")
    assert tool["output"] == "token=[REDACTED]"
    assert [e["text"] for e in entries if e["type"] == "turn"][-1] == (
        "I found [REDACTED] in the environment"
    )
    assert token not in log
    # The model did see the tool's real output: redaction is of the log, not the run.
    assert token in json.dumps(fake.requests[-1].body)


async def test_a_cost_budget_caps_what_the_model_may_write_in_a_turn(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    # Output costs $0.04 a token: $0.50 buys 12 of them at first; after a $0.30 turn,
    # $0.20 is left, which buys 5. Without a cost budget a turn may write 8,192.
    fake.script(shape, *busy(6))
    toml = project_toml(fake, shape)
    run, _ = await one_run(tmp_path, store, toml, agent_tables("maxCost = 0.5\n"))
    assert run.budget == "cost"
    assert [r.body["max_tokens"] for r in fake.requests] == [12, 5]


async def test_without_a_cost_budget_a_turn_may_write_the_usual_amount(
    tmp_path: Path, store: Store, fake: FakeProvider, shape: str
) -> None:
    fake.script(shape, Reply.text("done", usage=TURN))
    run, _ = await one_run(tmp_path, store, project_toml(fake, shape), agent_tables())
    assert run.state is RunState.SUCCEEDED
    assert [r.body["max_tokens"] for r in fake.requests] == [8192]
