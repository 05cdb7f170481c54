"""config.toml < .env.toml < environment file; how the environment is chosen; sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import ResolvedValue, load_project

from .helpers import MODELS, agent, write

BASE = (
    """\
workQueueSize = 10
maxReruns = 1
maxCallDepth = 1

[gateway]
port = 8000
host = "0.0.0.0"

"""
    + MODELS
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write(root, {"config.toml": "historyRetentionDays = 30\n" + BASE})
    write(root, agent("dev"))
    write(root, {".env.toml": 'environment = "staging"\nmaxReruns = 2\n[gateway]\nport = 8001\n'})
    return root


@pytest.fixture
def environments(clean_environment: Path) -> Path:
    folder = clean_environment / "environments"
    write(folder, {"staging.toml": "maxCallDepth = 5\n[gateway]\nport = 9000\n"})
    write(folder, {"prod.toml": "maxCallDepth = 7\n"})
    return folder


def sources(values: list[ResolvedValue]) -> dict[str, tuple[object, str]]:
    return {v.key: (v.value, v.source) for v in values}


def test_layers_merge_in_order(root: Path, environments: Path) -> None:
    project = load_project(root)
    assert project.environment == "staging"
    config = project.config
    assert config.work_queue_size == 10  # config.toml only
    assert config.max_reruns == 2  # .env.toml over config.toml
    assert config.max_call_depth == 5  # environment file over both
    assert config.gateway.port == 9000
    assert config.gateway.host == "0.0.0.0"  # tables merge key by key
    assert project.agents["dev"].config.max_work_queue_size == 10


def test_corral_env_beats_env_toml(
    root: Path, environments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_ENV", "prod")
    project = load_project(root)
    assert (project.environment, project.config.max_call_depth) == ("prod", 7)
    assert project.config.gateway.port == 8001


def test_explicit_env_wins(root: Path, environments: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_ENV", "prod")
    project = load_project(root, env="staging")
    assert (project.environment, project.config.max_call_depth) == ("staging", 5)


def test_explain_names_every_source(root: Path, environments: Path) -> None:
    found = sources(load_project(root).explain())
    assert found["historyRetentionDays"] == (30, "project")
    assert found["maxReruns"] == (2, ".env.toml")
    assert found["maxCallDepth"] == (5, "environment:staging")
    assert found["resourceLockTimeout"] == (1800, "default")
    assert found["gateway.host"] == ("0.0.0.0", "project")
    assert found["local.memory"] == ("4g", "default")
    assert found["models.sonnet.provider"] == ("anthropic", "project")
    assert found["models.sonnet.authType"] == ("api_key", "default")
    assert found["agents.dev.models"] == (("sonnet",), "agent")
    assert found["agents.dev.scale"] == (1, "default")
    assert found["agents.dev.timeout"] == (900, "default")
    assert found["agents.dev.maxWorkQueueSize"] == (10, "project")
    assert found["state.url"][1] == "default"


def test_missing_environment_says_how_to_create_it(root: Path, clean_environment: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(root, env="qa")
    path = clean_environment / "environments" / "qa.toml"
    assert str(caught.value) == (
        "1 problem in the project configuration:\n"
        f'  {path}: environment "qa" (selected by -E/--env) does not exist: there is no file '
        f"{path}. Create it with the settings that differ in that environment "
        f"(mkdir -p {path.parent} && touch {path}), or select another environment"
    )


def test_environment_file_is_validated_under_its_own_name(root: Path, environments: Path) -> None:
    write(environments, {"bad.toml": "maxRerun = 3\n[server]\nhost = 'x'\n"})
    with pytest.raises(ConfigError) as caught:
        load_project(root, env="bad")
    path = environments / "bad.toml"
    assert [str(issue) for issue in caught.value.issues] == [
        f"{path}:1: unknown key 'maxRerun' in {path}: did you mean 'maxReruns'?",
        f"{path}:2: unknown key 'server' in {path}; valid keys are: budget, defaultAgentScale, "
        "fleet, gateway, harness, historyRetentionDays, local, maxAttempts, maxCallDepth, "
        "maxReruns, maxRunners, models, projectName, providers, resourceLockTimeout, runtime, "
        "scale, state, telemetry, webhooks, workQueueSize",
    ]


def test_environment_name_must_be_a_plain_name(root: Path) -> None:
    with pytest.raises(ConfigError, match="is not valid"):
        load_project(root, env="../etc/passwd")


def test_state_url_relative_absolute_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, {"config.toml": MODELS + '[state]\nurl = "sqlite:///data/corral.db"\n'})
    write(tmp_path, agent("dev"))
    assert load_project(tmp_path).state_url == f"sqlite:///{tmp_path.resolve()}/data/corral.db"
    monkeypatch.setenv("CORRAL_STATE_URL", "postgresql://corral@127.0.0.1/test")
    project = load_project(tmp_path)
    assert project.state_url == "postgresql://corral@127.0.0.1/test"
    assert sources(project.explain())["state.url"] == (project.state_url, "env")
    monkeypatch.setenv("CORRAL_STATE_URL", "sqlite:////var/lib/corral/state.db")
    assert load_project(tmp_path).state_url == "sqlite:////var/lib/corral/state.db"


def test_bad_state_url_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, agent("dev", '[harness]\ncommand = "true"\n'))
    monkeypatch.setenv("CORRAL_STATE_URL", "redis://localhost")
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert [str(i) for i in caught.value.issues] == [
        "$CORRAL_STATE_URL: 'CORRAL_STATE_URL' uses the unsupported scheme \"redis\": write it as "
        "sqlite:///PATH (relative to the project) or postgresql://USER@HOST/DB"
    ]
