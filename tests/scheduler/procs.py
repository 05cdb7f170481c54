"""Real scheduler processes for multi-process and kill -9 tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.processes import alive, wait_until

__all__ = ["SchedulerProcess", "alive", "wait_until"]


class SchedulerProcess:
    """`corral start --headless` in a child process, on a given store."""

    def __init__(self, project: Path, store_url: str, log: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env.update({"CORRAL_STATE_URL": store_url, "HOME": str(project.parent)})
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "corral", "start", "--headless", "--port", "0", *extra],
                cwd=project,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> SchedulerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
