"""Helpers for tests that watch real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError("condition not met in time")


def popen_corral(*args: str, cwd: Path, home: Path) -> subprocess.Popen[str]:
    """`corral ARGS` in the background, with a clean environment and its own HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["HOME"] = str(home)
    return subprocess.Popen(
        [sys.executable, "-m", "corral", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
