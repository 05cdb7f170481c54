"""Old spellings that still work, each with a warning saying what to write instead.

Every function rewrites a layer's raw data in place before the merge, and
returns ``(errors, warnings)``.
"""

from __future__ import annotations

from typing import Any

from corral.errors import ConfigIssue
from corral.project._overlay import Layer

__all__ = ["legacy_frontmatter", "project_aliases", "runtime_aliases"]

Found = tuple[list[ConfigIssue], list[ConfigIssue]]

_PROJECT_ALIASES = {"maxTriggerDepth": "maxCallDepth", "webhookQueueSize": "workQueueSize"}
_RUNTIME_TYPES = {"container": "sandbox", "host-user": "host"}
_RUNTIME_IGNORED = ("run_as", "groups")


def project_aliases(layer: Layer) -> Found:
    errors: list[ConfigIssue] = []
    warnings: list[ConfigIssue] = []
    for old, new in _PROJECT_ALIASES.items():
        if old not in layer.data:
            continue
        line = layer.locator.line_for((old,))
        if new in layer.data:
            message = f"both '{new}' and its old name '{old}' are set: remove '{old}'"
            errors.append(ConfigIssue(layer.shown, old, message, line))
            del layer.data[old]
            continue
        layer.data[new] = layer.data.pop(old)
        layer.locator.alias((new,), (old,))
        message = f"'{old}' is deprecated: rename it to '{new}' (the value is used)"
        warnings.append(ConfigIssue(layer.shown, old, message, line))
    return errors, warnings


def runtime_aliases(layer: Layer) -> Found:
    runtime = layer.data.get("runtime")
    warnings: list[ConfigIssue] = []
    if not isinstance(runtime, dict):
        return [], warnings
    kind = runtime.get("type")
    if isinstance(kind, str) and kind in _RUNTIME_TYPES:
        runtime["type"] = _RUNTIME_TYPES[kind]
        message = (
            f'runtime type "{kind}" is an old name: write type = "{_RUNTIME_TYPES[kind]}"'
            " (that is what is used)"
        )
        line = layer.locator.line_for(("runtime", "type"))
        warnings.append(ConfigIssue(layer.shown, "runtime.type", message, line))
    for key in _RUNTIME_IGNORED:
        if key in runtime:
            del runtime[key]
            line = layer.locator.line_for(("runtime", key))
            message = f"'runtime.{key}' is not used by corral and is ignored: remove it"
            warnings.append(ConfigIssue(layer.shown, f"runtime.{key}", message, line))
    return [], warnings


def legacy_frontmatter(legacy: Layer, config: dict[str, Any], config_file: str) -> Found:
    """Warn for each setting in SKILL.md frontmatter; ``config.toml`` wins."""
    warnings = []
    for key in legacy.data:
        line = legacy.locator.line_for((key,))
        if key in config:
            message = (
                f"'{key}' in the frontmatter is ignored because {config_file} also sets it: "
                "remove it from SKILL.md"
            )
        else:
            message = f"'{key}' in the frontmatter is deprecated: move it to {config_file}"
        warnings.append(ConfigIssue(legacy.shown, key, message, line))
    return [], warnings
