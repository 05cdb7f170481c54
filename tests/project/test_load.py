"""A full valid project loads, with every documented default."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.project import Project, load_project

from .helpers import MODELS, agent, write

PROJECT_CONFIG = """\
[models.sonnet]
provider = "anthropic"
model = "claude-sonnet-4-20250514"
thinkingLevel = "medium"
authType = "api_key"

[models.haiku]
provider = "anthropic"
model = "claude-haiku-4-5-20251001"
authType = "api_key"

[models.gpt4o]
provider = "openai"
model = "gpt-4o"
authType = "api_key"

[local]
image = "al-agent:latest"
memory = "4g"
cpus = 2
timeout = 900

[gateway]
port = 8080

[webhooks.my-github]
type = "github"
credential = "MyOrg"

[webhooks.my-sentry]
type = "sentry"
credential = "SentryProd"

[webhooks.my-linear]
type = "linear"
credential = "LinearMain"

[webhooks.my-mintlify]
type = "mintlify"
credential = "MintlifyMain"

[telemetry]
enabled = true
provider = "otel"
endpoint = "https://telemetry.example.com/v1"
serviceName = "corral"
samplingRate = 0.5
"""

AGENT_CONFIG = """\
source = "acme/dev-skills"
models = ["sonnet", "haiku"]
credentials = ["github_token", "git_ssh", "sentry_token:prod"]
schedule = "*/5 * * * *"
scale = 2
timeout = 600
maxWorkQueueSize = 50

[[webhooks]]
source = "my-github"
repos = ["acme/app"]
events = ["issues"]
actions = ["labeled"]
labels = ["agent"]

[[webhooks]]
source = "my-sentry"
resources = ["error", "event_alert"]

[[webhooks]]
source = "my-linear"
events = ["issues"]
actions = ["create", "update"]
labels = ["bug"]

[[webhooks]]
source = "my-mintlify"
events = ["build"]
actions = ["failed"]

[hooks]
pre = ["gh repo clone acme/app /tmp/repo --depth 1"]
post = ["upload-artifacts.sh"]

[params]
repos = ["acme/app", "acme/api"]
triggerLabel = "agent"
nested = { a = 1 }

[runtime]
type = "sandbox"
network = "none"
"""

DEV_SKILL = """\
---
name: dev
description: Solves GitHub issues by writing and testing code
license: MIT
compatibility: ">=0.5.0"
---

# Instructions

You are a dev agent.
"""


@pytest.fixture
def project(tmp_path: Path) -> Project:
    write(tmp_path, {"config.toml": PROJECT_CONFIG})
    write(tmp_path, agent("dev", AGENT_CONFIG, DEV_SKILL))
    write(tmp_path, agent("reviewer", 'models = ["haiku"]\n'))
    write(tmp_path, agent("runner", '[harness]\ncommand = ["my-agent", "--fast"]\n'))
    return load_project(tmp_path)


def test_project_settings(project: Project, tmp_path: Path) -> None:
    config = project.config
    assert project.root == tmp_path.resolve()
    assert project.shared_dir == tmp_path.resolve() / "shared"
    assert project.warnings == ()
    assert project.environment is None
    assert config.models["sonnet"].thinking_level == "medium"
    assert config.models["gpt4o"].provider == "openai"
    assert config.models["haiku"].thinking_level is None
    assert config.local.timeout == 900
    assert config.webhooks["my-github"].credential == "MyOrg"
    assert config.webhooks["my-github"].allow_unsigned is False
    assert config.telemetry.sampling_rate == 0.5


def test_documented_defaults(tmp_path: Path) -> None:
    write(tmp_path, agent("dev"))
    write(tmp_path, {"config.toml": MODELS})
    project = load_project(tmp_path)
    config = project.config
    assert config.scale is None
    assert config.work_queue_size == 100
    assert config.max_reruns == 10
    assert config.max_call_depth == 3
    assert config.resource_lock_timeout == 1800
    assert config.default_agent_scale == 1
    assert config.history_retention_days == 14
    assert config.gateway.port == 8080
    assert config.gateway.host == "127.0.0.1"
    assert config.local.memory == "4g"
    assert config.local.cpus == 2
    assert config.models["sonnet"].auth_type == "api_key"
    dev = project.agents["dev"]
    assert dev.config.timeout == 900
    assert dev.config.max_work_queue_size == 100
    assert dev.config.scale is None
    assert dev.effective_scale == 1
    assert dev.enabled
    assert dev.config.runtime.type == "host"
    assert dev.config.runtime.network == "host"
    assert dev.config.harness.type == "builtin"
    assert project.state_url == f"sqlite:///{tmp_path.resolve()}/.corral/state.db"


def test_no_config_toml_means_defaults(tmp_path: Path) -> None:
    write(tmp_path, agent("runner", '[harness]\ncommand = "echo hi"\n'))
    project = load_project(tmp_path)
    assert project.config.work_queue_size == 100
    assert project.agents["runner"].config.harness.command == "echo hi"


def test_agent_settings(project: Project, tmp_path: Path) -> None:
    dev = project.agents["dev"]
    assert list(project.agents) == ["dev", "reviewer", "runner"]
    assert dev.dir == tmp_path.resolve() / "agents" / "dev"
    assert dev.skill_path == dev.dir / "SKILL.md"
    assert dev.skill.name == "dev"
    assert dev.skill.license == "MIT"
    assert dev.skill.compatibility == ">=0.5.0"
    assert dev.skill.body == "\n# Instructions\n\nYou are a dev agent.\n"
    config = dev.config
    assert config.models == ("sonnet", "haiku")
    assert config.credentials == ("github_token", "git_ssh", "sentry_token:prod")
    assert config.schedule == "*/5 * * * *"
    assert dev.effective_scale == 2
    assert (config.timeout, config.max_work_queue_size) == (600, 50)
    assert [w.source for w in config.webhooks] == [
        "my-github",
        "my-sentry",
        "my-linear",
        "my-mintlify",
    ]
    assert config.webhooks[0].labels == ("agent",)
    assert config.hooks.post == ("upload-artifacts.sh",)
    assert config.params == {
        "repos": ["acme/app", "acme/api"],
        "triggerLabel": "agent",
        "nested": {"a": 1},
    }
    assert (config.runtime.type, config.runtime.network) == ("sandbox", "none")
    assert config.harness.type == "builtin"
    assert config.source == "acme/dev-skills"


def test_fallbacks_from_project(project: Project) -> None:
    reviewer = project.agents["reviewer"]
    assert reviewer.config.timeout == 900  # [local].timeout
    assert reviewer.config.max_work_queue_size == 100  # workQueueSize
    runner = project.agents["runner"]
    assert runner.config.harness.type == "command"
    assert runner.config.harness.command == ("my-agent", "--fast")


def test_scale_zero_disables_without_error(tmp_path: Path) -> None:
    write(tmp_path, {"config.toml": MODELS})
    write(tmp_path, agent("off", 'models = ["sonnet"]\nscale = 0\n'))
    write(tmp_path, agent("on", 'models = ["sonnet"]\nscale = 3\n'))
    project = load_project(tmp_path)
    assert project.agents["off"].effective_scale == 0
    assert not project.agents["off"].enabled
    assert project.agents["on"].enabled


def test_default_agent_scale_applies(tmp_path: Path) -> None:
    write(tmp_path, {"config.toml": "defaultAgentScale = 4\n" + MODELS})
    write(tmp_path, agent("dev"))
    assert load_project(tmp_path).agents["dev"].effective_scale == 4


def test_ignored_directories(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"config.toml": MODELS, "agents/.hidden/config.toml": "junk = ", "agents/notes/x.txt": ""},
    )
    write(tmp_path, agent("dev"))
    assert list(load_project(tmp_path).agents) == ["dev"]


def test_yaml_words_stay_strings(tmp_path: Path) -> None:
    write(tmp_path, {"config.toml": MODELS})
    write(tmp_path, agent("off", skill="---\nname: off\ndescription: yes\n---\nBody\n"))
    skill = load_project(tmp_path).agents["off"].skill
    assert (skill.name, skill.description) == ("off", "yes")


def test_skill_without_frontmatter_is_all_body(tmp_path: Path) -> None:
    write(tmp_path, {"config.toml": MODELS})
    write(tmp_path, agent("dev", skill="# Just instructions\n"))
    skill = load_project(tmp_path).agents["dev"].skill
    assert (skill.name, skill.description, skill.body) == ("dev", None, "# Just instructions\n")
