"""`[harness] preset`: a named command line, checked when the project loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import load_project
from corral.project.presets import PRESETS


def project_with(tmp_path: Path, harness: str) -> Path:
    agent = tmp_path / "agents" / "dev"
    agent.mkdir(parents=True)
    (tmp_path / "config.toml").write_text("")
    (agent / "SKILL.md").write_text("---\nname: dev\n---\nDo the work.\n")
    (agent / "config.toml").write_text(f"[harness]\n{harness}\n")
    return tmp_path


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_is_its_command(tmp_path: Path, name: str) -> None:
    project = load_project(project_with(tmp_path, f'preset = "{name}"'))
    harness = project.agents["dev"].config.harness
    assert harness.type == "command" and harness.command == PRESETS[name].command
    assert PRESETS[name].program in harness.command


def test_an_unknown_preset_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(project_with(tmp_path, 'preset = "claude-cod"'))
    (issue,) = caught.value.issues
    assert issue.field == "harness.preset" and issue.line == 2
    assert "did you mean 'claude-code'?" in issue.message
    assert "aider, claude-code, codex, gemini, opencode" in issue.message


def test_preset_and_command_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="either 'preset' or 'command'"):
        load_project(project_with(tmp_path, 'preset = "codex"\ncommand = "codex"'))
