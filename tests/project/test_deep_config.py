"""A config nested absurdly deep is a config error naming the file and the limit, never a
RecursionError: every file corral reads (config.toml, .env.toml, an environment file, an
agent's config.toml, SKILL.md frontmatter), nested by arrays, inline tables, table
headers and YAML, both deeper than the parsers can recurse and just past the limit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import load_project
from corral.project._toml import MAX_CONFIG_DEPTH, MAX_FILE_BYTES

from .helpers import MODELS, agent, write

DEEP = 2000


def toml_arrays(depth: int) -> str:
    return "x = " + "[" * depth + "1" + "]" * depth + "\n"


def toml_inline(depth: int) -> str:
    return "x = " + "{a = " * depth + "1" + "}" * depth + "\n"


def toml_headers(depth: int) -> str:
    return "[" + ".".join(["a"] * depth) + "]\nx = 1\n"


def yaml_flow(depth: int) -> str:
    return "---\nname: deep\ndescription: " + "[" * depth + "1" + "]" * depth + "\n---\nWork.\n"


def yaml_block(depth: int) -> str:
    lines = [f"{'  ' * i}a{i}:" for i in range(depth)]
    return "---\nname: deep\nhooks:\n" + "\n".join(f"  {line}" for line in lines) + " 1\n---\n"


TOML_SHAPES = [toml_arrays, toml_inline, toml_headers]
TOML_FILES = ["config.toml", ".env.toml", "environment", "agents/deep/config.toml"]


def project_with(tmp_path: Path, where: str, text: str) -> Path:
    root = tmp_path / "project"
    files = {"config.toml": MODELS, **agent("deep")}
    if where == "environment":
        files[".env.toml"] = 'environment = "staging"\n'
        home = tmp_path / "home"
        write(home, {"environments/staging.toml": text})
        os.environ["CORRAL_HOME"] = str(home)
    elif where == "config.toml":
        files["config.toml"] = MODELS + text
    elif where == "agents/deep/config.toml":
        files[where] = 'models = ["sonnet"]\n' + text
    else:
        files[where] = text
    return write(root, files)


@pytest.fixture(autouse=True)
def _home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "no-home"))
    monkeypatch.delenv("CORRAL_ENV", raising=False)


def assert_too_deep(root: Path, shown: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    issues = [i for i in caught.value.issues if "nested" in i.message]
    assert issues, caught.value.render()
    assert shown in issues[0].file, issues[0]
    assert str(MAX_CONFIG_DEPTH) in issues[0].message, issues[0].message


@pytest.mark.parametrize("shape", TOML_SHAPES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("where", TOML_FILES)
@pytest.mark.parametrize("depth", [DEEP, MAX_CONFIG_DEPTH + 1])
def test_a_deep_toml_file_is_a_config_error(
    tmp_path: Path, where: str, shape: object, depth: int
) -> None:
    assert callable(shape)
    root = project_with(tmp_path, where, shape(depth))
    shown = "staging.toml" if where == "environment" else where
    assert_too_deep(root, shown)


@pytest.mark.parametrize("shape", [yaml_flow, yaml_block], ids=lambda f: f.__name__)
@pytest.mark.parametrize("depth", [DEEP, MAX_CONFIG_DEPTH + 1])
def test_deep_skill_frontmatter_is_a_config_error(
    tmp_path: Path, shape: object, depth: int
) -> None:
    assert callable(shape)
    root = project_with(tmp_path, "agents/deep/SKILL.md", shape(depth))
    if (root / "agents/deep/SKILL.md").stat().st_size > MAX_FILE_BYTES:  # refused unread
        with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
            load_project(root)
        return
    assert_too_deep(root, "agents/deep/SKILL.md")


def test_nesting_up_to_the_limit_is_read(tmp_path: Path) -> None:
    """The limit is far above what a config needs: a value nested that deep is read."""
    depth = MAX_CONFIG_DEPTH - 3  # the key's tables count too
    text = MODELS + "[agents_meta]\n" + toml_arrays(depth)
    root = write(tmp_path / "project", {"config.toml": text, **agent("deep")})
    with pytest.raises(ConfigError) as caught:  # an unknown key, but read and reported as such
        load_project(root)
    assert not [i for i in caught.value.issues if "nested" in i.message]
    assert "agents_meta" in caught.value.render()


def test_the_cli_says_so_without_a_traceback(tmp_path: Path) -> None:
    root = write(tmp_path / "project", {"config.toml": MODELS + toml_inline(DEEP), **agent("a")})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["CORRAL_HOME"] = str(tmp_path / "home")
    result = subprocess.run(
        [sys.executable, "-m", "corral", "config"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr
    assert "config.toml" in result.stderr and f"{MAX_CONFIG_DEPTH} levels" in result.stderr


def test_shallow_frontmatter_is_read(tmp_path: Path) -> None:
    nested = "---\nname: a\ndescription: d\nhooks:\n  pre: [[[x]]]\n---\nWork.\n"
    root = write(tmp_path / "project", {"config.toml": MODELS, **agent("a", skill=nested)})
    with pytest.raises(ConfigError) as caught:  # hooks is not a list of strings: read, refused
        load_project(root)
    assert not [i for i in caught.value.issues if "nested" in i.message]
