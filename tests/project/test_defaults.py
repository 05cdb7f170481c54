"""Project-wide ``[runtime]`` and ``[harness]``: defaults for every agent that does not set
its own, from config.toml or an environment overlay, with their source; bad values are
reported once, at the project file."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import load_project
from corral.project.presets import PRESETS

from .helpers import MODELS, agent, write

COMMAND_AGENT = '[harness]\ncommand = "./mine.sh"\n'


def sources(project_root: Path, env: str | None = None) -> dict[str, tuple[object, str]]:
    values = load_project(project_root, env=env).explain()
    return {value.key: (value.value, value.source) for value in values}


def test_project_runtime_applies_to_every_agent_that_does_not_set_it(tmp_path: Path) -> None:
    root = write(
        tmp_path / "p",
        {
            "config.toml": MODELS + '[runtime]\ntype = "sandbox"\nmemory = "2g"\n',
            **agent("plain"),
            **agent("own", 'models = ["sonnet"]\n[runtime]\ntype = "host"\n'),
        },
    )
    project = load_project(root)
    assert project.agents["plain"].config.runtime.type == "sandbox"
    assert project.agents["plain"].config.runtime.memory == "2g"
    # An agent's own value wins, key by key: it keeps the project's memory.
    assert project.agents["own"].config.runtime.type == "host"
    assert project.agents["own"].config.runtime.memory == "2g"
    found = sources(root)
    assert found["runtime.type"] == ("sandbox", "project")
    assert found["agents.plain.runtime.type"] == ("sandbox", "project")
    assert found["agents.own.runtime.type"] == ("host", "agent")
    assert found["agents.own.runtime.memory"] == ("2g", "project")
    assert found["agents.own.runtime.network"] == ("host", "default")


def test_an_environment_overlay_sets_the_runtime(tmp_path: Path, clean_environment: Path) -> None:
    root = write(tmp_path / "p", {"config.toml": MODELS, **agent("dev")})
    write(clean_environment, {"environments/ci.toml": '[runtime]\ntype = "sandbox"\n'})
    assert load_project(root).agents["dev"].config.runtime.type == "host"
    found = sources(root, env="ci")
    assert found["agents.dev.runtime.type"] == ("sandbox", "environment:ci")


def test_project_harness_is_one_choice_and_env_merges(tmp_path: Path) -> None:
    preset = next(iter(sorted(PRESETS)))
    root = write(
        tmp_path / "p",
        {
            "config.toml": MODELS
            + f'[harness]\npreset = "{preset}"\n[harness.env]\nA = "project"\nB = "project"\n',
            **agent("plain"),
            **agent("own", COMMAND_AGENT + '[harness.env]\nB = "agent"\n'),
            **agent("builtin", 'models = ["sonnet"]\n[harness]\ntype = "builtin"\n'),
        },
    )
    agents = load_project(root).agents
    plain, own, builtin = agents["plain"], agents["own"], agents["builtin"]
    # Models alone would mean the built-in harness; the project's preset decides instead.
    assert plain.config.harness.type == "command"
    assert plain.config.harness.command == PRESETS[preset].command
    # An agent that chooses its own command takes none of the project's choice ...
    assert own.config.harness.preset is None and own.config.harness.command == "./mine.sh"
    # ... but the project's environment, its own values first.
    assert dict(own.config.harness.env) == {"A": "project", "B": "agent"}
    assert builtin.config.harness.type == "builtin" and builtin.config.harness.command is None
    found = sources(root)
    assert found["agents.plain.harness.preset"] == (preset, "project")
    assert found["agents.plain.harness.env"] == ({"A": "project", "B": "project"}, "project")
    assert found["agents.own.harness.env"][1] == "agent"  # a table is named by who wrote it


@pytest.mark.parametrize(
    ("table", "field", "says"),
    [
        ('[runtime]\ntype = "docker"\n', "runtime.type", "'runtime.type'"),
        ('[runtime]\nmemory = "lots"\n', "runtime.memory", "'runtime.memory'"),
        ('[harness]\npreset = "claud"\n', "harness.preset", "unknown preset 'claud'"),
        ('[harness]\npreset = "claude-code"\ncommand = "x"\n', "harness.preset", "not both"),
    ],
)
def test_a_bad_project_default_names_the_file_and_field(
    tmp_path: Path, table: str, field: str, says: str
) -> None:
    root = write(tmp_path / "p", {"config.toml": MODELS + table, **agent("dev")})
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    issues = caught.value.issues
    assert [(i.file, i.field) for i in issues] == [("config.toml", field)], issues
    assert says in str(issues[0]) and issues[0].line is not None


def test_old_runtime_names_work_in_the_project_too(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"config.toml": MODELS + '[runtime]\ntype = "container"\n'})
    write(root, agent("dev"))
    project = load_project(root)
    assert project.agents["dev"].config.runtime.type == "sandbox"
    assert any("old name" in str(w) for w in project.warnings)


def test_agent_timeout_defaults_to_900_seconds_as_in_action_llama(tmp_path: Path) -> None:
    root = write(tmp_path / "p", {"config.toml": MODELS, **agent("dev")})
    assert load_project(root).agents["dev"].config.timeout == 900
    write(root, {"config.toml": MODELS + "[local]\ntimeout = 60\n"})
    assert load_project(root).agents["dev"].config.timeout == 60
