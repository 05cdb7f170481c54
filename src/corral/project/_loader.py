"""``load_project``: read every file, collect every problem, raise them together."""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from corral.errors import ConfigError, ConfigIssue
from corral.project._agents import ProjectContext, load_agents
from corral.project._checks import resolve_state_url, state_url
from corral.project._compat import project_aliases, runtime_aliases
from corral.project._errors import did_you_mean, translate
from corral.project._models import ProjectConfig, StateConfig
from corral.project._overlay import Layer, Merged, ProjectLayers, merge, read_project_layers
from corral.project._project import Project, ResolvedValue, resolved_values
from corral.project._toml import Loc, Locator
from corral.project.presets import PRESETS

__all__ = ["load_minimal", "load_project"]

STATE_URL_VAR = "CORRAL_STATE_URL"


def load_project(root: Path | str, env: str | None = None) -> Project:
    """Read and validate the project at ``root``; raise :class:`ConfigError` with every issue.

    ``env`` names the environment overlay; without it ``CORRAL_ENV``, then the
    ``environment`` key of ``.env.toml`` choose one.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        message = "the project directory does not exist (or is not a directory)"
        raise ConfigError([ConfigIssue(str(root), None, message)])
    found = read_project_layers(root, env)
    errors, warnings = list(found.errors), []
    for layer in found.layers:
        more_errors, more_warnings = project_aliases(layer)
        errors += more_errors
        warnings += more_warnings + runtime_aliases(layer)[1]
    merged = merge(found.layers)
    config = _validate_project(merged, errors)
    if config is not None:
        errors += _preset_issues(config, merged)
    url, url_source = _state_url(root, config, errors)
    context = _context(root, config or ProjectConfig(), merged, found)
    agents = load_agents(context)
    errors += context.errors
    if errors or config is None:
        raise ConfigError(errors)
    return Project(
        root=root,
        config=config,
        state_url=url,
        agents=MappingProxyType(agents),
        warnings=tuple(sorted(warnings + context.warnings, key=_position)),
        environment=found.environment,
        resolved=_explain_project(config, merged, url, url_source),
    )


def load_minimal(root: Path | str, env: str | None = None) -> Project:
    """The project as far as it loads, for commands that need only its root and its store
    (`corral stop`, `kill`, `logs`) while an edit does not load: the project settings if
    they validate (else the defaults, with a ``[state] url`` that is itself valid), and the
    agents that load. Never raises :class:`ConfigError` for the files' content."""
    root = Path(root).expanduser().resolve()
    found = read_project_layers(root, env)
    merged = merge(found.layers)
    config = _validate_project(merged, []) or ProjectConfig()
    written = _written_state_url(merged)
    if written is not None and "url" not in config.state.model_fields_set:
        config = config.model_copy(update={"state": StateConfig(url=written)})
    url, _ = _state_url(root, config, [])
    context = _context(root, config, merged, found)
    agents = load_agents(context)
    return Project(
        root=root,
        config=config,
        state_url=url,
        agents=MappingProxyType(agents),
        environment=found.environment,
    )


def _written_state_url(merged: Merged) -> str | None:
    """``[state] url`` as written, if it is a valid store URL by itself."""
    table = merged.data.get("state")
    value = table.get("url") if isinstance(table, dict) else None
    if not isinstance(value, str):
        return None
    try:
        state_url(value)
    except PydanticCustomError:
        return None
    return value


def _validate_project(merged: Merged, errors: list[ConfigIssue]) -> ProjectConfig | None:
    default = Layer("project", "config.toml", {}, Locator())

    def where(loc: Loc) -> tuple[str, Locator]:
        layer = merged.layer_at(loc) or default
        return layer.shown, layer.locator

    try:
        return ProjectConfig.model_validate(merged.data)
    except ValidationError as exc:
        errors += translate(exc, ProjectConfig, where, {".env.toml": ["environment"]})
        return None


def _preset_issues(config: ProjectConfig, merged: Merged) -> list[ConfigIssue]:
    """The project's ``[harness] preset`` must name a preset, and not beside ``command``."""
    harness = config.harness
    if harness.preset is None:
        return []
    loc = ("harness", "preset")
    layer = merged.layer_at(loc)
    shown, line = (layer.shown, layer.locator.line_for(loc)) if layer else ("config.toml", None)
    if harness.preset not in PRESETS:
        guess = did_you_mean(harness.preset, PRESETS)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        message = (
            f"unknown preset {harness.preset!r}{hint}; the presets are "
            f"{', '.join(sorted(PRESETS))} (or write the command line in 'command')"
        )
    elif harness.command is not None:
        message = "set either 'preset' or 'command' in [harness], not both"
    elif harness.type == "builtin":
        message = 'a preset is a command: it needs type = "command" (or no type)'
    else:
        return []
    return [ConfigIssue(shown, "harness.preset", message, line)]


def _state_url(
    root: Path, config: ProjectConfig | None, errors: list[ConfigIssue]
) -> tuple[str, str]:
    from_env = os.environ.get(STATE_URL_VAR)
    if from_env:
        try:
            state_url(from_env)
        except PydanticCustomError as exc:
            errors.append(
                ConfigIssue(f"${STATE_URL_VAR}", None, f"'{STATE_URL_VAR}' {exc.message()}")
            )
        return resolve_state_url(from_env, root), "env"
    written = config.state.url if config else "sqlite:///.corral/state.db"
    return resolve_state_url(written, root), ""


def _names(merged: Merged, key: str, ok: bool) -> tuple[str, ...] | None:
    if not ok:
        return None
    table = merged.data.get(key)
    return tuple(table) if isinstance(table, dict) else ()


def _context(
    root: Path, config: ProjectConfig, merged: Merged, found: ProjectLayers
) -> ProjectContext:
    return ProjectContext(
        root=root,
        config=config,
        merged=merged,
        models=_names(merged, "models", found.complete),
        webhooks=_names(merged, "webhooks", found.complete),
    )


def _explain_project(
    config: ProjectConfig, merged: Merged, url: str, url_source: str
) -> tuple[ResolvedValue, ...]:
    def source_of(loc: Loc) -> str:
        if loc == ("state", "url") and url_source:
            return url_source
        layer = merged.origin.get(loc)
        return layer.label if layer else "default"

    values = []
    for value in resolved_values(config, source_of):
        if value.key == "state.url":
            value = ResolvedValue(value.key, url, value.source)
        values.append(value)
    return tuple(values)


def _position(issue: ConfigIssue) -> tuple[str, int, str]:
    """The order ConfigError uses: file, then line, then field."""
    return issue.file, issue.line or 0, issue.field or ""
