from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Corral = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def corral(tmp_path: Path) -> Corral:
    """Run the real `corral` command line in a subprocess, as a user would."""
    home = tmp_path / "home"
    home.mkdir()

    def invoke(
        *args: str,
        cwd: Path | None = None,
        input: str | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("CORRAL_") or k == "CORRAL_TEST_PG_URL"
        }
        full_env.update({"HOME": str(home), "CORRAL_HOME": str(home / ".corral"), "COLUMNS": "200"})
        full_env.update(env or {})
        return subprocess.run(
            [sys.executable, "-m", "corral", *args],
            cwd=cwd or tmp_path,
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
        )

    return invoke


@pytest.fixture
def project(tmp_path: Path, corral: Corral) -> Path:
    """A freshly scaffolded project, exactly as `corral new` makes it."""
    result = corral("new", "demo")
    assert result.returncode == 0, result.stderr
    # The example's schedule fires every 15 minutes: a tick during a test with a running
    # scheduler would add a run the test did not ask for. This one fires on 1 January.
    config = tmp_path / "demo" / "agents" / "hello" / "config.toml"
    text = config.read_text()
    assert 'schedule = "*/15 * * * *"' in text
    config.write_text(text.replace("*/15 * * * *", "0 0 1 1 *"))
    return tmp_path / "demo"
