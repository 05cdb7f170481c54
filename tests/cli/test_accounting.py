"""`corral runs`, `corral logs` and `corral usage` on real built-in harness runs: the CLI
in a subprocess, the model a scripted fake provider over real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.llm import ToolUse, Usage
from tests.cli.conftest import Corral
from tests.llm.fakeprovider import FakeProvider, Reply

TURN = Usage(input_tokens=10, output_tokens=5)


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider() as server:
        yield server


def make_builtin(project: Path, fake: FakeProvider, budget: str = "") -> None:
    """The scaffold's hello agent, as a built-in harness agent of a priced fake model."""
    config = project / "config.toml"
    config.write_text(
        config.read_text()
        + f'\n[models.m]\nprovider = "custom"\nmodel = "local-test"\nbaseUrl = "{fake.openai_url}"'
        + "\nprice = { input = 10000, output = 40000 }\n"
    )
    agent = project / "agents" / "hello" / "config.toml"
    text = agent.read_text().replace('schedule = "0 0 1 1 *"', 'models = ["m"]')
    text = text.replace("command = 'sh \"$CORRAL_AGENT_DIR/run.sh\"'", 'type = "builtin"')
    agent.write_text(text + ("\n[budget]\n" + budget if budget else ""))


async def cli(corral: Corral, *args: str, cwd: Path) -> Any:
    # In a thread: the fake provider answers from this test's event loop meanwhile.
    return await asyncio.to_thread(corral, *args, cwd=cwd)


async def test_runs_logs_and_usage_show_a_builtin_run(
    corral: Corral, project: Path, fake: FakeProvider
) -> None:
    make_builtin(project, fake)
    fake.script(
        "openai",
        Reply.tools(ToolUse("t1", "bash", {"command": "echo from-the-tool"}), usage=TURN),
        Reply.text("All done.", usage=TURN),
    )
    ran = await cli(corral, "run", "hello", cwd=project)
    assert ran.returncode == 0, ran.stderr

    listed = await cli(corral, "runs", cwd=project)
    assert listed.returncode == 0, listed.stderr
    row = listed.stdout.splitlines()[1].split()
    assert row[-2:] == ["30", "$0.60"] and "succeeded" in row
    (run,) = json.loads((await cli(corral, "runs", "--json", cwd=project)).stdout)
    assert run["costUsd"] == pytest.approx(0.6) and run["outcome"] == "succeeded"
    assert run["tokens"] == {
        "input": 20,
        "output": 10,
        "cacheRead": 0,
        "cacheWrite": 0,
        "total": 30,
    }

    shown = await cli(corral, "logs", run["id"], cwd=project)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines.index("[turn 1 · m · 15 tok · $0.30]") < lines.index(
        '  → bash {"command": "echo from-the-tool"}'
    )
    assert "  ← bash" in lines and "    from-the-tool" in lines
    assert "[turn 2 · m · 15 tok · $0.30] All done." in lines
    # By agent name: its latest run; --grep keeps matching lines only.
    grepped = await cli(corral, "logs", "hello", "--grep", r"^\[turn", cwd=project)
    assert grepped.stdout.splitlines() == [
        "[turn 1 · m · 15 tok · $0.30]",
        "[turn 2 · m · 15 tok · $0.30] All done.",
    ]
    raw = await cli(corral, "logs", run["id"], "--raw", "--grep", '"type": "turn"', cwd=project)
    assert [json.loads(line)["turn"] for line in raw.stdout.splitlines()] == [1, 2]

    usage = json.loads((await cli(corral, "usage", "--json", cwd=project)).stdout)
    (day,) = usage["days"]
    assert (day["agent"], day["runs"], day["inputTokens"], day["outputTokens"]) == (
        "hello",
        1,
        20,
        10,
    )
    assert day["costUsd"] == pytest.approx(0.6)
    assert {"agent": "hello", "spent": pytest.approx(0.6), "dailyCap": None} in usage["today"]
    table = (await cli(corral, "usage", cwd=project)).stdout
    assert "total: $0.60 over 1 runs" in table


async def test_runs_filter_by_outcome_and_since(
    corral: Corral, project: Path, fake: FakeProvider
) -> None:
    make_builtin(project, fake, budget="maxTurns = 1\ndailyCost = 0.25\n")
    loop = Reply.tools(ToolUse("t", "bash", {"command": "true"}), usage=TURN)
    fake.script("openai", loop, loop)
    stopped = await cli(corral, "run", "hello", cwd=project)
    assert stopped.returncode == 15, stopped.stderr
    (run,) = json.loads((await cli(corral, "runs", "--json", cwd=project)).stdout)
    assert (run["outcome"], run["budget"], run["state"]) == ("over_budget", "turns", "failed")
    assert run["error"] == "stopped by the turns budget (1 turns)"

    over = await cli(corral, "runs", "--state", "over_budget", "--json", cwd=project)
    assert [r["id"] for r in json.loads(over.stdout)] == [run["id"]]
    table = (await cli(corral, "runs", "--state", "over_budget", cwd=project)).stdout
    assert "over_budget (turns)" in table
    succeeded = await cli(corral, "runs", "--state", "succeeded", cwd=project)
    assert succeeded.stdout.strip() == "no runs match"
    future = await cli(corral, "runs", "--since", "2999-01-01", "--json", cwd=project)
    assert json.loads(future.stdout) == []
    recent = await cli(corral, "runs", "--since", "10m", "--json", cwd=project)
    assert len(json.loads(recent.stdout)) == 1

    # $0.30 spent of a $0.25 day: the next run is refused, and usage says so.
    refused = await cli(corral, "run", "hello", cwd=project)
    assert refused.returncode != 0
    assert "daily cost cap reached: agent 'hello' has spent $0.30 today (UTC)" in refused.stderr
    usage = (await cli(corral, "usage", cwd=project)).stdout
    assert "today: agent hello spent $0.30 of $0.25 (cap reached: new runs refused)" in usage


def test_logs_and_runs_explain_bad_input(corral: Corral, project: Path) -> None:
    missing = corral("logs", "nosuch", cwd=project)
    assert missing.returncode == 2
    assert "'nosuch' is neither a run id nor an agent of this project" in missing.stderr
    none_yet = corral("logs", "hello", cwd=project)
    assert none_yet.returncode == 2 and "agent 'hello' has no runs" in none_yet.stderr
    bad_since = corral("runs", "--since", "yesterday", cwd=project)
    assert bad_since.returncode == 2
    assert "'yesterday' is neither a span (15m, 2h, 3d, 1w) nor an ISO date" in bad_since.stderr
    for far in ("99999999999d", "1000000w", "0001-01-01"):
        too_far = corral("runs", "--since", far, cwd=project)
        assert too_far.returncode == 2 and f"'{far}' reaches back too far" in too_far.stderr
    bad_grep = corral("logs", "hello", "--grep", "(", cwd=project)
    assert bad_grep.returncode == 2 and "is not a regular expression" in bad_grep.stderr
