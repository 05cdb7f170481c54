"""The `sandbox` runtime: a run under bubblewrap, isolated like a container.

Read-only root, private ``/tmp``, ``/dev`` and ``/proc``, hidden paths, chosen
binds, the run's ``/app/static`` view (``LaunchSpec.static``: a tmpfs of its own with
read-only binds and symlinks, as Action Llama's image holds the agent's files and
``shared/``), optional network isolation and memory/CPU limits, without a container
engine. docs/sandbox.md has the mount table and what is and is not isolated.

The command line, for a run ``argv`` (``env`` is coreutils' env)::

    env --ignore-signal=TERM bwrap
        [--ro-bind /ENTRY /ENTRY | --symlink TARGET /ENTRY]...  (each entry of the host's /)
        --dev /dev --proc /proc --perms 1777 --tmpfs /tmp
        [--tmpfs HIDDEN_DIR | --ro-bind /dev/null HIDDEN_FILE]...
        [--perms 0755 --tmpfs /app/static [--ro-bind SRC /app/static/NAME
         | --symlink TEXT /app/static/NAME]... --remount-ro /app/static]
        [[--perms 0755 --dir PARENT]... --bind|--ro-bind SRC DST]...
        [[--perms 0755 --dir PARENT]... --perms 0444 --ro-bind-data FD DST]...
        [--remount-ro HIDDEN_DIR]... --remount-ro /
        --unshare-pid --unshare-ipc --unshare-uts --hostname corral --unshare-cgroup-try
        [--unshare-net] --die-with-parent --cap-drop ALL
        [--cap-add CAP_SETUID --cap-add CAP_SETGID --cap-add CAP_SETPCAP] --chdir CWD
        [--info-fd N --block-fd M] --
        [setpriv --reuid=UID --regid=GID --clear-groups --inh-caps=-all --bounding-set=-all --]
        env --default-signal=TERM [--chdir=CWD] -u PWD -- ARGV...

With ``Isolation.uid`` (corral runs as root), the run's processes have that uid and
gid on the host, not corral's: bwrap sets the sandbox up as root, then ``setpriv``
switches to the run's ids and drops the three capabilities it kept for that, before
anything of the run starts (bwrap's ``--chdir`` is then ``/`` and the inner ``env``
enters CWD: bwrap, uid 0 with no capabilities, may not enter the run's own directory).
A file or directory of corral's state (0600, 0700, owned by corral's user) is then
unreadable to the run whatever path leads to it, which is what keeps runs out of every
project's state on the host; the hidden paths only add to it.

The sandbox's ``/`` is bwrap's own tmpfs, made read-only once every mount point
is in place, with each entry of the host's ``/`` bound read-only into it (not
``--ro-bind / /``, so that a bind may go to a new top-level directory such as
``/credentials``: a mount point can be created in a tmpfs, not in the host's
read-only root).

Why the two ``env``: bubblewrap does not pass signals on, so ``Process.stop``'s
SIGTERM to the process group would kill bwrap itself, and with it (through
``--die-with-parent``) the whole sandbox at once, with no grace. bwrap ignores
SIGTERM instead; the run gets the default disposition back before it starts,
and receives the SIGTERM itself. ``-u PWD`` drops the variable bwrap sets, so
the run sees exactly ``spec.env``. The environment travels through ``execve``,
never on a command line (``/proc/PID/cmdline`` is readable by every user).

With a limit, bwrap holds the sandbox before it starts the run (``--block-fd``)
and says which process that is (``--info-fd``); corral moves it into the run's
cgroup or sets its RLIMIT_AS, then lets it go, so every process of the run is
limited from its first instruction.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.errors import RunError
from corral.runtime._base import Bind, Isolation, LaunchSpec, Process, Sink
from corral.runtime._contain import Containment
from corral.runtime._limits import LimitSupport, RunCgroup, limit_support, set_address_space_limit
from corral.runtime._private import STATIC_DIR, StaticView
from corral.runtime.host import contain_for, feed_stdin, start_process

__all__ = [
    "INSTALL_HINT",
    "SandboxProcess",
    "SandboxRuntime",
    "SandboxSupport",
    "filesystem",
    "host_root",
    "probe_sandbox",
    "sandbox_support",
]

log = logging.getLogger("corral.run")

INSTALL_HINT = "apt-get install -y bubblewrap"
_USERNS_HINT = (
    "bubblewrap needs user namespaces when corral does not run as root: "
    "sysctl kernel.unprivileged_userns_clone=1 (Debian), "
    "kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 24.04+); "
    "in a container, allow namespaces (e.g. docker run --privileged or a seccomp "
    "profile that permits unshare)"
)

#: The sandbox's own /dev, /proc and /tmp (the host's are not bound in); /tmp is
#: writable for every user, as a /tmp is (the run may not be corral's user).
OWN_MOUNTS = ("--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp")
_OWN = frozenset(("dev", "proc", "tmp"))
#: Namespaces and privileges every sandbox gives up.
CONFINE = (
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--hostname",
    "corral",
    "--unshare-cgroup-try",
    "--die-with-parent",
    "--cap-drop",
    "ALL",
)
#: What a sandbox keeps to switch to the run's uid and gid (dropped by setpriv at once).
_SWITCH_CAPS = ("--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP")
#: Directories bwrap makes for mount points in its tmpfs mounts (its own are 0700).
_MOUNT_PARENT_MODE = "0755"
#: Files copied into the sandbox (credentials): readable by the run, whatever its uid.
_DATA_MODE = "0444"
_PROBE_TIMEOUT = 30.0
_HOLD_TIMEOUT = 30.0
_HOST_CWD = Path("/")
#: Where /app/static lives: a tmpfs of the sandbox when the host's has no /app/static.
STATIC_APP = STATIC_DIR.parent
_CLEANUP_WAIT = 2.0


@dataclass(frozen=True)
class SandboxSupport:
    """What `probe_sandbox` found: the programs to use, and whether ``--unshare-net`` works."""

    bwrap: str
    env: str
    #: Why a sandbox without network cannot be made here; None when it can.
    network_error: str | None = None
    #: util-linux's setpriv, which switches a run to its own uid (None: not installed).
    setpriv: str | None = None


def sandbox_support() -> SandboxSupport:
    """`probe_sandbox` for this process's PATH, once per process (failures too)."""
    found = _cached_probe(os.environ.get("PATH"))
    if isinstance(found, str):
        raise RunError(found)
    return found


@functools.lru_cache(maxsize=8)
def _cached_probe(search_path: str | None) -> SandboxSupport | str:
    try:
        return probe_sandbox(search_path)
    except RunError as exc:
        return str(exc)


def probe_sandbox(search_path: str | None = None) -> SandboxSupport:
    """Find bwrap in ``search_path`` and run a minimal sandbox with it; RunError if it fails."""
    bwrap = shutil.which("bwrap", path=search_path)
    if bwrap is None:
        raise RunError(
            "the sandbox runtime needs bubblewrap (bwrap), which is not installed here "
            f"(not found in PATH): {INSTALL_HINT}"
        )
    env = _coreutils_env(search_path)
    outer = [env, "--ignore-signal=TERM", bwrap, *host_root(), *OWN_MOUNTS, "--remount-ro", "/"]
    outer += [*CONFINE, "--chdir", "/"]
    inner = ["--", env, "--default-signal=TERM", "-u", "PWD", "--", env]
    setpriv = shutil.which("setpriv", path=search_path)
    error = _try([*outer, "--unshare-net", *inner])
    if error is None:
        return SandboxSupport(bwrap, env, setpriv=setpriv)
    without_net = _try([*outer, *inner])
    if without_net is not None:
        raise RunError(
            f"bubblewrap ({bwrap}) is installed but cannot create a sandbox here: "
            f"{without_net}. {_USERNS_HINT}"
        )
    return SandboxSupport(bwrap, env, network_error=error, setpriv=setpriv)


def _coreutils_env(search_path: str | None) -> str:
    env = (
        "/usr/bin/env"
        if os.access("/usr/bin/env", os.X_OK)
        else shutil.which("env", path=search_path)
    )
    if env is None:
        raise RunError("the sandbox runtime needs env (GNU coreutils), which is not installed here")
    error = _try([env, "--ignore-signal=TERM", "--default-signal=TERM", "-u", "PWD"])
    if error is not None:
        raise RunError(
            f"the sandbox runtime needs GNU coreutils 8.31 or later ({env} "
            f"--ignore-signal/--default-signal): {error}"
        )
    return env


def _try(argv: list[str]) -> str | None:
    """Run ``argv`` with an empty environment; None if it succeeds, else why not."""
    try:
        done = subprocess.run(
            argv,
            env={},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    detail = done.stderr.decode(errors="replace").strip()
    return detail or f"exited with code {done.returncode}"


class SandboxProcess(Process):
    """A sandboxed run: the `Process` of bwrap, which leads the run's process group.

    ``notes`` (limits that could not be applied as asked) are the first lines
    of the run's output. The run's cgroups are removed once it has ended.
    """

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        notes: Sequence[str] = (),
        cgroup: RunCgroup | None = None,
        containment: Containment | None = None,
    ) -> None:
        super().__init__(proc, containment)
        self.notes = tuple(notes)
        self.cgroup = cgroup
        self._cleanup: asyncio.Task[None] | None = None
        if cgroup is not None:
            task = asyncio.create_task(_remove_when_done(proc, cgroup), name="sandbox cgroup")
            _cleanups.add(task)
            task.add_done_callback(_cleanups.discard)
            self._cleanup = task

    async def pump(self, sink: Sink) -> int:
        for note in self.notes:
            await sink(f"corral: {note}\n".encode())
        code = await super().pump(sink)
        if self._cleanup is not None:
            # Normally done within milliseconds; past that it carries on by itself.
            await asyncio.wait([self._cleanup], timeout=_CLEANUP_WAIT)
        return code


_cleanups: set[asyncio.Task[None]] = set()


async def _remove_when_done(proc: asyncio.subprocess.Process, cgroup: RunCgroup) -> None:
    await proc.wait()
    # bwrap has exited; the sandbox's pid 1 is being killed (--die-with-parent).
    delay = 0.01
    for _ in range(40):
        if cgroup.remove():
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
    log.warning(
        "could not remove the run's cgroup %s: a process is still in it",
        ", ".join(map(str, cgroup.dirs)),
    )


class SandboxRuntime:
    """Starts each run under bubblewrap (see the module doc and docs/sandbox.md).

    ``spec.cwd`` is the working directory inside the sandbox (normally the
    target of a writable bind); the caller creates the host directories it binds.
    """

    name = "sandbox"

    def __init__(self, support: SandboxSupport | None = None) -> None:
        self.support = support if support is not None else sandbox_support()

    def argv(
        self,
        spec: LaunchSpec,
        *,
        hold: tuple[int, int] | None = None,
        data: Sequence[int] = (),
    ) -> list[str]:
        """The command line that runs ``spec`` in a sandbox (``hold``: info and block fds;
        ``data``: a readable fd for each of ``spec.isolation.files``, in order)."""
        iso = spec.isolation or Isolation()
        if not spec.argv:
            raise RunError("nothing to run: the command is empty")
        if "=" in spec.argv[0]:
            raise RunError(f"cannot run {spec.argv[0]!r} in the sandbox: '=' in a program name")
        _absolute(spec.cwd, "the working directory")
        switch = self._switch(iso)
        args = [self.support.env, "--ignore-signal=TERM", self.support.bwrap]
        args += filesystem(iso, data, spec.static)
        args += CONFINE
        if switch:
            args += _SWITCH_CAPS
        if not iso.network:
            args.append("--unshare-net")
        # bwrap, uid 0 without capabilities, may not enter a directory of the run's uid:
        # then the run's env changes to it, once it is that uid.
        chdir = [f"--chdir={spec.cwd}"] if switch else []
        args += ["--chdir", "/" if switch else str(spec.cwd)]
        if hold is not None:
            args += ["--info-fd", str(hold[0]), "--block-fd", str(hold[1])]
        pwd = ["--", f"PWD={spec.env['PWD']}"] if "PWD" in spec.env else ["-u", "PWD", "--"]
        inner = [self.support.env, "--default-signal=TERM", *chdir, *pwd, *spec.argv]
        return [*args, "--", *switch, *inner]

    def _switch(self, iso: Isolation) -> list[str]:
        """The ``setpriv`` that makes the run's processes ``iso.uid``/``iso.gid``, or []."""
        if iso.uid is None:
            return []
        gid = iso.uid if iso.gid is None else iso.gid
        if os.geteuid() != 0:
            raise RunError(
                f"cannot run the sandbox as uid {iso.uid}: only corral running as root "
                "can give a run a uid of its own"
            )
        if self.support.setpriv is None:
            raise RunError(
                "the sandbox runtime needs setpriv (util-linux) to run each run as a uid "
                "of its own when corral runs as root: apt-get install -y util-linux"
            )
        return [
            self.support.setpriv,
            f"--reuid={iso.uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]

    async def launch(self, spec: LaunchSpec) -> Process:
        if spec.before is not None:
            spec.before()
        iso = spec.isolation or Isolation()
        if not iso.network and self.support.network_error is not None:
            raise RunError(
                'network = "none" needs a network namespace, which bubblewrap cannot '
                f"create here: {self.support.network_error}"
            )
        with _data_fds(iso) as data:
            if iso.memory_bytes is None and iso.cpus is None:
                return await self._launch_plain(spec, data=data)
            return await self._launch_limited(spec, iso, limit_support(), data)

    async def _launch_plain(
        self, spec: LaunchSpec, notes: Sequence[str] = (), *, data: Sequence[int] = ()
    ) -> SandboxProcess:
        containment = contain_for(spec.env)
        proc = await start_process(
            self.argv(spec, data=data),
            cwd=_HOST_CWD,
            env=spec.env,
            stdin=spec.stdin,
            pass_fds=data,
            containment=containment,
        )
        await feed_stdin(proc, spec.stdin)
        return SandboxProcess(proc, notes, containment=containment)

    async def _launch_limited(
        self, spec: LaunchSpec, iso: Isolation, support: LimitSupport, data: Sequence[int] = ()
    ) -> SandboxProcess:
        notes = _limit_notes(iso, support)
        rlimit = iso.memory_bytes if support.memory is None else None
        cgroup = RunCgroup.create(support, iso.memory_bytes, iso.cpus)
        if cgroup is None and rlimit is None:
            # only notes: nothing to apply
            return await self._launch_plain(spec, notes, data=data)
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        containment = contain_for(spec.env)
        try:
            try:
                proc = await start_process(
                    self.argv(spec, hold=(info_w, block_r), data=data),
                    cwd=_HOST_CWD,
                    env=spec.env,
                    stdin=spec.stdin,
                    pass_fds=(info_w, block_r, *data),
                    containment=containment,
                )
            finally:
                os.close(info_w)
                os.close(block_r)
        except BaseException:
            os.close(info_r)
            os.close(block_w)
            if cgroup is not None:
                cgroup.remove()
            raise
        # From here the SandboxProcess owns the cgroup: it is removed once bwrap is gone.
        process = SandboxProcess(proc, notes, cgroup, containment)
        try:
            await _confine_held(proc, info_r, cgroup, rlimit)
            os.write(block_w, b"\n")  # let the sandbox start the run
        finally:
            os.close(info_r)
            os.close(block_w)
        await feed_stdin(proc, spec.stdin)
        return process


async def _confine_held(
    proc: asyncio.subprocess.Process, info_fd: int, cgroup: RunCgroup | None, rlimit: int | None
) -> None:
    """Apply the limits to the held sandbox; on failure, kill it before it is let go."""
    try:
        child = _child_pid(await _read_to_eof(info_fd, _HOLD_TIMEOUT))
        if child is None:
            return  # bwrap failed before the sandbox existed; its message is in the output
        try:
            if cgroup is not None:
                cgroup.enter(child)
            if rlimit is not None:
                set_address_space_limit(child, rlimit)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return  # the sandbox failed to set up and is gone; its message is in the output
            raise RunError(f"could not apply the run's limits: {exc}") from exc
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.shield(proc.wait())
        raise


def _child_pid(info: bytes) -> int | None:
    try:
        pid = json.loads(info)["child-pid"]
    except (ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) else None


async def _read_to_eof(fd: int, timeout: float) -> bytes:
    """Everything written to the pipe ``fd`` until its writers close it."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    except TimeoutError:
        raise RunError(f"bubblewrap did not set up the sandbox within {timeout:g} s") from None
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


def _limit_notes(iso: Isolation, support: LimitSupport) -> list[str]:
    """Lines for the run's log about limits that are not applied as a cgroup would."""
    notes: list[str] = []
    if iso.memory_bytes is not None and support.memory is None:
        notes.append(
            f"memory limit {iso.memory_bytes} bytes applied as RLIMIT_AS (the address "
            "space of each process, not the run's total): no cgroup is available here ("
            f"{support.why_not.get('memory', '')})"
        )
    if iso.cpus is not None and support.cpu is None:
        notes.append(
            f"warning: cpus = {iso.cpus:g} is NOT enforced: only a cgroup can limit CPU "
            f"and none is available here ({support.why_not.get('cpu', '')})"
        )
        _warn_cpu_once(support.why_not.get("cpu", ""))
    return notes


@functools.cache
def _warn_cpu_once(why: str) -> None:
    log.warning(
        "CPU limits of sandboxed runs are not enforced here: %s (see docs/sandbox.md)",
        why,
        extra={"action": "sandbox_cpu_unlimited"},
    )


def host_root(skip: frozenset[str] = frozenset()) -> list[str]:
    """The host's ``/``, entry by entry, read-only (symlinks as symlinks); not /dev, /proc,
    /tmp, nor the entries named in ``skip``."""
    return _entries_of(Path("/"), _OWN | skip)


def _entries_of(directory: Path, skip: frozenset[str] = frozenset()) -> list[str]:
    """Each entry of the host's ``directory`` at its own path, read-only (symlinks as
    symlinks)."""
    args: list[str] = []
    with os.scandir(directory) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name in skip:
                continue
            path = str(directory / entry.name)
            if entry.is_symlink():
                args += ["--symlink", os.readlink(path), path]
            else:
                args += ["--ro-bind", path, path]
    return args


def filesystem(
    iso: Isolation, data: Sequence[int] = (), static: StaticView | None = None
) -> list[str]:
    """The mounts: the host's root, the sandbox's own /dev, /proc and /tmp, the hidden
    paths, the run's ``static`` view at /app/static (see `_static_mounts`), the binds and
    the data files in order, then the hidden directories and the root made read-only
    (``data``: an fd for each of ``iso.files``).

    A bind may not show a hidden path: its source, symlinks resolved, is refused when it
    is a hidden path or contains one. With ``iso.uid``, a bind target behind a host
    directory the run could not enter (``/root``, a project's ``.corral``) gets an empty
    tmpfs over that directory, so corral's own binds (the in-run commands, the
    interpreter that runs them) stay reachable while the rest of it stays out of sight.
    """
    for path in iso.hide:
        _absolute(path, "a hidden path")
    for bind in iso.binds:
        _absolute(bind.source, "a bind source")
        _absolute(bind.target, "a bind target")
        if not bind.source.exists():
            raise RunError(
                f"cannot bind {bind.source} into the sandbox (at {bind.target}): "
                "it does not exist on the host"
            )
    if len(data) != len(iso.files):
        raise RunError(f"{len(iso.files)} files to copy into the sandbox but {len(data)} fds")
    hidden = [path.resolve() for path in iso.hide if path.exists()]
    for bind in iso.binds:
        _refuse_showing(bind, hidden)
    extra = [STATIC_DIR] if static is not None else []
    covers = _covers(iso, extra) if iso.uid is not None else []
    dirs = _outermost([path for path in [*hidden, *covers] if path.is_dir()])
    files = [path for path in hidden if not path.is_dir() and not _under(path, dirs)]
    app = static is not None and _app_needs_cover(dirs)
    args = [*host_root(frozenset({"app"}) if app else frozenset()), *OWN_MOUNTS]
    for directory in dirs:
        args += ["--tmpfs", str(directory)]
    for path in files:
        # A device node on a nodev mount: opening it fails with EACCES.
        args += ["--ro-bind", "/dev/null", str(path)]
    # Where bwrap can create mount points: its tmpfs mounts and writable binds
    # (None); under a read-only bind only what exists in its source (the source).
    tmpfs = [Path("/tmp"), *dirs]
    if static is not None:
        args += _static_mounts(static, hidden, dirs, app)
        tmpfs += [STATIC_APP] if app else []  # /app/static itself is read-only by now
    placed: list[tuple[Path, Path | None]] = [(mount, None) for mount in tmpfs]
    for bind in iso.binds:
        _check_mount_point(bind.target, placed)
        args += _mount_parents(bind.target, placed, tmpfs)
        kind = "--bind" if bind.writable else "--ro-bind"
        args += [kind, str(bind.source.resolve()), str(bind.target)]
        placed.append((bind.target, None if bind.writable else bind.source))
    for copied, fd in zip(iso.files, data, strict=True):
        _absolute(copied.target, "a file copied into the sandbox")
        _check_mount_point(copied.target, placed)
        args += _mount_parents(copied.target, placed, tmpfs)
        args += ["--perms", _DATA_MODE, "--ro-bind-data", str(fd), str(copied.target)]
    for directory in [*dirs, *([STATIC_APP] if app else [])]:
        args += ["--remount-ro", str(directory)]
    return [*args, "--remount-ro", "/"]


def _app_needs_cover(dirs: Sequence[Path]) -> bool:
    """Whether the host's /app is a directory without /app/static (a Docker image with
    WORKDIR /app, say): the sandbox then has a tmpfs at /app holding /app's entries,
    where bwrap can make /app/static. RunError if /app cannot hold it at all."""
    if _under(STATIC_DIR, dirs) or not os.path.lexists(STATIC_APP):
        return False  # in a tmpfs of the sandbox: bwrap makes the directories
    if STATIC_APP.is_symlink() or not STATIC_APP.is_dir():
        raise RunError(
            f"cannot make {STATIC_DIR} in the sandbox: {STATIC_APP} on the host is not a "
            f"directory; create {STATIC_DIR} on the host (mkdir -p {STATIC_DIR})"
        )
    if STATIC_DIR.is_symlink() or (os.path.lexists(STATIC_DIR) and not STATIC_DIR.is_dir()):
        raise RunError(
            f"cannot make {STATIC_DIR} in the sandbox: it is not a directory on the host; "
            "make it an empty directory (or remove it)"
        )
    return not STATIC_DIR.is_dir()


def _static_mounts(
    static: StaticView, hidden: Sequence[Path], dirs: Sequence[Path], app: bool
) -> list[str]:
    """The run's /app/static: a tmpfs of its own (never a directory on the host, which a
    run could have changed), each directory and file entry bound read-only from the
    source found when the run was planned (checked again now), each symlinked entry a
    symlink with the same text (resolved in the sandbox, as the run's uid: a bind of its
    target, made as root, would show what the run may not read); then made read-only."""
    static.check(links=False)
    args: list[str] = []
    if app:  # /app's own entries in a tmpfs, where /app/static can be made
        args += ["--perms", _MOUNT_PARENT_MODE, "--tmpfs", str(STATIC_APP)]
        args += _entries_of(STATIC_APP)
    else:
        args += _mount_parents(STATIC_DIR, [(d, None) for d in dirs], dirs)
    args += ["--perms", _MOUNT_PARENT_MODE, "--tmpfs", str(STATIC_DIR)]
    for entry in static.entries:
        target = str(STATIC_DIR / entry.name)
        if entry.link is not None:
            args += ["--symlink", entry.link, target]
        elif entry.source is not None:
            _refuse_static(entry.source, target, hidden)
            args += ["--ro-bind", str(entry.source), target]
    return [*args, "--remount-ro", str(STATIC_DIR)]


def _refuse_static(source: Path, target: str, hidden: Sequence[Path]) -> None:
    """RunError if ``source`` is, holds or is inside a hidden path."""
    for path in hidden:
        if path == source or path in source.parents or source in path.parents:
            raise RunError(
                f"cannot show {source} at {target} in the sandbox: it is, holds or is "
                f"inside {path}, which is hidden from runs; move it out of there"
            )


def _refuse_showing(bind: Bind, hidden: Sequence[Path]) -> None:
    """RunError if ``bind`` would show a hidden path (its source is one or contains one)."""
    source = bind.source.resolve()
    for path in hidden:
        if path == source or source in path.parents:
            shown = "" if source == bind.source else f" (which resolves to {source})"
            raise RunError(
                f"cannot bind {bind.source}{shown} into the sandbox at {bind.target}: "
                f"it would show {path}, which is hidden from runs"
            )


def _under(path: Path, dirs: Sequence[Path]) -> bool:
    return any(directory in path.parents for directory in dirs)


def _outermost(dirs: Sequence[Path]) -> list[Path]:
    """``dirs`` without duplicates and without those inside another, shortest first."""
    kept: list[Path] = []
    for directory in sorted(set(dirs), key=lambda d: (len(d.parts), str(d))):
        if not _under(directory, kept):
            kept.append(directory)
    return kept


def _covers(iso: Isolation, extra: Sequence[Path] = ()) -> list[Path]:
    """Host directories that keep a run of another uid from its binds' targets (and from
    ``extra``): for each target outside /tmp, its first ancestor that others may not
    enter."""
    covers: list[Path] = []
    for target in [*(bind.target for bind in iso.binds), *extra]:
        if target == Path("/tmp") or Path("/tmp") in target.parents:
            continue
        for ancestor in reversed(target.parents[:-1]):  # from the top, "/" left out
            try:
                mode = ancestor.stat().st_mode
            except OSError:
                break  # not on the host: a mount point bwrap makes in a tmpfs
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                covers.append(ancestor)
                break
    return covers


def _mount_parents(
    target: Path, placed: Sequence[tuple[Path, Path | None]], tmpfs: Sequence[Path]
) -> list[str]:
    """``--dir`` for the directories leading to ``target`` inside a tmpfs of the sandbox,
    so that they are 0755 (enterable by the run) rather than bwrap's 0700."""
    mount: Path | None = None
    for path, _ in reversed(placed):
        if path == target or path in target.parents:
            mount = path
            break
    if mount is None:  # in the root tmpfs: a new top-level directory
        top = Path("/", *target.parts[1:2])
        if top.exists() or top == target:
            return []
        chain = [top, *(p for p in reversed(target.parents) if top in p.parents)]
    elif mount in tmpfs and mount != target:
        chain = [p for p in reversed(target.parents) if mount in p.parents]
    else:
        return []
    args: list[str] = []
    for directory in chain:
        args += ["--perms", _MOUNT_PARENT_MODE, "--dir", str(directory)]
    return args


@contextlib.contextmanager
def _data_fds(iso: Isolation) -> Iterator[tuple[int, ...]]:
    """A memory file holding each of ``iso.files``, open for the launch, closed after."""
    fds: list[int] = []
    try:
        for file in iso.files:
            fd = os.memfd_create("corral-data", os.MFD_CLOEXEC)
            fds.append(fd)
            view = memoryview(file.content)
            while view:
                view = view[os.write(fd, view) :]
            os.lseek(fd, 0, os.SEEK_SET)
        yield tuple(fds)
    finally:
        for fd in fds:
            os.close(fd)


def _check_mount_point(target: Path, placed: Sequence[tuple[Path, Path | None]]) -> None:
    """RunError if bwrap would have to create ``target`` in a read-only directory."""
    for mount, source in reversed(placed):  # the last mount over target decides
        if target.is_relative_to(mount):
            if source is None or (source / target.relative_to(mount)).exists():
                return  # in a tmpfs or writable bind, or already in a read-only bind
            break
    else:
        top = Path("/", *target.parts[1:2])
        if not top.exists() or target.exists():
            return  # a new top-level directory (in the root tmpfs), or an existing path
    raise RunError(
        f"cannot bind at {target} in the sandbox: it does not exist, and "
        f"{target.parent} is read-only there; choose a target under /tmp, under a "
        "hidden path, in a new top-level directory, or one that exists"
    )


def _absolute(path: Path, what: str) -> None:
    if not path.is_absolute():
        raise RunError(f"{what} of the sandbox must be an absolute path, not {str(path)!r}")
