"""Processes left behind by a dead scheduler on this host.

A run's process leads its own session, so it outlives a scheduler killed with
SIGKILL. When that run is recovered as `lost`, its process group is killed if
it is still here: the group leader is recognised by the run id in its
environment, so a recycled pid is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from collections.abc import Iterable
from pathlib import Path

from corral.store import Recovered

__all__ = ["is_run_process", "reap_orphans"]

log = logging.getLogger("corral.scheduler")


def is_run_process(pid: int, run_id: str) -> bool:
    """True when ``pid`` is alive and is the process corral started for ``run_id``."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"CORRAL_RUN_ID={run_id}".encode() in environ.split(b"\0")


def reap_orphans(recovered: Iterable[Recovered]) -> list[str]:
    """Kill the process groups of recovered runs that still run on this host."""
    host = socket.gethostname()
    reaped = []
    for item in recovered:
        run = item.run
        if run is None or run.pid is None or run.host != host:
            continue
        if is_run_process(run.pid, run.id):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.pid, signal.SIGKILL)
            reaped.append(run.id)
            log.warning(
                "killed the orphaned processes of lost run %s",
                run.id,
                extra={"action": "orphan_reaped", "run_id": run.id},
            )
    return reaped
