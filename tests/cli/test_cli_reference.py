"""The CLI as Action Llama documents it: per-command -E/-p, the project found from any
subdirectory, `corral logs` with no argument and -n, `corral stats [--calls]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.locate import find_project_root
from tests.cli.conftest import Corral
from tests.cli.test_walking_skeleton import set_command


def _home(tmp_path: Path) -> Path:
    return tmp_path / "home" / ".corral"


def _environment(tmp_path: Path, name: str, text: str) -> None:
    folder = _home(tmp_path) / "environments"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.toml").write_text(text)


@pytest.mark.slow
def test_env_option_works_after_the_subcommand_as_before_it(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    _environment(tmp_path, "production", 'projectName = "prod-fleet"\n')
    after = corral("stat", "-E", "production", cwd=project)
    before = corral("-E", "production", "stat", cwd=project)
    long_form = corral("stat", "--env", "production", "--json", cwd=project)
    plain = corral("stat", cwd=project)
    assert after.returncode == before.returncode == long_form.returncode == 0, after.stderr
    assert "prod-fleet" in after.stdout and "prod-fleet" in before.stdout
    assert json.loads(long_form.stdout)["project"] == "prod-fleet"
    assert "prod-fleet" not in plain.stdout
    # After the subcommand it wins over the one before it, and a missing one is named.
    missing = corral("-E", "production", "stat", "-E", "staging", cwd=project)
    assert missing.returncode == 2
    assert 'environment "staging"' in missing.stderr


def test_project_option_works_after_the_subcommand(
    corral: Corral, project: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = corral("stat", "-p", str(project), "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert [a["agent"] for a in json.loads(result.stdout)["agents"]] == ["hello"]
    nested = corral("creds", "ls", "-p", str(project), cwd=elsewhere)  # a group's command
    assert nested.returncode == 0, nested.stderr


@pytest.mark.slow
def test_commands_inside_an_agent_folder_find_the_project(corral: Corral, project: Path) -> None:
    deeper = project / "agents" / "hello" / "notes"
    deeper.mkdir()
    for cwd in (project / "agents" / "hello", deeper, project / "agents"):
        result = corral("stat", "--json", cwd=cwd)
        assert result.returncode == 0, (cwd, result.stderr)
        assert [a["agent"] for a in json.loads(result.stdout)["agents"]] == ["hello"]
    assert find_project_root(project / "agents" / "hello") == project
    assert find_project_root(deeper) == project


def test_a_project_that_lives_in_a_folder_named_agents_is_still_found(tmp_path: Path) -> None:
    root = tmp_path / "agents" / "fleet"
    (root / "agents" / "dev").mkdir(parents=True)
    (root / "config.toml").write_text("")
    (root / "agents" / "dev" / "config.toml").write_text("")
    assert find_project_root(root) == root
    assert find_project_root(root / "agents" / "dev") == root


def test_logs_without_an_argument_needs_a_scheduler_log(corral: Corral, project: Path) -> None:
    result = corral("logs", cwd=project)
    assert result.returncode == 2
    assert "no scheduler log yet" in result.stderr and "corral start" in result.stderr


@pytest.mark.slow
def test_logs_lines_shows_the_last_lines_of_a_run(corral: Corral, project: Path) -> None:
    set_command(project, "for i in 1 2 3 4 5; do echo line-$i; done")
    assert corral("run", "hello", "--foreground", cwd=project).returncode == 0
    whole = corral("logs", "hello", cwd=project)
    last_two = corral("logs", "hello", "-n", "2", cwd=project)
    grepped = corral("logs", "hello", "--lines", "1", "-g", "line-[123]", cwd=project)
    assert whole.returncode == last_two.returncode == grepped.returncode == 0
    assert [ln for ln in whole.stdout.splitlines() if ln.startswith("line-")] == [
        f"line-{i}" for i in range(1, 6)
    ]
    assert last_two.stdout.splitlines() == ["line-4", "line-5"]
    assert grepped.stdout.splitlines() == ["line-3"]


@pytest.mark.slow
def test_stats_summarise_runs_per_agent_and_for_one_agent(corral: Corral, project: Path) -> None:
    set_command(project, "echo fine")
    assert corral("run", "hello", "--foreground", cwd=project).returncode == 0
    assert corral("run", "hello", "--foreground", cwd=project).returncode == 0
    set_command(project, "exit 3")
    assert corral("run", "hello", "--foreground", cwd=project).returncode == 3

    overall = corral("stats", cwd=project)
    assert overall.returncode == 0, overall.stderr
    assert "totals (last 7d): 3 runs (2 ok, 1 err)" in overall.stdout
    assert any(ln.split()[:4] == ["hello", "3", "2", "1"] for ln in overall.stdout.splitlines())

    one = corral("stats", "hello", "-n", "1", "--json", cwd=project)
    assert one.returncode == 0, one.stderr
    body = json.loads(one.stdout)
    assert body["summary"]["totalRuns"] == 3 and body["summary"]["errorRuns"] == 1
    assert [r["result"] for r in body["runs"]] == ["failed"]  # the latest, and only 1

    window = corral("stats", "--since", "1h", "--json", cwd=project)
    assert json.loads(window.stdout)["global"]["totalRuns"] == 3
    calls = corral("stats", "--calls", cwd=project)
    assert calls.returncode == 0
    assert "no calls between agents in the last 7d" in calls.stdout
    bad = corral("stats", "--since", "lately", cwd=project)
    assert bad.returncode == 2 and "lately" in bad.stderr


@pytest.mark.slow
def test_start_takes_action_llamas_short_flags(corral: Corral, project: Path) -> None:
    help_text = corral("start", "--help", cwd=project).stdout
    for short, long in (("-H", "--headless"), ("-e", "--expose"), ("-w", "--web-ui")):
        assert f"{short}, {long}" in help_text
    # -e is --expose: with no operator token it refuses to start, naming what to do.
    exposed = corral("start", "-H", "-e", "-w", "--port", "0", cwd=project)
    assert exposed.returncode == 2
    assert "--expose needs an operator token" in exposed.stderr
