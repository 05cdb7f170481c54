"""Starting a run's process straight inside its cgroup, so that it is never moved.

A process started by `subprocess` begins in corral's own cgroup; the containment stub
then writes its pid into the run's cgroup (`Containment.wrap`). On cgroup2 mounted
without ``favordynmods`` that write waits for an RCU grace period, 7-14 ms of every
process start (docs/decisions.md, D96). Linux 5.7 can create a child inside a given
cgroup2 directory (``clone3`` with ``CLONE_INTO_CGROUP``); `CgroupPopen` is a
`subprocess.Popen` whose child is created that way by the small C module
``corral.runtime._clone`` (built at install, see setup.py), with the same pipes, fds,
working directory, environment and session as `subprocess` would give it.

The stub stays the fallback: where the module is not built, on cgroup v1, or once the
kernel refused the clone (``ENOSYS``, ``EINVAL``, ``EPERM``: an old kernel, a seccomp
filter, a cgroup it will not start a process in), which is remembered for the rest of
the process and shown by `corral doctor` ("cgroup moves"); and with
``CORRAL_SPAWN_DIRECT=0`` in corral's environment.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import inspect
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Collection
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "OFF_ENV",
    "CgroupPopen",
    "DirectRefused",
    "direct_status",
    "open_cgroup",
    "probe_direct",
    "uses_direct",
]

_clone: ModuleType | None
try:
    _clone = importlib.import_module("corral.runtime._clone")
except ModuleNotFoundError:  # not built here (no compiler at install, another OS)
    _clone = None
    _missing = (
        "the C helper corral.runtime._clone is not built: it needs a C compiler and "
        "Python's headers when corral is installed; install them, then reinstall corral"
    )
except ImportError as exc:  # built, but it does not load here
    _clone = None
    _missing = f"the C helper corral.runtime._clone does not load: {exc}"
else:
    _missing = "" if _clone.SUPPORTED else "the clone3 helper is written for x86_64 only"

#: Errors of clone3 that are not the kernel's refusal but a passing shortage: these are
#: reported as a failed start (as fork would), the next start tries again.
_TRANSIENT = frozenset({errno.EAGAIN, errno.ENOMEM, errno.EINTR})

_state_lock = threading.Lock()
_refused = ""  # why the kernel refused, once it did

#: The parameters of CPython's Popen._execute_child that CgroupPopen replaces (3.11-3.13).
_EXPECTED = (
    "self args executable preexec_fn close_fds pass_fds cwd env startupinfo creationflags "
    "shell p2cread p2cwrite c2pread c2pwrite errread errwrite restore_signals gid gids uid "
    "umask start_new_session process_group"
).split()


def _python_fits() -> str:
    """Why this Python's Popen cannot host CgroupPopen ("" when it can)."""
    try:
        names = list(inspect.signature(subprocess.Popen._execute_child).parameters)  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        names = []
    if names != _EXPECTED:
        return f"Python {sys.version.split()[0]}'s subprocess is not the one it was written for"
    return ""


_unfit = _python_fits()


class DirectRefused(Exception):
    """The kernel would not start the process inside the cgroup; nothing was started."""


#: Set to 0 to start every process through the stub (to compare, or should the helper
#: ever misbehave on some kernel).
OFF_ENV = "CORRAL_SPAWN_DIRECT"


def direct_status() -> tuple[bool, str]:
    """(True, how) when processes start straight inside their cgroup2; else (False, why)."""
    off = f"turned off by {OFF_ENV}=0" if os.environ.get(OFF_ENV) == "0" else ""
    why = off or _missing or _unfit or _refused
    if why:
        return False, why
    return True, "clone3 with CLONE_INTO_CGROUP, by corral.runtime._clone"


def uses_direct(kind: str) -> bool:
    """Whether a process contained by a cgroup of ``kind`` is started straight into it."""
    return kind == "cgroup2" and direct_status()[0]


def _refuse(exc: OSError) -> None:
    global _refused
    with _state_lock:
        if not _refused:
            name = errno.errorcode.get(exc.errno or 0, "?")
            _refused = f"the kernel refused clone3 into a cgroup ({name}: {exc.strerror})"


def open_cgroup(path: Path) -> int:
    """A file descriptor of the cgroup2 directory ``path`` for `CgroupPopen`."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


_STAGES = {1: "setting up its file descriptors", 3: "starting a session"}


class CgroupPopen(subprocess.Popen[bytes]):
    """A `subprocess.Popen` started inside the cgroup open as ``cgroup_fd``.

    Supports what corral passes: an argv list, ``env``, ``cwd``, pipes or ``DEVNULL``
    or fds for the standard streams, ``pass_fds``, ``start_new_session``; the fds are
    always closed as with ``close_fds=True`` and the signals restored. Raises
    `DirectRefused` (nothing started) when the kernel will not do it; errors of the
    child (a missing program, a missing cwd) as `subprocess.Popen` raises them.
    """

    def __init__(self, args: list[str], *, cgroup_fd: int, **kwargs: Any) -> None:
        if _clone is None or _missing or _unfit or _refused:
            raise DirectRefused(_missing or _unfit or _refused)
        self._cgroup_fd = cgroup_fd
        super().__init__(args, **kwargs)

    def _execute_child(
        self,
        args: list[str],
        executable: str | None,
        preexec_fn: object,
        close_fds: bool,
        pass_fds: Collection[int],
        cwd: str | os.PathLike[str] | None,
        env: dict[str, str] | None,
        startupinfo: object,
        creationflags: int,
        shell: bool,
        p2cread: int,
        p2cwrite: int,
        c2pread: int,
        c2pwrite: int,
        errread: int,
        errwrite: int,
        restore_signals: bool,
        gid: object,
        gids: object,
        uid: object,
        umask: int,
        start_new_session: bool,
        process_group: int,
    ) -> None:
        assert _clone is not None
        unsupported = (
            shell
            or preexec_fn is not None
            or not close_fds
            or not restore_signals
            or (gid, gids, uid) != (None, None, None)
            or umask >= 0
            or process_group != -1
            or isinstance(args, (str, bytes))
        )
        if unsupported:
            raise ValueError("CgroupPopen: only an argv list and corral's usual options")
        argv = [os.fsencode(arg) for arg in args]
        program = os.fsencode(executable or args[0])
        if os.path.dirname(program):
            programs: tuple[bytes, ...] = (program,)
        else:  # as os.execvpe and subprocess search it: the child's PATH
            programs = tuple(os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env))
        environ = os.environ if env is None else env
        env_list = []
        for key, value in environ.items():
            name = os.fsencode(key)
            if b"=" in name:
                raise ValueError(f"illegal environment variable name: {key!r}")
            env_list.append(name + b"=" + os.fsencode(value))
        where = None if cwd is None else os.fsencode(cwd)

        errpipe_read, errpipe_write = os.pipe()
        low: list[int] = []
        while errpipe_write < 3:  # it must survive the dup2s onto 0-2
            low.append(errpipe_write)
            errpipe_write = os.dup(errpipe_write)
        for fd in low:
            os.close(fd)
        try:
            try:
                keep = sorted({*map(int, pass_fds), errpipe_write})
                self.pid = _clone.spawn(
                    self._cgroup_fd,
                    argv,
                    programs,
                    env_list,
                    where,
                    keep,
                    p2cread,
                    c2pwrite,
                    errwrite,
                    errpipe_write,
                    start_new_session,
                )
                self._child_created = True
            except OSError as exc:
                if exc.errno in _TRANSIENT:
                    raise
                _refuse(exc)
                raise DirectRefused(_refused) from exc
            finally:
                os.close(errpipe_write)
            self._close_pipe_fds(p2cread, p2cwrite, c2pread, c2pwrite, errread, errwrite)  # type: ignore[attr-defined]
            data = b""
            while len(data) < 8:
                part = os.read(errpipe_read, 8 - len(data))
                if not part:
                    break
                data += part
        finally:
            os.close(errpipe_read)
        if data:
            self._failed(data, program, where)

    def _failed(self, data: bytes, program: bytes, cwd: bytes | None) -> None:
        """Reap the child that could not exec and raise what subprocess would."""
        try:
            pid, status = os.waitpid(self.pid, 0)
            if pid == self.pid:
                self._handle_exitstatus(status)  # type: ignore[attr-defined]
        except ChildProcessError:
            pass
        if len(data) != 8:
            raise subprocess.SubprocessError("the child failed before exec (bad report)")
        stage, code = struct.unpack("=ii", data)
        if stage == 4:  # exec
            raise OSError(code, os.strerror(code), os.fsdecode(program))
        if stage == 2:
            raise OSError(code, os.strerror(code), None if cwd is None else os.fsdecode(cwd))
        raise OSError(code, f"{os.strerror(code)} ({_STAGES.get(stage, 'before exec')})")


def probe_direct(base: Path) -> tuple[bool, str]:
    """`direct_status` after starting ``true`` in a throwaway cgroup under ``base`` (the
    run cgroups' directory): a refusal of this kernel is then known, not assumed."""
    ready, how = direct_status()
    if not ready:
        return ready, how
    probe = base / f"probe-direct.{os.getpid()}"
    try:
        probe.mkdir(exist_ok=True)
        fd = open_cgroup(probe)
    except OSError as exc:
        return False, f"cannot make a cgroup in {base}: {exc.strerror or exc}"
    try:
        child = CgroupPopen(["true"], cgroup_fd=fd, stdin=subprocess.DEVNULL)
        child.wait()
    except DirectRefused as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"could not start `true` inside a cgroup: {exc.strerror or exc}"
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            probe.rmdir()
    return direct_status()
