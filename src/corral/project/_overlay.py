"""Layers of settings and their deep merge, remembering where each value came from.

The project is ``config.toml`` < ``.env.toml`` < the environment file
(``$CORRAL_HOME/environments/NAME.toml``); an agent is its legacy SKILL.md
frontmatter < its ``config.toml``. Tables merge key by key; anything else
(numbers, strings, lists) is replaced whole by the later layer.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import ConfigIssue
from corral.locate import corral_home
from corral.project._toml import Loc, Locator, read_toml

__all__ = ["Layer", "Merged", "ProjectLayers", "corral_home", "merge", "read_project_layers"]

_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Layer:
    """One file's settings. ``label`` is the source named by ``explain()``."""

    label: str
    shown: str
    data: dict[str, Any]
    locator: Locator = field(default_factory=Locator)


@dataclass
class Merged:
    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[Loc, Layer] = field(default_factory=dict)

    def layer_at(self, loc: Loc) -> Layer | None:
        """The layer that wrote ``loc`` or its nearest written ancestor."""
        key = tuple(loc)
        while key:
            if key in self.origin:
                return self.origin[key]
            key = key[:-1]
        return None


def merge(layers: list[Layer]) -> Merged:
    merged = Merged()
    for layer in layers:
        _merge_into(merged, merged.data, layer.data, (), layer)
    return merged


def _merge_into(
    merged: Merged, into: dict[str, Any], new: dict[str, Any], at: Loc, layer: Layer
) -> None:
    for key, value in new.items():
        loc = (*at, key)
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge_into(merged, into[key], value, loc, layer)
            continue
        into[key] = copy.deepcopy(value)
        _claim(merged, value, loc, layer)


def _claim(merged: Merged, value: Any, loc: Loc, layer: Layer) -> None:
    merged.origin[loc] = layer
    if isinstance(value, dict):
        for key, inner in value.items():
            _claim(merged, inner, (*loc, key), layer)


@dataclass
class ProjectLayers:
    layers: list[Layer] = field(default_factory=list)
    environment: str | None = None
    errors: list[ConfigIssue] = field(default_factory=list)
    complete: bool = True  # False when a file could not be parsed


def read_project_layers(root: Path, env: str | None) -> ProjectLayers:
    found = ProjectLayers()
    _add_file(found, root / "config.toml", "project", "config.toml")
    env_file = _add_file(found, root / ".env.toml", ".env.toml", ".env.toml")
    chosen = _env_from_file(found, env_file)
    name, how = _choose(env, chosen)
    if name is None:
        return found
    found.environment = name
    if not _ENV_NAME.match(name):
        message = (
            f'environment name "{name}" (from {how}) is not valid: use letters, digits, '
            "'.', '_' and '-'"
        )
        found.errors.append(ConfigIssue(how, None, message))
        return found
    path = corral_home() / "environments" / f"{name}.toml"
    if not os.path.lexists(path):
        found.errors.append(ConfigIssue(str(path), None, _missing_env(name, how, path)))
        return found
    _add_file(found, path, f"environment:{name}", str(path))
    return found


def _add_file(found: ProjectLayers, path: Path, label: str, shown: str) -> Layer | None:
    # Only an absent file means "no settings": a directory, FIFO or link in its place is
    # an error (read_toml reports it), never silently no settings.
    if not os.path.lexists(path):
        return None
    data, locator, errors = read_toml(path, shown)
    found.errors += errors
    if data is None:
        found.complete = False
        return None
    layer = Layer(label, shown, data, locator)
    found.layers.append(layer)
    return layer


def _env_from_file(found: ProjectLayers, layer: Layer | None) -> str | None:
    if layer is None or "environment" not in layer.data:
        return None
    value = layer.data.pop("environment")
    if isinstance(value, str) and value:
        return value
    line = layer.locator.line_for(("environment",))
    message = f"'environment' must be the name of an environment file, got {value!r}"
    found.errors.append(ConfigIssue(layer.shown, "environment", message, line))
    return None


def _choose(explicit: str | None, from_file: str | None) -> tuple[str | None, str]:
    if explicit:
        return explicit, "-E/--env"
    if os.environ.get("CORRAL_ENV"):
        return os.environ["CORRAL_ENV"], "CORRAL_ENV"
    return from_file, ".env.toml"


def _missing_env(name: str, how: str, path: Path) -> str:
    return (
        f'environment "{name}" (selected by {how}) does not exist: there is no file {path}. '
        f"Create it with the settings that differ in that environment "
        f"(mkdir -p {path.parent} && touch {path}), or select another environment"
    )
