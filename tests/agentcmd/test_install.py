"""install(): the commands on disk, their shebang, precompiled client, idempotence."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from corral.agentcmd import COMMANDS, bash_init_path, install
from tests.agentcmd.conftest import SECRET, Gateway, base_env

REAL_PYTHON = os.path.realpath(sys.executable)


def snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(path.relative_to(directory)): (
            path.stat().st_ino,
            path.stat().st_mtime_ns,
            path.stat().st_mode,
        )
        for path in directory.rglob("*")
        if path.is_file()
    }


def test_commands_and_files(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "bin"
    assert install(target) == target
    assert set(COMMANDS) == {
        "rlock",
        "runlock",
        "rlock-heartbeat",
        "al-subagent",
        "al-subagent-check",
        "al-subagent-wait",
        "al-return",
        "al-rerun",
        "al-status",
        "al-exit",
        "al-shutdown",
        "setenv",
        "task-claim",
        "task-heartbeat",
        "task-complete",
        "task-release",
        "task-fail",
    }
    for name in COMMANDS:
        script = target / name
        assert script.stat().st_mode & 0o777 == 0o755
        first = script.read_text().splitlines()[0]
        assert first == f"#!{REAL_PYTHON} -SI"
        assert os.path.isabs(REAL_PYTHON) and os.path.realpath(REAL_PYTHON) == REAL_PYTHON
        assert f"c.main({name!r}, sys.argv[1:])" in script.read_text()
    assert (target / "_corral_agentcmd.py").stat().st_mode & 0o777 == 0o644
    assert bash_init_path(target) == target / "bash-init.sh"
    assert bash_init_path(target).read_text().startswith("# corral")
    assert list((target / "__pycache__").glob("_corral_agentcmd.*.pyc"))
    assert not [p for p in target.iterdir() if p.name.endswith(".tmp")]


def test_install_twice_changes_nothing(tmp_path: Path) -> None:
    install(tmp_path)
    before = snapshot(tmp_path)
    install(tmp_path)
    assert snapshot(tmp_path) == before


def test_install_repairs_a_damaged_file(tmp_path: Path) -> None:
    install(tmp_path)
    good = (tmp_path / "rlock").read_bytes()
    (tmp_path / "rlock").write_bytes(b"#!/bin/sh\nexit 1\n")
    (tmp_path / "runlock").chmod(0o644)
    install(tmp_path)
    assert (tmp_path / "rlock").read_bytes() == good
    assert (tmp_path / "runlock").stat().st_mode & 0o777 == 0o755


def test_concurrent_installs(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                install(tmp_path)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert not [p for p in tmp_path.rglob("*.tmp")]
    result = subprocess.run(
        [str(tmp_path / "al-exit"), "nope"], capture_output=True, env=base_env(tmp_path)
    )
    assert result.returncode == 9


def test_precompiled_client_is_used(tmp_path: Path) -> None:
    """The cached bytecode matches the source, so a read-only bin dir needs no compile."""
    install(tmp_path)
    tmp_path.chmod(0o555)
    try:
        result = subprocess.run(
            [REAL_PYTHON, "-SI", "-v", str(tmp_path / "al-rerun"), "extra"],
            capture_output=True,
            text=True,
            env=base_env(tmp_path),
        )
    finally:
        tmp_path.chmod(0o755)
    assert result.returncode == 9
    assert "_corral_agentcmd.py" in result.stderr
    cache_lines = [line for line in result.stderr.splitlines() if "_corral_agentcmd" in line]
    assert any("matches" in line for line in cache_lines), cache_lines
    assert not any("could not" in line or "bad " in line for line in cache_lines), cache_lines


def test_client_imports_only_cheap_modules(tmp_path: Path) -> None:
    install(tmp_path)
    probe = (
        "import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
        "import _corral_agentcmd; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    result = subprocess.run(
        [REAL_PYTHON, "-SI", "-c", probe, str(tmp_path)], capture_output=True, text=True
    )
    loaded = set(result.stdout.split()) - {"_corral_agentcmd"}
    # os pulls in its own helpers (posixpath, stat, _collections_abc, ...); nothing else.
    assert "_socket" in loaded
    assert not loaded & {"socket", "json", "re", "enum", "typing", "selectors", "corral"}


def test_explicit_interpreter(tmp_path: Path, gateway: Gateway) -> None:
    python = sys.executable  # the venv's python: a different path to the same interpreter
    install(tmp_path, python=python)
    assert (tmp_path / "rlock").read_text().startswith(f"#!{python} -SI\n")
    env = {**base_env(tmp_path), "GATEWAY_URL": gateway.url, "CORRAL_RUN_SECRET": SECRET}
    result = subprocess.run([str(tmp_path / "rlock"), "k"], capture_output=True, env=env)
    assert (result.returncode, result.stdout) == (0, b'{"ok":true}\n')


@pytest.mark.parametrize("python", ["python3", "/opt/my python/bin/python3", "/nonexistent/py"])
def test_bad_interpreter(tmp_path: Path, python: str) -> None:
    with pytest.raises(ValueError):
        install(tmp_path, python=python)


def test_commands_found_on_path(tmp_path: Path) -> None:
    install(tmp_path)
    result = subprocess.run(
        ["sh", "-c", "rlock; echo rc=$?"], capture_output=True, text=True, env=base_env(tmp_path)
    )
    assert result.stdout.endswith("rc=9\n")


def test_client_runs_as_a_script(gateway: Gateway) -> None:
    client = Path(__file__).parents[2] / "src" / "corral" / "agentcmd" / "client.py"
    env = {"GATEWAY_URL": gateway.url, "CORRAL_RUN_SECRET": SECRET}
    result = subprocess.run(
        [REAL_PYTHON, "-SI", str(client), "al-status", "hi"], capture_output=True, env=env
    )
    assert (result.returncode, result.stdout) == (0, b'{"ok":true}\n')
    assert gateway.script.last.body == {"text": "hi"}
    result = subprocess.run([REAL_PYTHON, "-SI", str(client)], capture_output=True, env=env)
    assert result.returncode == 9
