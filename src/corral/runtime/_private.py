"""A run's own ``/tmp`` and its ``/app/static`` on the host runtime.

Skills written for Action Llama clone into fixed paths such as ``/tmp/repo``: in
Action Llama's containers each run has its own ``/tmp``, so concurrent runs of one
agent never meet there. A host run gets the same where a mount namespace can be made
(corral runs as root): the process enters a private mount namespace before its program
starts (``unshare --mount``, through the same kind of ``/bin/sh`` stub that puts it in
its cgroup), the run's own directory (``<run>/.corral/tmp``, 0700) is bound on ``/tmp``
and its static view read-only on ``/app/static``. Every process of the run (hooks,
context injection, the agent) gets a namespace of its own over the same directories,
so they share that ``/tmp`` with each other and with nothing else.

Where that cannot be arranged (corral is not root, ``unshare`` is missing or refused,
or something the run needs lives under the host's ``/tmp``), the run keeps the host's
``/tmp`` and only ``TMPDIR`` is private; corral logs why, once per reason.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "STATIC_DIR",
    "MountSupport",
    "StaticView",
    "make_static",
    "mount_support",
    "namespace_prefix",
    "note_shared_tmp",
    "probe_mounts",
    "tmp_blocked",
]

log = logging.getLogger("corral.run")

#: Where Action Llama's images hold the agent's files and the project's ``shared/``.
STATIC_DIR = Path("/app/static")
_TMP = Path("/tmp")
_PROBE_TIMEOUT = 10.0
#: $0: the run's tmp; $1: its static view ("" for none); $2: how many entries, then a
#: name and a source for each; then PWD handling as the containment stub does (sh would
#: export a PWD of its own), then the program.
#: ``{mount}``: util-linux's mount by its full path (the run's PATH is the run's).
_SCRIPT = (
    '{mount} --bind "$0" /tmp || exit 125; s=$1; n=$2; shift 2; '
    'if [ -n "$s" ]; then {mount} --bind -o ro "$s" /app/static || exit 125; fi; '
    'while [ "$n" -gt 0 ]; do '
    '{mount} --bind -o ro "$2" "/app/static/$1" || exit 125; shift 2; n=$((n - 1)); done; '
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
    return MountSupport(unshare, mount=mount, static=_static_mount_point())


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
        shown = [str(static.root), str(len(static.entries))]
        for name, source in static.entries:
            shown += [name, str(source)]
    script = _SCRIPT.format(mount=shlex.quote(support.mount))
    if env_pwd is None:
        return [*head, script + _PLAIN, str(tmp), *shown]
    return [*head, script + _WITH_PWD, str(tmp), *shown, env_pwd]


@functools.cache
def note_shared_tmp(why: str) -> None:
    """Say once per reason that host runs share the host's /tmp."""
    log.warning(
        "host runs share the host's /tmp (their TMPDIR is private): %s; skills that clone "
        "into fixed /tmp paths may collide across runs (see docs/sandbox.md)",
        why,
        extra={"action": "host_tmp_shared"},
    )


@dataclass(frozen=True)
class StaticView:
    """What a run sees at ``/app/static``: ``root`` (a directory holding an empty mount
    point for each entry) with each of ``entries`` (name, host source) bound read-only
    over its mount point. Binds, not links: a link would lead a host run to the writable
    original; nothing is copied per run either."""

    root: Path
    entries: tuple[tuple[str, Path], ...] = ()


def make_static(
    target: Path, agent_dir: Path, shared_dir: Path | None, owner: tuple[int, int] | None = None
) -> StaticView:
    """The run's view of ``/app/static``, made at ``target``: each entry of the agent's
    folder and ``shared`` (the project's shared folder, which wins over an agent entry of
    that name), as Action Llama's image holds the agent's files and ``shared/``.

    Private to the run as the rest of its corral files (0700, 0600; ``owner``'s, the uid
    and gid of a sandboxed run of its own): the binds over the mount points show the
    sources with their own modes.
    """
    sources: dict[str, Path] = {}
    if agent_dir.is_dir():
        for entry in agent_dir.iterdir():
            sources[entry.name] = entry.resolve()
    if shared_dir is not None and shared_dir.is_dir():
        sources["shared"] = shared_dir.resolve()
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    made = [target]
    entries = []
    for name, source in sorted(sources.items()):
        point = target / name
        if source.is_dir():
            point.mkdir(mode=0o700, exist_ok=True)
        elif source.is_file():
            point.touch(mode=0o600, exist_ok=True)
        else:
            continue  # gone, a socket, a dangling link: nothing to show
        made.append(point)
        entries.append((name, source))
    if owner is not None:
        for path in made:
            os.chown(path, *owner)
    return StaticView(target, tuple(entries))
