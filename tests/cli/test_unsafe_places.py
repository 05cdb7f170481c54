"""Project discovery and the project's state directory refuse places another user could
have planted things in; a bad edit does not stop `corral stop`/`kill`/`logs`; names from
the file system cannot forge lines of an error report."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Corral

NOBODY = 65534
SKILL = "---\nname: {name}\n---\n# {name}\n"
CONFIG = '[harness]\ncommand = "echo {name}"\n'


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory outside /tmp (whose sticky bit would stop discovery by itself)."""
    path = Path(tempfile.mkdtemp(prefix="corral-f2-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _agent(root: Path, name: str) -> None:
    folder = root / "agents" / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(SKILL.format(name=name))
    (folder / "config.toml").write_text(CONFIG.format(name=name))


def test_discovery_stops_at_a_sticky_world_writable_directory(
    corral: Corral, outside: Path
) -> None:
    world = outside / "world"
    world.mkdir()
    world.chmod(0o1777)
    _agent(world, "hello")  # planted by anyone: /var/tmp/world/agents/hello
    checkout = world / "root-work" / "checkout"
    checkout.mkdir(parents=True)
    result = corral("run", "hello", cwd=checkout)
    assert result.returncode == 2, result
    assert "no corral project here" in result.stderr
    assert "world-writable with the sticky bit" in result.stderr, result.stderr
    assert not (world / ".corral").exists()  # nothing of the planted project was touched


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_discovery_does_not_climb_into_another_users_directory(
    corral: Corral, outside: Path
) -> None:
    theirs = outside / "theirs"
    _agent(theirs, "hello")
    os.chown(theirs, NOBODY, NOBODY)
    mine = theirs / "mine"
    mine.mkdir()
    result = corral("run", "hello", cwd=mine)
    assert result.returncode == 2, result
    assert f"belongs to another user (uid {NOBODY})" in result.stderr, result.stderr
    # The directory the user runs in is theirs to choose: found from there, it is used.
    assert corral("config", cwd=theirs).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another user")
def test_start_refuses_a_state_directory_of_another_user(corral: Corral, outside: Path) -> None:
    root = outside / "p"
    _agent(root, "hello")
    victim = outside / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    logs = root / ".corral" / "logs"
    logs.mkdir(parents=True)
    (logs / "scheduler.log").symlink_to(victim)
    for path in (root / ".corral", logs):
        os.chown(path, NOBODY, NOBODY)
    result = corral("start", "--headless", "--port", "0", cwd=root)
    assert result.returncode == 2, result
    assert f"belongs to uid {NOBODY}" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644


def test_start_does_not_follow_a_link_at_the_scheduler_log(corral: Corral, outside: Path) -> None:
    root = outside / "p"
    _agent(root, "hello")
    victim = outside / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    logs = root / ".corral" / "logs"
    logs.mkdir(parents=True)
    (logs / "scheduler.log").symlink_to(victim)
    result = corral("start", "--headless", "--port", "0", cwd=root)
    assert result.returncode == 2, result
    assert "does not follow a symbolic link" in result.stderr, result.stderr
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o644


def test_a_newline_in_an_agent_folder_cannot_forge_an_error_line(
    corral: Corral, outside: Path
) -> None:
    root = outside / "p"
    _agent(root, "ok")
    forged = root / "agents" / "x\nFORGED: all good"
    forged.mkdir()
    (forged / "SKILL.md").write_text(SKILL.format(name="x"))
    for command in (["stat"], ["logs", "ok"]):
        result = corral(*command, cwd=root)
        assert result.returncode == 2, result
        assert "FORGED" in result.stderr  # reported, but on the line of its issue
        assert not any(line.startswith("FORGED") for line in result.stderr.splitlines())
        assert "x\\nFORGED" in result.stderr, result.stderr


def test_kill_and_logs_work_while_an_edit_does_not_load(corral: Corral, outside: Path) -> None:
    root = outside / "p"
    _agent(root, "hello")
    logs = root / ".corral" / "logs"
    assert corral("kill", "hello", cwd=root).returncode == 0
    logs.mkdir(parents=True, exist_ok=True)
    (logs / "scheduler.log").write_text("2026-01-01 INFO scheduler started\n")
    (root / "agents" / "hello" / "config.toml").write_text("scale = [\n")  # a bad edit
    assert corral("stat", cwd=root).returncode == 2  # stat shows the error
    killed = corral("kill", "hello", cwd=root)
    assert killed.returncode == 0, killed
    assert "agent hello has no running runs" in killed.stdout
    assert "configuration does not load" in killed.stderr
    shown = corral("logs", cwd=root)
    assert shown.returncode == 0, shown
    assert "scheduler started" in shown.stdout
    stopped = corral("stop", cwd=root)
    assert "no scheduler of this project runs here" in stopped.stderr, stopped
