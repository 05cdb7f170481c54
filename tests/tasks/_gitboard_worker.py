"""A claimer of the git board run as a separate process by test_gitboard.py.

    python _gitboard_worker.py REMOTE CLAIMER CACHE

Prints "ready", waits for "go" on stdin, then claims and completes tasks until none is
open or claimed, and prints one JSON line: each claim as (task id, generation, retries)
and the rejected pushes it saw.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

from corral.tasks import TaskStatus
from corral.tasks.gitboard import GitBoard


def main() -> None:
    remote, claimer, cache = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    board = GitBoard(remote, claimer, cache=cache, give_up_after=250.0)
    print("ready", flush=True)
    sys.stdin.readline()
    claims: list[list[object]] = []
    idle = 0
    while True:
        got = board.claim()
        if got is None:
            left = [t for t in board.list() if t.status in (TaskStatus.OPEN, TaskStatus.CLAIMED)]
            if not left:
                break
            idle += 1
            time.sleep(random.uniform(0.05, 0.2))
            continue
        claims.append([got.task.id, got.generation, got.retries])
        time.sleep(random.uniform(0.0, 0.05))  # the "work"
        board.complete(got.task.id, f"done by {claimer}", generation=got.generation)
    print(
        json.dumps(
            {
                "claimer": claimer,
                "claims": claims,
                "pushes": board.pushes,
                "rejections": board.rejections,
                "idle": idle,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
