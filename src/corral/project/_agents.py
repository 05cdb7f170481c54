"""Loading ``agents/<name>/``: SKILL.md, config.toml, and the checks that span files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from corral.errors import ConfigIssue
from corral.project._checks import validate_agent_name
from corral.project._compat import legacy_frontmatter, runtime_aliases
from corral.project._errors import did_you_mean, translate
from corral.project._models import (
    DEFAULT_AGENT_TIMEOUT,
    AgentConfig,
    HarnessConfig,
    ProjectConfig,
    ScaleConfig,
)
from corral.project._overlay import Layer, Merged, merge
from corral.project._project import Agent, resolved_values
from corral.project._skill import ParsedSkill, read_skill
from corral.project._toml import Loc, Locator, read_toml
from corral.project.presets import PRESETS

__all__ = ["NOTHING_TO_RUN", "ProjectContext", "load_agents"]

NOTHING_TO_RUN = (
    "agent has nothing to run: set [harness] command, or name models for the built-in LLM harness"
)


@dataclass
class ProjectContext:
    """What agents need from the project: fallbacks, defined names, and where to report."""

    root: Path
    config: ProjectConfig
    merged: Merged
    models: tuple[str, ...] | None  # None: config.toml could not be read, skip reference checks
    webhooks: tuple[str, ...] | None
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)

    def source_label(self, loc: Loc) -> str:
        layer = self.merged.origin.get(loc)
        return layer.label if layer else "default"


@dataclass
class _AgentFiles:
    """The agent's two layers, merged, with where to report problems by default."""

    config: Layer
    merged: Merged

    def where(self, loc: Loc) -> tuple[str, Locator]:
        layer = self.merged.layer_at(loc) or self.config
        if layer.label not in ("agent", "SKILL.md"):  # a fallback copied from the project
            layer = self.config
        return layer.shown, layer.locator


def load_agents(context: ProjectContext) -> dict[str, Agent]:
    agents: dict[str, Agent] = {}
    folder = context.root / "agents"
    if not folder.is_dir():
        return agents
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        if not any(os.path.lexists(path / name) for name in ("SKILL.md", "config.toml")):
            continue
        agent = _load_agent(context, path)
        if agent is not None:
            agents[agent.name] = agent
    return agents


def _load_agent(context: ProjectContext, path: Path) -> Agent | None:
    before = len(context.errors)
    bad_name = validate_agent_name(path.name)
    if bad_name:
        context.errors.append(
            ConfigIssue(f"agents/{path.name}", None, f"{bad_name}; rename the directory")
        )
    parsed = _read_skill(context, path)
    files = _read_config(context, path, parsed)
    if files is None:
        return None
    config = _validate(context, files)
    if config is None or parsed is None or len(context.errors) > before:
        return None
    return _build(context, path, parsed, config, files)


def _read_skill(context: ProjectContext, path: Path) -> ParsedSkill | None:
    shown = f"agents/{path.name}/SKILL.md"
    if not os.path.lexists(path / "SKILL.md"):
        message = (
            "missing: every agent needs a SKILL.md (its instructions) beside its "
            f"config.toml; create {shown}"
        )
        context.errors.append(ConfigIssue(shown, None, message))
        return None
    parsed = read_skill(path / "SKILL.md", shown, path.name)
    context.errors += parsed.errors
    context.warnings += parsed.warnings
    return parsed


def _read_config(
    context: ProjectContext, path: Path, parsed: ParsedSkill | None
) -> _AgentFiles | None:
    shown = f"agents/{path.name}/config.toml"
    config = Layer("agent", shown, {})
    if os.path.lexists(path / "config.toml"):  # a non-file there is an error
        data, locator, errors = read_toml(path / "config.toml", shown)
        context.errors += errors
        if data is None:
            return None
        config = Layer("agent", shown, data, locator)
    layers = [config]
    if parsed is not None and parsed.legacy:
        legacy = Layer("SKILL.md", f"agents/{path.name}/SKILL.md", parsed.legacy, parsed.locator)
        layers.insert(0, legacy)
        context.warnings += legacy_frontmatter(legacy, config.data, shown)[1]
    context.warnings += runtime_aliases(config)[1]
    return _AgentFiles(config, merge(layers))


def _validate(context: ProjectContext, files: _AgentFiles) -> AgentConfig | None:
    fallbacks = {
        "timeout": (context.config.local.timeout or DEFAULT_AGENT_TIMEOUT, ("local", "timeout")),
        "maxWorkQueueSize": (context.config.work_queue_size, ("workQueueSize",)),
    }
    for key, (value, project_loc) in fallbacks.items():
        if key not in files.merged.data:
            files.merged.data[key] = value
            if project_loc in context.merged.origin:
                files.merged.origin[(key,)] = context.merged.origin[project_loc]
    _project_defaults(context, files)
    data = files.merged.data
    issues = [*_model_refs(context, data, files), *_webhook_refs(context, data, files)]
    context.errors += issues
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        context.errors += translate(exc, AgentConfig, files.where)
        return None
    config, harness_issues = _resolve_harness(config, files)
    context.errors += harness_issues
    return None if issues or harness_issues else config


#: ``[harness]`` keys that together choose what runs: an agent that sets any of them
#: takes none of the project's (a project ``command`` beside an agent ``preset`` is no
#: conflict of the agent's making).
_HARNESS_CHOICE = ("type", "command", "preset")


def _project_defaults(context: ProjectContext, files: _AgentFiles) -> None:
    """Copy the project's ``[runtime]`` and ``[harness]`` settings into the agent's data
    where the agent does not set them, remembering the project layer as their source.

    ``[runtime]`` is taken key by key, as is ``[harness] env``; the harness's ``type``,
    ``command`` and ``preset`` come as one choice (see _HARNESS_CHOICE). Values come from
    the validated project config, so a bad project value is reported once, at its file.
    """
    defaults = {
        "runtime": context.config.runtime.model_dump(
            by_alias=True, include=context.config.runtime.model_fields_set, mode="json"
        ),
        "harness": context.config.harness.model_dump(
            by_alias=True, include=context.config.harness.model_fields_set, mode="json"
        ),
    }
    data = files.merged.data
    for table, values in defaults.items():
        own = data.get(table)
        if own is not None and not isinstance(own, dict):
            continue  # the agent's own type error is reported
        own = {} if own is None else own
        if table == "harness" and (
            any(key in own for key in _HARNESS_CHOICE)
            or _preset_problem(context.config.harness) is not None  # reported at the project
        ):
            values = {k: v for k, v in values.items() if k not in _HARNESS_CHOICE}
        for key, value in values.items():
            _default_into(context, files, (table, key), own, value)
        if own:
            data[table] = own


def _default_into(
    context: ProjectContext,
    files: _AgentFiles,
    loc: tuple[str, str],
    own: dict[str, Any],
    value: Any,
) -> None:
    key = loc[1]
    if isinstance(value, dict) and isinstance(own.get(key), dict):  # [harness] env
        for name, inner in value.items():
            if name not in own[key]:
                own[key][name] = inner
                _origin(context, files, (*loc, name))
        return
    if key not in own:
        own[key] = value
        _origin(context, files, loc)
        if isinstance(value, dict):
            for name in value:
                _origin(context, files, (*loc, name))


def _origin(context: ProjectContext, files: _AgentFiles, loc: Loc) -> None:
    layer = context.merged.layer_at(loc)
    if layer is not None:
        files.merged.origin[loc] = layer


def _undefined(field: str, name: str, table: str, defined: tuple[str, ...]) -> str:
    message = f"'{field}' names \"{name}\", which is not defined in config.toml [{table}.*]"
    if not defined:
        return f"{message}; none are defined: add a [{table}.{name}] table to config.toml"
    message += f"; defined: {', '.join(sorted(defined))}"
    guess = did_you_mean(name, defined)
    return message + (f'; did you mean "{guess}"?' if guess else "")


def _model_refs(
    context: ProjectContext, data: dict[str, Any], files: _AgentFiles
) -> list[ConfigIssue]:
    """Checked on the raw values, so they are reported even beside type errors."""
    names = data.get("models")
    if context.models is None or not isinstance(names, list):
        return []
    issues = []
    for index, name in enumerate(names):
        if isinstance(name, str) and name not in context.models:
            shown, locator = files.where(("models", index))
            message = _undefined("models", name, "models", context.models)
            line = locator.line_for(("models",))
            issues.append(ConfigIssue(shown, f"models[{index}]", message, line))
    return issues


def _webhook_refs(
    context: ProjectContext, data: dict[str, Any], files: _AgentFiles
) -> list[ConfigIssue]:
    triggers = data.get("webhooks")
    if context.webhooks is None or not isinstance(triggers, list):
        return []
    issues = []
    for index, trigger in enumerate(triggers):
        source = trigger.get("source") if isinstance(trigger, dict) else None
        if isinstance(source, str) and source not in context.webhooks:
            loc: Loc = ("webhooks", index, "source")
            shown, locator = files.where(loc)
            field = f"webhooks[{index}].source"
            message = _undefined(field, source, "webhooks", context.webhooks)
            issues.append(ConfigIssue(shown, field, message, locator.line_for(loc)))
    return issues


def _preset_problem(harness: HarnessConfig) -> tuple[str, str] | None:
    if harness.preset is None:
        return None
    if harness.preset not in PRESETS:
        known = ", ".join(sorted(PRESETS))
        guess = did_you_mean(harness.preset, PRESETS)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        return (
            "harness.preset",
            f"unknown preset {harness.preset!r}{hint}; the presets are {known} "
            "(or write the command line in 'command')",
        )
    if harness.command is not None:
        return (
            "harness.preset",
            "set either 'preset' or 'command' in [harness], not both: "
            "the preset is a ready-made command",
        )
    if harness.type == "builtin":
        return ("harness.preset", 'a preset is a command: it needs type = "command" (or no type)')
    return None


def _resolve_harness(
    config: AgentConfig, files: _AgentFiles
) -> tuple[AgentConfig, list[ConfigIssue]]:
    harness = config.harness
    problem = _preset_problem(harness)
    if problem is None and harness.preset is not None:
        harness = harness.model_copy(update={"command": PRESETS[harness.preset].command})
    kind = harness.type
    if kind is None:
        kind = "command" if harness.command is not None else "builtin" if config.models else None
    if problem is not None:
        pass  # reported below
    elif kind is None:
        problem = ("harness", NOTHING_TO_RUN)
    elif kind == "command" and harness.command is None:
        problem = (
            "harness.command",
            "'harness.command' is required when type = \"command\": "
            "give a shell command, or a list of the program and its arguments",
        )
    elif kind == "builtin" and not config.models:
        problem = (
            "models",
            "the built-in harness needs at least one model: "
            "list named models in 'models', e.g. models = [\"sonnet\"]",
        )
    if problem:
        shown, locator = files.where(tuple(problem[0].split(".")))
        line = locator.line_for(tuple(problem[0].split(".")))
        return config, [ConfigIssue(shown, problem[0], problem[1], line)]
    harness = harness.model_copy(update={"type": kind})
    return config.model_copy(update={"harness": harness}), []


def _build(
    context: ProjectContext,
    path: Path,
    parsed: ParsedSkill,
    config: AgentConfig,
    files: _AgentFiles,
) -> Agent:
    def source_of(loc: Loc) -> str:
        layer = files.merged.origin.get(loc)
        return layer.label if layer else "default"

    # A [scale] pool's max is its scale; the scheduler sizes the pool below it
    # (corral.scheduler.pools, docs/scaling.md).
    if isinstance(config.scale, ScaleConfig):
        scale = config.scale.max
    else:
        scale = config.scale if config.scale is not None else context.config.default_agent_scale
    resolved = []
    for value in resolved_values(config, source_of, prefix=f"agents.{path.name}."):
        if value.key == f"agents.{path.name}.scale" and config.scale is None:
            value = replace(value, value=scale, source=context.source_label(("defaultAgentScale",)))
        resolved.append(value)
    return Agent(
        name=path.name,
        dir=path,
        skill_path=path / "SKILL.md",
        skill=parsed.skill,
        config=config,
        effective_scale=scale,
        resolved=tuple(resolved),
    )
