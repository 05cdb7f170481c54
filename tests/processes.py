"""Helpers for tests that watch real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
    """`corral ARGS` in the background, with a clean environment and its own HOME.

    SIGINT reaches it as Ctrl-C at a terminal would, however the tests were started: a
    shell without job control (a script) starts `make test &` with SIGINT ignored, every
    child inherits that, and a `corral` that ignores SIGINT cannot show what Ctrl-C does.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env["HOME"] = str(home)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:  # caught here, SIGINT is back at its default in the child after exec
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "corral", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def corral_process(*args: str, cwd: Path, home: Path) -> Iterator[subprocess.Popen[str]]:
    """`popen_corral`, killed if it still runs and its pipes closed when the block ends.

    A test that fails while the process runs leaves neither the process nor its pipes
    behind: an unclosed pipe, collected later, fails whatever test runs then with an
    unraisable ResourceWarning.
    """
    proc = popen_corral(*args, cwd=cwd, home=home)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait(timeout=30)
