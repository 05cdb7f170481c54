"""Writing small projects for tests."""

from __future__ import annotations

from pathlib import Path

SKILL = "---\nname: {name}\ndescription: Test agent\n---\n\nDo the work.\n"
MODELS = """\
[models.sonnet]
provider = "anthropic"
model = "claude-sonnet-4-20250514"
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def agent(
    name: str, config: str = 'models = ["sonnet"]\n', skill: str | None = None
) -> dict[str, str]:
    return {
        f"agents/{name}/config.toml": config,
        f"agents/{name}/SKILL.md": SKILL.format(name=name) if skill is None else skill,
    }
