"""How run processes are started and how the event loop learns that one exited."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import subprocess
import sys
import threading
import warnings
from asyncio import unix_events
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "PREPARE_THREADS",
    "can_spawn_off_loop",
    "in_prepare_thread",
    "spawn_off_loop",
    "use_pidfd_child_watcher",
]

_T = TypeVar("_T")

#: How many processes are being started at once (fork/exec and the checks before it).
SPAWN_THREADS = 4
#: How many runs are being prepared at once (their directories and files, the prompt,
#: the log): a burst of runs queues here instead of on the event loop.
PREPARE_THREADS = 2


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


# --- starting a process off the event loop ----------------------------------------------
#
# asyncio's create_subprocess_exec forks, execs and waits for the exec on the event loop
# itself: ~1 ms of a quiet machine, tens of ms on a busy one, and during a burst of runs
# one such start after another kept the gateway (/health, the agents' lock and call
# requests) waiting. Here the start (with what the caller does first: the containment's
# cgroup, the program check) runs in a small pool of threads: fork_exec releases the GIL,
# so the loop goes on serving meanwhile. The started child is then handed to asyncio as
# if asyncio had started it (same transport, same child watcher, same Process object), so
# everything that watches, signals or reads a run's process is unchanged.

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _spawn_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                SPAWN_THREADS, thread_name_prefix="corral-spawn"
            )
        return _pool


_prepare: concurrent.futures.ThreadPoolExecutor | None = None


def _prepare_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _prepare
    with _pool_lock:
        if _prepare is None:
            _prepare = concurrent.futures.ThreadPoolExecutor(
                PREPARE_THREADS, thread_name_prefix="corral-prepare"
            )
        return _prepare


async def in_prepare_thread(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)`` in one of the `PREPARE_THREADS` preparation threads: a run's file
    work (mkdir, open, write, chmod) off the event loop, at most that many at once.

    Cancelled before the call started, it never runs; cancelled while it runs, this
    waits for it to end (a preparation is a few syscalls) so that what it made is
    settled when the cancellation goes on, then raises CancelledError.
    """
    future = _prepare_pool().submit(call, *args)
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        if not future.cancel():
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.wrap_future(future))
        raise


#: Set to 1 to start processes on the event loop as asyncio does (to compare, or should
#: the hand-over ever misbehave on some Python).
ON_LOOP_ENV = "CORRAL_SPAWN_ON_LOOP"


def can_spawn_off_loop() -> bool:
    """True where a child started in a thread can be handed to asyncio (CPython's unix
    selector loop, 3.11 to 3.13: their subprocess transport takes a started Popen)."""
    if sys.version_info >= (3, 14) or _Transport is object or os.environ.get(ON_LOOP_ENV) == "1":
        return False
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    return isinstance(loop, unix_events._UnixSelectorEventLoop)


async def spawn_off_loop(
    start: Callable[[], subprocess.Popen[bytes]],
    on_orphan: Callable[[subprocess.Popen[bytes]], None],
    kill: Callable[[subprocess.Popen[bytes]], None],
) -> asyncio.subprocess.Process:
    """``start()`` (which starts the child) in a worker thread; the child as asyncio's.

    When the caller is cancelled while the child is being started, the child must not
    run unwatched: ``on_orphan(popen)`` is called (in a thread) once it has started,
    to end it; then the cancellation goes on. Cancelled while the started child is
    being handed to asyncio, ``kill(popen)`` (on the loop, without waiting) ends the
    child and everything it started before asyncio waits for it. Call
    `can_spawn_off_loop` first.
    """
    loop = asyncio.get_running_loop()
    started = loop.run_in_executor(_spawn_pool(), start)
    try:
        popen = await asyncio.shield(started)
    except asyncio.CancelledError:
        started.add_done_callback(functools.partial(_end_orphan, on_orphan))
        raise
    return await _adopt(loop, popen, on_orphan, kill)


def _end_orphan(
    on_orphan: Callable[[subprocess.Popen[bytes]], None],
    started: asyncio.Future[subprocess.Popen[bytes]],
) -> None:
    if started.cancelled() or started.exception() is not None:
        return  # nothing was started
    threading.Thread(target=on_orphan, args=(started.result(),), daemon=True).start()


#: asyncio's own transport for a child process (typeshed does not describe it).
_Transport: Any = getattr(unix_events, "_UnixSubprocessTransport", object)


class _Adopted(_Transport):  # type: ignore[misc]
    """asyncio's subprocess transport around a child that is already started."""

    def _start(self, args: Any, shell: Any, stdin: Any, stdout: Any, stderr: Any,
               bufsize: Any, **kwargs: Any) -> None:  # fmt: skip
        self._proc = kwargs["popen"]


async def _adopt(
    loop: asyncio.AbstractEventLoop,
    popen: subprocess.Popen[bytes],
    on_orphan: Callable[[subprocess.Popen[bytes]], None],
    kill: Callable[[subprocess.Popen[bytes]], None],
) -> asyncio.subprocess.Process:
    """What ``loop.subprocess_exec`` does after its Popen: the pipes connected, the
    child registered with the child watcher, a `asyncio.subprocess.Process` on top."""
    pipe, none = subprocess.PIPE, None
    protocol = asyncio.subprocess.SubprocessStreamProtocol(limit=2**16, loop=loop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher = asyncio.get_child_watcher()
    transport: _Adopted | None = None
    try:
        with watcher:
            waiter = loop.create_future()
            transport = _Adopted(
                loop,
                protocol,
                popen.args,
                False,
                pipe if popen.stdin is not None else none,
                pipe if popen.stdout is not None else none,
                pipe if popen.stderr is not None else none,
                0,
                waiter=waiter,
                popen=popen,
            )
            watcher.add_child_handler(
                popen.pid,
                loop._child_watcher_callback,  # type: ignore[attr-defined]
                transport,
            )
            try:
                await waiter
            except BaseException:
                transport.close()
                # Everything the child started goes too (after close(), whose poll() must
                # not reap the child under the watcher): close() kills the child alone,
                # and its group holds the output pipe (which the transport connects even
                # after close() when the cancel came while it was connecting it), so
                # _wait() would last as long as they run.
                kill(popen)
                with contextlib.suppress(BaseException):
                    await asyncio.shield(transport._wait())
                raise
    except BaseException:
        if transport is None:  # nothing watches the child yet: it must not run unwatched
            threading.Thread(target=on_orphan, args=(popen,), daemon=True).start()
        raise
    return asyncio.subprocess.Process(transport, protocol, loop)
