"""How the event loop learns that a run's process exited."""

from __future__ import annotations

import asyncio
import os
import sys

__all__ = ["use_pidfd_child_watcher"]


def use_pidfd_child_watcher() -> bool:
    """On Python 3.11, watch children with pidfds instead of a thread per child.

    Python 3.11's default watcher starts a `waitpid` thread for every child; with
    hundreds of runs going that is hundreds of threads. A pidfd is one file
    descriptor in the event loop. Python 3.12 and later choose pidfds by
    themselves, so this does nothing there. Call it inside the running loop.
    """
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel without pidfds (before Linux 5.3)
        return False
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    return True
