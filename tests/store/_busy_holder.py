"""Holds a store busy from another process, as another writer would.

    python _busy_holder.py URL SECONDS

SQLite: takes the file's write lock (BEGIN IMMEDIATE). PostgreSQL: locks the project row
(SELECT ... FOR UPDATE), which every change to the queue takes first. Prints "held" once
it holds it, keeps it for SECONDS (or until stdin closes), then rolls back and exits.
"""

from __future__ import annotations

import select
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


def hold(url: str, seconds: float) -> None:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    else:
        pg = psycopg.connect(url)
        pg.execute("SELECT id FROM corral_project WHERE id = 1 FOR UPDATE")
    print("held", flush=True)
    # until the time is up, or the test closes our stdin to let go sooner
    select.select([sys.stdin], [], [], seconds)
    if url.startswith("sqlite:///"):
        conn.execute("ROLLBACK")
        conn.close()
    else:
        pg.rollback()
        pg.close()


@contextmanager
def held_busy(url: str, seconds: float = 30) -> Iterator[subprocess.Popen[str]]:
    """Another process holds the store at ``url`` busy until the block ends (at most
    ``seconds``)."""
    proc = subprocess.Popen(
        [sys.executable, __file__, url, str(seconds)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        proc.wait(15)
        proc.stdout.close()


if __name__ == "__main__":
    hold(sys.argv[1], float(sys.argv[2]))
