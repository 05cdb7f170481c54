from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.credentials import CredentialStore

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path / "home" / ".corral" / "credentials")


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for the test; the old one is put back after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)

    yield set_umask
    os.umask(old)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """CORRAL_HOME of the `cli` fixture."""
    return tmp_path / "home" / ".corral"


@pytest.fixture
def cli(tmp_path: Path, home: Path) -> Cli:
    """The real `corral` command line in a subprocess; stdin is a pipe (or /dev/null)."""

    def invoke(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update({"HOME": str(tmp_path / "home"), "CORRAL_HOME": str(home), "COLUMNS": "200"})
        return subprocess.run(
            [sys.executable, "-m", "corral", "creds", *args],
            cwd=tmp_path,
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    return invoke
