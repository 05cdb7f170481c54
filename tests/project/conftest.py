"""Every test sees a clean environment: no CORRAL_* variables, a private CORRAL_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("CORRAL_ENV", "CORRAL_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "corral-home"
    monkeypatch.setenv("CORRAL_HOME", str(home))
    return home
