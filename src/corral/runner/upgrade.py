"""A runner upgrades its own corral: the parts it shares with the control plane
processes live in ``corral.engine.versions`` (side-by-side install, the atomic swap of
``versions/current``, the guard, the smoke check); named here as the runner uses them.
``python -m corral.runner.upgrade guard WORK_DIR PID`` still starts a guard (the entry
point of guards started by earlier versions).
"""

from __future__ import annotations

import sys
from pathlib import Path

from corral.engine.versions import (
    KEEP,
    SMOKE_TIMEOUT,
    START_TIMEOUT,
    UpgradeError,
    Versions,
    base_paths,
    check_wheel,
    guard,
    judge_trial,
    smoke_check,
    start_guard,
)

__all__ = [
    "KEEP",
    "SMOKE_TIMEOUT",
    "START_TIMEOUT",
    "UpgradeError",
    "Versions",
    "base_paths",
    "check_wheel",
    "guard",
    "judge_trial",
    "smoke_check",
    "start_guard",
]

if __name__ == "__main__":  # pragma: no cover - the guard's entry point
    if len(sys.argv) == 4 and sys.argv[1] == "guard":
        sys.exit(guard(Path(sys.argv[2]), int(sys.argv[3])))
    sys.exit("usage: python -m corral.runner.upgrade guard WORK_DIR PID")
