"""Files the loader must not trust: huge, non-regular, or unrepresentable values are config
errors naming the file (never a hang, a crash or "no settings")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.project import load_project
from tests.project.helpers import agent, write

MODELS = '[models.sonnet]\nprovider = "anthropic"\nmodel = "claude-sonnet-4-5"\n'


def _project(tmp_path: Path) -> Path:
    return write(tmp_path / "p", {"config.toml": MODELS, **agent("a")})


def _error(root: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    return caught.value.render()


def test_an_integer_over_pythons_digit_limit_is_a_config_error(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (root / "agents/a/config.toml").write_text('models = ["sonnet"]\nscale = ' + "9" * 5001 + "\n")
    text = _error(root)
    assert "agents/a/config.toml:2" in text and "4300 digits" in text, text


def test_a_huge_sparse_skill_is_refused_unread(tmp_path: Path) -> None:
    root = _project(tmp_path)
    with (root / "agents/a/SKILL.md").open("r+b") as handle:
        handle.truncate(100 * 1024**3)  # 100 GB, sparse: reading it would exhaust memory
    text = _error(root)
    assert "agents/a/SKILL.md" in text and "larger than 1048576 bytes" in text, text


@pytest.mark.parametrize("where", ["config.toml", "agents/a/config.toml", "agents/a/SKILL.md"])
def test_a_fifo_is_an_error_not_a_hang(tmp_path: Path, where: str) -> None:
    root = _project(tmp_path)
    (root / where).unlink()
    os.mkfifo(root / where)  # nobody writes it: a blocking open would never return
    text = _error(root)
    assert where in text and "not a regular file" in text, text


@pytest.mark.parametrize("where", ["config.toml", "agents/a/config.toml"])
def test_a_directory_named_config_toml_is_an_error_not_no_settings(
    tmp_path: Path, where: str
) -> None:
    root = _project(tmp_path)
    (root / where).unlink()
    (root / where).mkdir()
    text = _error(root)
    assert where in text and "not a regular file" in text, text


def test_a_symlinked_config_is_followed_but_a_link_to_a_fifo_is_refused(tmp_path: Path) -> None:
    root = _project(tmp_path)
    (tmp_path / "elsewhere.toml").write_text((root / "config.toml").read_text())
    (root / "config.toml").unlink()
    (root / "config.toml").symlink_to(tmp_path / "elsewhere.toml")
    load_project(root)  # a link to a plain file is read like the file
    os.mkfifo(tmp_path / "pipe")
    (root / "config.toml").unlink()
    (root / "config.toml").symlink_to(tmp_path / "pipe")
    text = _error(root)
    assert "config.toml" in text and "not a regular file" in text, text
