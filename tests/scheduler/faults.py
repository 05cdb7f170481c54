"""Store faults made by another process: a held SQLite write lock, a held PostgreSQL row
lock whose waiters are terminated, a full disk."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["StoreLockHolder", "full_disk"]

# Run as a separate process: one connection that takes the lock, says so by creating
# the ready file, and keeps it for the given seconds. On PostgreSQL, every backend that
# waits behind it is terminated (once) while it holds the lock, as a backend killed by
# an operator or a crashed connection would be.
_HOLDER = r"""
import sys, time
from pathlib import Path
url, sql, seconds, ready, terminated = sys.argv[1:6]
seconds = float(seconds)
if url.startswith("sqlite:///"):
    import sqlite3
    conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    Path(ready).touch()
    time.sleep(seconds)
    conn.execute("COMMIT")
else:
    import psycopg
    with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as admin:
        conn.execute(sql)
        Path(ready).touch()
        mine = conn.info.backend_pid
        ended = set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (mine,),
            ).fetchall()
            for (pid,) in rows:
                if pid not in ended:
                    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                    ended.add(pid)
                    with open(terminated, "a") as out:
                        out.write(f"{pid}\n")
            time.sleep(0.1)
        conn.commit()
"""


class StoreLockHolder:
    """Another process holding the store's write lock (SQLite) or the rows ``sql`` locks
    (PostgreSQL, e.g. ``SELECT … FOR UPDATE``) for ``seconds``."""

    def __init__(self, url: str, sql: str, seconds: float, workdir: Path) -> None:
        self.ready = workdir / "holder.ready"
        self.terminated = workdir / "holder.terminated"
        self.ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _HOLDER,
                url,
                sql,
                str(seconds),
                str(self.ready),
                str(self.terminated),
            ],
        )
        deadline = time.monotonic() + 15
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the lock holder did not take its lock")
            time.sleep(0.02)

    def terminated_backends(self) -> int:
        if not self.terminated.exists():
            return 0
        return len(self.terminated.read_text().split())

    def finished(self) -> bool:
        return self.proc.poll() is not None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@contextlib.contextmanager
def full_disk(where: Path, size_kib: int = 64) -> Iterator[Path]:
    """A small tmpfs mounted at ``where`` and filled up; unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
        check=True,
    )
    try:
        filler = where / ".filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
        yield filler
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
