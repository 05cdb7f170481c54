"""Processes left behind by a dead scheduler on this host.

A run's processes lead their own session, so they can outlive a scheduler killed
with SIGKILL if its watchdog could not stop them. When such a run is recovered as
`lost`, every process of it still on this host is killed: its cgroups, and every
process carrying its run id in the environment (see corral.runtime._contain), so a
recycled pid is never touched and a ``setsid`` child is not missed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from pathlib import Path

from corral.runtime._contain import kill_run, run_pids
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
    """Kill every process of the recovered runs that ran on this host; the ids of the
    runs that still had processes here."""
    host = socket.gethostname()
    reaped = []
    for item in recovered:
        run = item.run
        if run is None or run.host != host:
            continue
        left = bool(run_pids(run.id))
        kill_run(run.id, scan=True)
        if left:
            reaped.append(run.id)
            log.warning(
                "killed the orphaned processes of lost run %s",
                run.id,
                extra={"action": "orphan_reaped", "run_id": run.id},
            )
    return reaped
