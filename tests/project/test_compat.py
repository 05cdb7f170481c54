"""Old spellings still work, each with a warning that says what to write instead."""

from __future__ import annotations

from pathlib import Path

from corral.project import load_project

from .helpers import MODELS, agent, write


def messages(tmp_path: Path) -> list[str]:
    return [str(w) for w in load_project(tmp_path).warnings]


def test_deprecated_project_aliases(tmp_path: Path) -> None:
    write(
        tmp_path,
        {"config.toml": "maxTriggerDepth = 5\nwebhookQueueSize = 7\nprojectName = 'x'\n" + MODELS},
    )
    write(tmp_path, agent("dev"))
    project = load_project(tmp_path)
    assert (project.config.max_call_depth, project.config.work_queue_size) == (5, 7)
    assert project.config.project_name == "x"
    assert [str(w) for w in project.warnings] == [
        "config.toml:1: 'maxTriggerDepth' is deprecated: rename it to 'maxCallDepth' "
        "(the value is used)",
        "config.toml:2: 'webhookQueueSize' is deprecated: rename it to 'workQueueSize' "
        "(the value is used)",
    ]


def test_runtime_aliases(tmp_path: Path) -> None:
    write(tmp_path, {"config.toml": MODELS})
    write(tmp_path, agent("a", 'models = ["sonnet"]\n[runtime]\ntype = "container"\n'))
    write(
        tmp_path, agent("b", 'models = ["sonnet"]\n[runtime]\ntype = "host-user"\nrun_as = "al"\n')
    )
    project = load_project(tmp_path)
    assert project.agents["a"].config.runtime.type == "sandbox"
    assert project.agents["b"].config.runtime.type == "host"
    assert [str(w) for w in project.warnings] == [
        'agents/a/config.toml:3: runtime type "container" is an old name: write type = "sandbox" '
        "(that is what is used)",
        'agents/b/config.toml:3: runtime type "host-user" is an old name: write type = "host" '
        "(that is what is used)",
        "agents/b/config.toml:4: 'runtime.run_as' is not used by corral and is ignored: remove it",
    ]


def test_settings_in_frontmatter_are_used_with_a_warning(tmp_path: Path) -> None:
    skill = (
        "---\nname: dev\nmodels: [sonnet]\nschedule: '0 9 * * 1'\nscale: 3\n"
        "hooks:\n  pre: [make]\n---\nBody\n"
    )
    write(tmp_path, {"config.toml": MODELS})
    write(tmp_path, agent("dev", "scale = 2\n", skill))
    project = load_project(tmp_path)
    dev = project.agents["dev"]
    assert dev.config.models == ("sonnet",)
    assert dev.config.schedule == "0 9 * * 1"
    assert dev.config.hooks.pre == ("make",)
    assert dev.effective_scale == 2  # config.toml wins
    assert [str(w) for w in project.warnings] == [
        "agents/dev/SKILL.md:3: 'models' in the frontmatter is deprecated: move it to "
        "agents/dev/config.toml",
        "agents/dev/SKILL.md:4: 'schedule' in the frontmatter is deprecated: move it to "
        "agents/dev/config.toml",
        "agents/dev/SKILL.md:5: 'scale' in the frontmatter is ignored because "
        "agents/dev/config.toml also sets it: remove it from SKILL.md",
        "agents/dev/SKILL.md:6: 'hooks' in the frontmatter is deprecated: move it to "
        "agents/dev/config.toml",
    ]
    found = {v.key: v.source for v in project.explain()}
    assert found["agents.dev.schedule"] == "SKILL.md"
    assert found["agents.dev.scale"] == "agent"


def test_frontmatter_leniency(tmp_path: Path) -> None:
    skill = "---\nname: developer\ndescripton: typo\nmetadata: {a: b}\n---\nBody\n"
    write(tmp_path, {"config.toml": MODELS})
    write(tmp_path, agent("dev", skill=skill))
    project = load_project(tmp_path)
    assert project.agents["dev"].skill.name == "developer"
    assert [str(w) for w in project.warnings] == [
        'agents/dev/SKILL.md:2: name "developer" differs from the directory name; the agent is '
        'called "dev"',
        "agents/dev/SKILL.md:3: unknown frontmatter key 'descripton' is ignored: did you mean "
        "'description'?",
    ]
