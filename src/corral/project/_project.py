"""The loaded project: frozen records, and ``explain()`` of every setting's source."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from corral.errors import ConfigIssue
from corral.project._models import AgentConfig, ProjectConfig
from corral.project._skill import Skill
from corral.project._toml import Loc

__all__ = ["Agent", "Project", "ResolvedValue", "resolved_values"]


@dataclass(frozen=True)
class ResolvedValue:
    """One setting as corral will use it, and where it came from.

    ``source`` is one of ``default``, ``project`` (config.toml), ``.env.toml``,
    ``environment:NAME``, ``env`` (an environment variable), ``agent``
    (agents/NAME/config.toml) or ``SKILL.md``.
    """

    key: str
    value: object
    source: str


@dataclass(frozen=True)
class Agent:
    name: str
    dir: Path
    skill_path: Path
    skill: Skill
    config: AgentConfig
    effective_scale: int
    resolved: tuple[ResolvedValue, ...] = field(default=(), repr=False, compare=False)

    @property
    def enabled(self) -> bool:
        return self.effective_scale > 0


@dataclass(frozen=True)
class Project:
    root: Path
    config: ProjectConfig
    state_url: str
    agents: Mapping[str, Agent]
    warnings: tuple[ConfigIssue, ...] = ()
    environment: str | None = None
    resolved: tuple[ResolvedValue, ...] = field(default=(), repr=False, compare=False)
    #: The pushed bundle this configuration was loaded from (``sha256:…``; `corral push`),
    #: or None when it was read from the project directory itself.
    bundle: str | None = None
    #: Where the project's files were read from, when not ``root``: a bundle unpacked
    #: under the state directory. ``root`` stays the project directory (its ``.corral/``
    #: state, logs and run directories).
    files: Path | None = None

    @property
    def shared_dir(self) -> Path:
        return (self.files or self.root) / "shared"

    def explain(self) -> list[ResolvedValue]:
        """Every resolved setting, project first, then each agent's, with its source."""
        values = list(self.resolved)
        for agent in self.agents.values():
            values += agent.resolved
        return values


def resolved_values(
    model: BaseModel, source_of: Callable[[Loc], str], at: Loc = (), prefix: str = ""
) -> Iterator[ResolvedValue]:
    """Walk a validated model; ``source_of`` names where each written value came from."""
    for name, info in type(model).model_fields.items():
        loc = (*at, info.alias or name)
        value = getattr(model, name)
        key = prefix + ".".join(str(part) for part in loc)
        if isinstance(value, BaseModel):
            yield from resolved_values(value, source_of, loc, prefix)
        elif isinstance(value, Mapping) and value and _all_models(value.values()):
            for entry, inner in value.items():
                yield from resolved_values(inner, source_of, (*loc, entry), prefix)
        elif isinstance(value, tuple) and value and _all_models(value):
            dumped = tuple(v.model_dump(by_alias=True, exclude_defaults=True) for v in value)
            yield ResolvedValue(key, dumped, source_of(loc))
        else:
            yield ResolvedValue(key, value, source_of(loc))


def _all_models(values: object) -> bool:
    return all(isinstance(v, BaseModel) for v in values)  # type: ignore[attr-defined]
