"""Reading ``SKILL.md``: YAML frontmatter between ``---`` lines, then the body.

Frontmatter is portable between tools, so unknown keys only warn. Settings
that used to live there (``schedule``, ``models`` …) are handed back so the
loader can use them under ``config.toml``'s values, with a warning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corral.errors import ConfigIssue
from corral.project._checks import describe_value
from corral.project._errors import did_you_mean
from corral.project._toml import Locator, nested_too_deep, read_text_limited, too_deep_issue

__all__ = ["LEGACY_FIELDS", "ParsedSkill", "Skill", "read_skill"]

PORTABLE_FIELDS = ("name", "description", "license", "compatibility")
# Defined by the portable skill format; accepted and not used by corral.
_OTHER_PORTABLE = ("metadata", "allowed-tools")
LEGACY_FIELDS = (
    "models", "credentials", "schedule", "webhooks", "hooks", "params", "scale", "timeout",
)  # fmt: skip
_TOP_KEY = re.compile(r"^([^\s#:][^:]*?)\s*:")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: ``name: off`` is the string "off", not false."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(frozen=True)
class Skill:
    """The portable part of an agent: who it is, and its instructions (``body``)."""

    name: str
    description: str | None = None
    license: str | None = None
    compatibility: str | None = None
    body: str = ""


@dataclass
class ParsedSkill:
    skill: Skill
    legacy: dict[str, Any] = field(default_factory=dict)
    locator: Locator = field(default_factory=Locator)
    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)


def read_skill(path: Path, shown: str, agent: str) -> ParsedSkill:
    try:
        text = read_text_limited(path)
    except (OSError, UnicodeDecodeError) as exc:
        issue = ConfigIssue(shown, None, f"cannot read the file: {exc}")
        return ParsedSkill(Skill(agent), errors=[issue])
    lines = text.lstrip("\ufeff").splitlines(keepends=True)
    if not lines or lines[0].rstrip() != "---":
        return ParsedSkill(Skill(agent, body=text))
    end = next((i for i, line in enumerate(lines[1:], 1) if line.rstrip() == "---"), None)
    if end is None:
        message = (
            "the frontmatter opened by '---' on line 1 is never closed: "
            "add a line with only '---' after the last frontmatter field"
        )
        return ParsedSkill(Skill(agent), errors=[ConfigIssue(shown, None, message, 1)])
    front = "".join(lines[1:end])
    body = "".join(lines[end + 1 :])
    return _parse_front(front, body, shown, agent)


def _parse_front(front: str, body: str, shown: str, agent: str) -> ParsedSkill:
    try:
        data = yaml.load(front, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        return ParsedSkill(Skill(agent), errors=[_yaml_issue(exc, shown)])
    except RecursionError:  # the composer recurses once per nested mapping or list
        return ParsedSkill(Skill(agent), errors=[too_deep_issue(shown)])
    deep = nested_too_deep(data, shown)
    if deep is not None:
        return ParsedSkill(Skill(agent), errors=[deep])
    if data is None:
        data = {}
    if not isinstance(data, dict):
        message = f"the frontmatter must be a mapping of 'key: value' lines, got {_kind(data)}"
        return ParsedSkill(Skill(agent), errors=[ConfigIssue(shown, None, message, 2)])
    locator = Locator(_key_lines(front))
    parsed = ParsedSkill(Skill(agent), locator=locator)
    values: dict[str, str | None] = {}
    for key, value in data.items():
        _take(parsed, values, str(key), value, shown, agent)
    name = values.pop("name", None) or agent
    if name != agent:
        message = f'name "{name}" differs from the directory name; the agent is called "{agent}"'
        parsed.warnings.append(ConfigIssue(shown, "name", message, locator.line_for(("name",))))
    parsed.skill = Skill(name=name, body=body, **values)
    return parsed


def _take(
    parsed: ParsedSkill, values: dict[str, str | None], key: str, value: Any, shown: str, agent: str
) -> None:
    line = parsed.locator.line_for((key,))
    if key in PORTABLE_FIELDS:
        if value is None or (isinstance(value, str | int | float) and not isinstance(value, bool)):
            values[key] = None if value is None else str(value)
        else:
            message = f"'{key}' must be a string, got {describe_value(value)}"
            parsed.errors.append(ConfigIssue(shown, key, message, line))
    elif key in LEGACY_FIELDS:
        parsed.legacy[key] = value
    elif key not in _OTHER_PORTABLE:
        guess = did_you_mean(key, [*PORTABLE_FIELDS, *LEGACY_FIELDS])
        hint = (
            f": did you mean '{guess}'?" if guess else f"; known keys: {', '.join(PORTABLE_FIELDS)}"
        )
        message = f"unknown frontmatter key '{key}' is ignored{hint}"
        parsed.warnings.append(ConfigIssue(shown, key, message, line))


def _key_lines(front: str) -> dict[tuple[str | int, ...], int]:
    found: dict[tuple[str | int, ...], int] = {}
    for number, line in enumerate(front.splitlines(), start=2):
        match = _TOP_KEY.match(line)
        if match:
            found.setdefault((match.group(1).strip("'\""),), number)
    return found


def _yaml_issue(exc: yaml.YAMLError, shown: str) -> ConfigIssue:
    line = None
    reason = str(exc)
    if isinstance(exc, yaml.MarkedYAMLError):
        reason = exc.problem or exc.context or "syntax error"
        if exc.problem_mark is not None:
            line = exc.problem_mark.line + 2  # 0-based, after the opening '---'
            reason = f"{reason} (column {exc.problem_mark.column + 1})"
        if exc.problem == "mapping values are not allowed here":
            reason += "; put values that contain ': ' in quotes"
    return ConfigIssue(shown, None, f"the frontmatter is not valid YAML: {reason}", line)


def _kind(value: object) -> str:
    return "a list" if isinstance(value, list) else describe_value(value)
