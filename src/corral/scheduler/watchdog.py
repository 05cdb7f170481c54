"""Self-fencing: a scheduler that cannot renew its leases stops its runs in time.

A run's lease lapses ``lease_seconds`` after the last renewal; then another scheduler
recovers it and delivers its item again, and locks the run held go to other runs. If
the run's processes were still going, two of them would do the same work, or hold
the same lock, at once. A scheduler that is frozen (SIGSTOP, a stalled VM) or cut off
from the store cannot stop its runs itself, and its runs are not frozen with it. So
each scheduler starts this watchdog, a small process in a session of its own:

* after every successful renewal the scheduler sends it a deadline: the moment the
  renewal request was *sent*, plus ``lease_seconds``, minus `fence_margin`. The store
  computes the new expiry after it receives the request, so no lease renewed by that
  request lapses before ``sent + lease_seconds``;
* it tells it which runs it executes;
* when the deadline passes before a new one arrives, the watchdog kills every process
  of every run it was told about (their cgroups and their marker, see
  corral.runtime._contain), well before the leases can lapse anywhere else;
* when the scheduler dies (its end of the pipe closes), the watchdog kills its runs too.

The times are CLOCK_BOOTTIME, which both processes share and which keeps counting
while the machine is suspended (the store's clock does too). The margins are in
docs/decisions.md.

Run as ``python -m corral.scheduler.watchdog KIND BASE``; one command a line on stdin:
``deadline <seconds>``, ``run <run id>``, ``done <run id>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from corral.runtime._contain import ContainSupport, Kind, contain_support, kill_run

__all__ = ["Watchdog", "boottime", "fence_deadline", "fence_margin", "main"]

log = logging.getLogger("corral.scheduler")

#: The smallest margin between the watchdog's deadline and a lease's expiry.
MIN_MARGIN = 1.0
#: The margin as a share of the lease.
MARGIN_SHARE = 0.1


def boottime() -> float:
    """Seconds on the clock both the scheduler and its watchdog read (CLOCK_BOOTTIME)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def fence_margin(lease_seconds: float) -> float:
    """How long before a lease can lapse its runs are stopped (docs/decisions.md)."""
    return min(max(MIN_MARGIN, MARGIN_SHARE * lease_seconds), lease_seconds / 2)


def fence_deadline(sent: float, lease_seconds: float) -> float:
    """When runs covered by a renewal sent at ``sent`` (boottime) must be stopped."""
    return sent + lease_seconds - fence_margin(lease_seconds)


class Watchdog:
    """The scheduler's side: starts the watchdog process and feeds it.

    Writes never block: a watchdog that does not read (or died) is restarted and told
    everything again. On an event loop, the runs started and ended in one turn of the
    loop go in one write at the end of that turn (a run's process starts turns later,
    after its preparation), so a burst costs one write and one wake-up of the watchdog
    per turn, not two per run; a deadline is written at once, with whatever waits.
    """

    def __init__(self, support: ContainSupport | None = None) -> None:
        self.support = support or contain_support()
        self.runs: set[str] = set()
        self.deadline = math.inf
        self._proc: subprocess.Popen[bytes] | None = None
        #: Lines waiting for the end of this turn of the loop (``_flush``).
        self._pending: list[str] = []
        self._flush_scheduled = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        base = "" if self.support.base is None else str(self.support.base)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "corral.scheduler.watchdog", self.support.kind, base],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the scheduler's group does not reach it
            close_fds=True,
        )
        assert self._proc.stdin is not None
        os.set_blocking(self._proc.stdin.fileno(), False)
        lines = [f"run {run_id}" for run_id in sorted(self.runs)]
        if self.deadline != math.inf:
            lines.append(f"deadline {self.deadline!r}")
        if lines:
            self._send(lines)

    def set_deadline(self, deadline: float) -> None:
        self.deadline = deadline
        self._send([f"deadline {deadline!r}"])

    def track(self, run_id: str) -> None:
        self.runs.add(run_id)
        self._later(f"run {run_id}")

    def untrack(self, run_id: str) -> None:
        self.runs.discard(run_id)
        self._later(f"done {run_id}")

    def _later(self, line: str) -> None:
        """``line`` in the write at the end of this turn of the loop (at once without a
        running loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._send([line])
            return
        self._pending.append(line)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            self._send([])

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure(self) -> None:
        """Restart the watchdog if it is gone."""
        if self._proc is not None and not self.alive():
            log.error(
                "the self-fencing watchdog (pid %s) exited with %s; starting it again",
                self._proc.pid,
                self._proc.returncode,
                extra={"action": "watchdog_restarted"},
            )
            self._restart()

    def _send(self, lines: list[str]) -> None:
        """Write what waits for the end of the turn, then ``lines``, in one write."""
        lines, self._pending = [*self._pending, *lines], []
        if self._proc is None or self._proc.stdin is None:
            return
        data = "".join(f"{line}\n" for line in lines).encode()
        try:
            written = os.write(self._proc.stdin.fileno(), data)
        except (BlockingIOError, BrokenPipeError, OSError):
            written = -1
        if written != len(data):
            self._restart()

    def _restart(self) -> None:
        self.close(kill_runs=False)
        self.start()

    def close(self, *, kill_runs: bool = True) -> None:
        """Stop the watchdog; with ``kill_runs`` it kills the runs it still knows of."""
        if kill_runs and self._pending:
            self._send([])  # the runs it must know of, and those it must not kill
        self._pending = []
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if not kill_runs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# --- the watchdog process ------------------------------------------------------------


def _say(text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    with contextlib.suppress(OSError):
        sys.stderr.write(f"{stamp} corral watchdog {os.getpid()}: {text}\n")
        sys.stderr.flush()


def _kill_all(runs: set[str], support: ContainSupport, why: str) -> None:
    for run_id in sorted(runs):
        clean = kill_run(run_id, support, scan=True)
        _say(f"{why}: killed the processes of run {run_id}" + ("" if clean else " (some left)"))
    runs.clear()


def _apply(line: str, runs: set[str], deadline: float) -> float:
    command, _, arg = line.strip().partition(" ")
    if command == "deadline":
        with contextlib.suppress(ValueError):
            return float(arg)
    elif command == "run" and arg:
        runs.add(arg)
    elif command == "done":
        runs.discard(arg)
    return deadline


def serve(support: ContainSupport, fd: int = 0) -> None:
    """Watch until ``fd`` closes; kill the runs whenever the deadline passes."""
    runs: set[str] = set()
    deadline = math.inf
    pending = b""
    while True:
        left = deadline - boottime()
        # Past the deadline with nothing left to kill, wait for news instead of spinning.
        wait = 1.0 if deadline == math.inf or left <= 0 or not runs else min(1.0, left)
        readable, _, _ = select.select([fd], [], [], wait)
        if readable:
            data = os.read(fd, 65536)
            if not data:
                _kill_all(runs, support, "the scheduler is gone")
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                deadline = _apply(line.decode(errors="replace"), runs, deadline)
        overdue = boottime() - deadline
        if runs and overdue >= 0:
            _kill_all(
                runs, support, f"lease renewal overdue ({overdue:.2f} s past the fencing deadline)"
            )


def main(argv: list[str]) -> int:
    kind: Kind = argv[0] if argv and argv[0] in ("cgroup2", "freezer", "pids") else "marker"  # type: ignore[assignment]
    base = Path(argv[1]) if len(argv) > 1 and argv[1] and kind != "marker" else None
    support = ContainSupport(kind, base) if base is not None else ContainSupport("marker", None)
    with contextlib.suppress(KeyboardInterrupt):
        serve(support)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
