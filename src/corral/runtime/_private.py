"""A run's own ``/tmp`` and its ``/app/static`` on the host runtime.

Skills written for Action Llama clone into fixed paths such as ``/tmp/repo``: in
Action Llama's containers each run has its own ``/tmp``, so concurrent runs of one
agent never meet there. A host run gets the same where a mount namespace can be made
(corral runs as root): the process is born in a private mount namespace where a tmpfs
of its own is mounted on ``/app/static`` with the static view's sources bound
read-only in it, then the run's own directory (``<run>/.corral/tmp``, 0700) is bound on
``/tmp``. The namespace is made by a short-lived thread of corral's that calls
``unshare(2)`` and ``mount(2)`` itself and then starts the process (`PrivateMounts`):
a mount namespace belongs to a thread once it unshared it, and a child inherits its
parent thread's. No program runs before the run's own (an ``unshare`` and one ``mount``
process per mount cost 10-40 ms a process). Where processes are started on the event
loop (see _children) the same is done by ``unshare --mount`` and a ``/bin/sh`` script
before the program (`namespace_prefix`). Every process of the run (hooks, context injection, the
agent) gets a namespace of its own over the same directories, so they share that
``/tmp`` with each other. It prevents collisions; it is no wall (a host run is corral's
own user): the sandbox is the wall.

Where that cannot be arranged (corral is not root, ``unshare`` is missing or refused,
or something the run needs lives under the host's ``/tmp``), the run keeps the host's
``/tmp`` and only ``TMPDIR`` is private; corral logs why, once per reason.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import logging
import os
import shlex
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from corral.errors import RunError

_T = TypeVar("_T")

__all__ = [
    "STATIC_DIR",
    "MountSupport",
    "PrivateMounts",
    "StaticEntry",
    "StaticKind",
    "StaticView",
    "make_static",
    "mount_support",
    "namespace_prefix",
    "note_shared_tmp",
    "private_mounts",
    "probe_mounts",
    "tmp_blocked",
]

log = logging.getLogger("corral.run")

#: Where Action Llama's images hold the agent's files and the project's ``shared/``.
STATIC_DIR = Path("/app/static")
_TMP = Path("/tmp")
_PROBE_TIMEOUT = 10.0
#: $0: the run's tmp; $1: "1" for a static view ("" for none); $2: how many entries,
#: then a kind (d or f), a name and a source for each; then PWD handling as the
#: containment stub does (sh would export a PWD of its own), then the program. The view is
#: a tmpfs of the namespace's own, its entries bound read-only, all before /tmp is covered
#: (an entry may come from the host's /tmp).
#: ``{mount}`` (util-linux), ``{mkdir}``: by their full paths (the run's PATH is the run's).
_SCRIPT = (
    "s=$1; n=$2; shift 2; "
    'if [ -n "$s" ]; then {mount} -t tmpfs -o mode=0755 corral-static /app/static || exit 125; fi; '
    'while [ "$n" -gt 0 ]; do p="/app/static/$2"; '
    'if [ "$1" = d ]; then {mkdir} "$p"; else : >"$p"; fi && '
    '{mount} --bind -o ro "$3" "$p" || exit 125; shift 3; n=$((n - 1)); done; '
    'if [ -n "$s" ]; then {mount} -o remount,ro /app/static || exit 125; fi; '
    '{mount} --bind "$0" /tmp || exit 125; '
)
_PLAIN = 'unset PWD; exec "$@"'
_WITH_PWD = 'PWD=$1; export PWD; shift; exec "$@"'
#: The variables whose paths a run needs (corral's in-run commands and their shell setup);
#: other variables may well name paths in the run's own /tmp.
_NEEDED_VARIABLES = ("PATH", "BASH_ENV")


@dataclass(frozen=True)
class MountSupport:
    """Whether host runs can have a private mount namespace here."""

    unshare: str | None  # the program; None when namespaces cannot be used
    why_not: str = ""
    mount: str = "/bin/mount"
    mkdir: str = "/bin/mkdir"
    #: ``/app/static`` exists (as a mount point) on the host.
    static: bool = False

    def describe(self) -> str:
        if self.unshare is None:
            return f"host runs share the host's /tmp (only TMPDIR is private): {self.why_not}"
        extra = "" if self.static else " (/app/static: no mount point on the host)"
        return f"host runs get a private /tmp and /app/static in a mount namespace{extra}"


@functools.cache
def mount_support() -> MountSupport:
    """`probe_mounts`, once per process."""
    return probe_mounts()


def probe_mounts() -> MountSupport:
    """Can this process put a run in a mount namespace of its own with /tmp covered?"""
    if os.geteuid() != 0:
        return MountSupport(None, "corral does not run as root, so it cannot mount")
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if unshare is None or mount is None:
        return MountSupport(None, "unshare or mount (util-linux) is not installed")
    try:
        done = subprocess.run(
            [
                unshare,
                "--mount",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-c",
                f"{shlex.quote(mount)} -t tmpfs corral-probe /tmp",
            ],
            env={"PATH": os.defpath},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_PROBE_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return MountSupport(None, f"unshare failed: {exc}")
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        return MountSupport(None, f"a mount namespace cannot be made here: {detail}")
    mkdir = shutil.which("mkdir") or "/bin/mkdir"
    return MountSupport(unshare, mount=mount, mkdir=mkdir, static=_static_mount_point())


def _static_mount_point() -> bool:
    """Make the empty directory ``/app/static`` on the host, the mount point of the runs'
    static views (a mount namespace can cover a directory, not create one)."""
    try:
        STATIC_DIR.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        log.warning("no /app/static for host runs: cannot create %s: %s", STATIC_DIR, exc)
        return False
    return True


def _under_tmp(path: Path) -> bool:
    return path == _TMP or _TMP in path.parents


def _paths_in(env: Mapping[str, str]) -> Iterable[tuple[str, Path]]:
    for name in _NEEDED_VARIABLES:
        for part in env.get(name, "").split(os.pathsep):
            if part.startswith("/"):
                yield f"${name}", Path(part)


def tmp_blocked(cwd: Path, env: Mapping[str, str], reach: Iterable[Path]) -> str | None:
    """Why a private /tmp would hide something the run needs (it is under the host's
    /tmp), or None.

    Checked: the working directory, ``PATH`` and ``BASH_ENV`` (corral's in-run commands),
    and ``reach`` (what else corral gives the run: its agent folder, ``shared/``, its
    credentials, the interpreter of the in-run commands), each also resolved. Other
    variables are the run's own business: ``REPO=/tmp/repo`` means the run's /tmp.
    """
    if _under_tmp(cwd) or _under_tmp(Path(os.path.realpath(cwd))):
        return "the run directories (the project's .corral) are under /tmp"
    for name, path in [*_paths_in(env), *((str(path), path) for path in reach)]:
        for candidate in (path, Path(os.path.realpath(path))):
            if _under_tmp(candidate):
                return f"{name} ({path}) is under /tmp"
    return None


def namespace_prefix(
    support: MountSupport, tmp: Path, static: StaticView | None, env_pwd: str | None
) -> list[str]:
    """The command that runs the rest of argv with ``tmp`` on /tmp (and ``static`` on
    /app/static) in a private mount namespace."""
    assert support.unshare is not None
    head = [support.unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c"]
    shown: list[str] = ["", "0"]
    if static is not None and support.static:
        static.check(links=True)
        # A host run is corral's own user: a linked entry is bound from where it leads.
        bound = [entry for entry in static.entries if entry.source is not None]
        shown = ["1", str(len(bound))]
        for entry in bound:
            shown += [entry.kind.value, entry.name, str(entry.source)]
    script = _SCRIPT.format(mount=shlex.quote(support.mount), mkdir=shlex.quote(support.mkdir))
    if env_pwd is None:
        return [*head, script + _PLAIN, str(tmp), *shown]
    return [*head, script + _WITH_PWD, str(tmp), *shown, env_pwd]


def private_mounts(support: MountSupport, tmp: Path, static: StaticView | None) -> PrivateMounts:
    """What `PrivateMounts.enter` mounts for a run with ``tmp`` on /tmp (and ``static`` on
    /app/static): the same as `namespace_prefix`'s script, checked the same way."""
    assert support.unshare is not None
    entries: tuple[tuple[StaticKind, str, Path], ...] | None = None
    if static is not None and support.static:
        static.check(links=True)
        # A host run is corral's own user: a linked entry is bound from where it leads.
        entries = tuple(
            (entry.kind, entry.name, entry.source)
            for entry in static.entries
            if entry.source is not None
        )
    return PrivateMounts(tmp, entries)


# Linux's flags (<sched.h>, <sys/mount.h>); the values are the kernel's ABI.
_CLONE_FS = 0x00000200
_CLONE_NEWNS = 0x00020000
_MS_RDONLY = 0x1
_MS_REMOUNT = 0x20
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
#: statvfs's ST_* flags of a mount and the MS_* flag that keeps each on a remount.
_KEPT_FLAGS = ((0x2, 0x2), (0x4, 0x4), (0x8, 0x8), (0x400, 0x400), (0x800, 0x800),
               (0x1000, 0x200000))  # fmt: skip


@functools.cache
def _libc(keep_gil: bool = True) -> ctypes.CDLL:
    """libc's unshare and mount. With ``keep_gil`` a call keeps the GIL: most take
    microseconds, and handing the GIL back and taking it again could wait out the
    interpreter's switch interval (5 ms) on each call while the event loop is busy. The
    two calls that walk the whole mount table (their time grows with the host's mounts)
    let the loop go on meanwhile."""
    libc = (ctypes.PyDLL if keep_gil else ctypes.CDLL)(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                           ctypes.c_ulong, ctypes.c_char_p]  # fmt: skip
    return libc


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None, *, keep_gil: bool = True) -> None:  # fmt: skip
    encode = os.fsencode
    done = _libc(keep_gil).mount(
        None if source is None else encode(source),
        encode(target),
        None if fstype is None else encode(fstype),
        flags,
        None if data is None else encode(data),
    )
    if done != 0:
        errno = ctypes.get_errno()
        raise RunError(f"could not give the run its own /tmp and {STATIC_DIR}: "
                       f"mount on {target}: {os.strerror(errno)}")  # fmt: skip


def _mount_point(path: str, kind: StaticKind) -> None:
    """The empty directory or file at ``path`` an entry of the view is bound on."""
    try:
        if kind is StaticKind.DIRECTORY:
            os.mkdir(path)
        else:  # no descriptor: one open for writing, inherited by a process another
            # thread is starting, would make the view's read-only remount busy
            os.mknod(path, stat.S_IFREG | 0o666)
    except OSError as exc:
        raise RunError(f"could not show {path} to the run: {exc.strerror}") from exc


def _kept_flags(path: str) -> int:
    """The MS_* flags (nosuid, nodev, noexec, atime) of the mount at ``path``."""
    have = os.statvfs(path).f_flag
    return functools.reduce(lambda kept, pair: kept | (pair[1] if have & pair[0] else 0),
                            _KEPT_FLAGS, 0)  # fmt: skip


@dataclass(frozen=True)
class PrivateMounts:
    """A run's own /tmp (and /app/static) in a mount namespace made for one process.

    `start` calls ``spawn`` in a new thread of corral's that first enters a mount
    namespace of its own (``unshare(CLONE_NEWNS)``, which unshares the thread's
    filesystem attributes too, so the rest of corral is untouched) and mounts there: the
    process it starts is born in that namespace, and the thread ends with it handed over.
    """

    tmp: Path
    #: (kind, name, source) of each entry of /app/static; None: no view.
    static: tuple[tuple[StaticKind, str, Path], ...] | None = None

    def enter(self) -> None:
        """Make the calling thread's mount namespace and mount the run's view in it (what
        `namespace_prefix`'s script does); RunError when a step fails."""
        if _libc(keep_gil=False).unshare(_CLONE_NEWNS | _CLONE_FS) != 0:
            errno = ctypes.get_errno()
            raise RunError(f"could not give the run its own /tmp: unshare: {os.strerror(errno)}")
        # nothing propagates to or from the host
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE, keep_gil=False)
        if self.static is not None:
            view = str(STATIC_DIR)
            _mount("corral-static", view, "tmpfs", 0, "mode=0755")
            for kind, name, source in self.static:
                shown = f"{view}/{name}"
                _mount_point(shown, kind)
                _mount(str(source), shown, None, _MS_BIND)
                flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _kept_flags(shown)
                _mount(None, shown, None, flags)
            _mount(None, view, None, _MS_REMOUNT | _MS_RDONLY)
        _mount(str(self.tmp), str(_TMP), None, _MS_BIND)

    def start(self, spawn: Callable[[], _T]) -> _T:
        """``spawn()`` (which starts the process) called in a new thread in the run's
        mount namespace; what it returned, or what it raised."""
        done: list[_T] = []
        failed: list[BaseException] = []

        def inside() -> None:
            try:
                self.enter()
                done.append(spawn())
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=inside, name="corral-namespace", daemon=True)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return done[0]


@functools.cache
def note_shared_tmp(why: str) -> None:
    """Say once per reason that host runs share the host's /tmp."""
    log.warning(
        "host runs share the host's /tmp (their TMPDIR is private): %s; skills that clone "
        "into fixed /tmp paths may collide across runs (see docs/sandbox.md)",
        why,
        extra={"action": "host_tmp_shared"},
    )


class StaticKind(enum.Enum):
    """What an entry of ``/app/static`` shows: a directory or a file."""

    DIRECTORY = "d"
    FILE = "f"


@dataclass(frozen=True)
class StaticEntry:
    """One entry of ``/app/static``, found once when the run is planned.

    ``source``: the host path it shows, every symlink resolved (None for a dangling
    link), of ``kind``, with the device and inode it had then (``identity``). ``link``:
    the link text when the agent-folder entry is a symbolic link.
    """

    name: str
    kind: StaticKind
    source: Path | None
    identity: tuple[int, int] = (0, 0)
    link: str | None = None

    def check(self) -> None:
        """RunError unless ``source`` is still what it was when the run was planned: the
        same path, with no symlink on it, to the same device and inode (a folder swapped
        for a link since would show the run something else)."""
        if self.source is None:
            return
        try:
            real = os.path.realpath(self.source, strict=True)
            now = os.stat(self.source)
        except OSError as exc:
            raise RunError(
                f"cannot show {self.source} at {STATIC_DIR / self.name}: {exc.strerror}; "
                "start the run again"
            ) from exc
        if real != str(self.source) or (now.st_dev, now.st_ino) != self.identity:
            raise RunError(
                f"{self.source} changed since the run was planned (it is no longer the "
                f"{self.kind.name.lower()} it was): refusing to show it at "
                f"{STATIC_DIR / self.name}; start the run again"
            )


@dataclass(frozen=True)
class StaticView:
    """What a run sees at ``/app/static``: a fresh read-only tmpfs holding each of
    ``entries``. No directory of the view exists on the host: nothing a run can write
    is read when a process of the run is launched."""

    entries: tuple[StaticEntry, ...] = ()

    def check(self, *, links: bool) -> None:
        """RunError if a source shown by a bind changed since the run was planned
        (``links``: symlinked entries are bound from their targets too)."""
        for entry in self.entries:
            if links or entry.link is None:
                entry.check()


def make_static(agent_dir: Path, shared_dir: Path | None) -> StaticView:
    """The run's view of ``/app/static``: each entry of the agent's folder and ``shared``
    (the project's shared folder, resolved, which wins over an agent entry of that name),
    as Action Llama's image holds the agent's files and ``shared/``. Sources are
    resolved here, once; the runtimes check them again at each launch.
    """
    entries: dict[str, StaticEntry] = {}
    if agent_dir.is_dir():
        for entry in agent_dir.resolve().iterdir():
            made = _entry(entry.name, entry)
            if made is not None:
                entries[entry.name] = made
    if shared_dir is not None and shared_dir.is_dir():
        made = _entry("shared", shared_dir.resolve())
        if made is not None:
            entries["shared"] = made
    return StaticView(tuple(entries[name] for name in sorted(entries)))


def _entry(name: str, path: Path) -> StaticEntry | None:
    """``path`` as an entry, or None (gone, a socket, a fifo, a device)."""
    link: str | None = None
    try:
        if path.is_symlink():
            link = os.readlink(path)
        real = Path(os.path.realpath(path, strict=True))
        found = os.stat(real)
    except OSError:
        if link is None:
            return None  # gone since it was listed
        return StaticEntry(name, StaticKind.FILE, None, link=link)  # dangling
    if stat.S_ISDIR(found.st_mode):
        kind = StaticKind.DIRECTORY
    elif stat.S_ISREG(found.st_mode):
        kind = StaticKind.FILE
    else:
        return None
    return StaticEntry(name, kind, real, (found.st_dev, found.st_ino), link)
