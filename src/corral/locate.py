"""Finding the project a command is about, and corral's own directory in the home."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from corral.errors import UsageError

__all__ = [
    "STATE_DIR_MODE",
    "STATE_FILE_MODE",
    "corral_home",
    "find_project_root",
    "open_private",
    "private_dirs",
    "resolve_project_root",
    "state_dir",
    "write_private_in",
]

#: Modes of corral's state (a project's ``.corral/``, its store file, logs, run
#: directories and token; the credential store): only corral's own user may read it.
STATE_DIR_MODE = 0o700
STATE_FILE_MODE = 0o600


def corral_home() -> Path:
    """``$CORRAL_HOME``, else ``~/.corral``: environments and the credential store live here."""
    home = os.environ.get("CORRAL_HOME")
    return Path(home).expanduser() if home else Path.home() / ".corral"


def find_project_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` that looks like a corral project.

    An agent's folder (``agents/<name>/``) has a ``config.toml`` of its own, so a
    directory directly under an ``agents/`` folder of a project is never taken for the
    project: a command run inside ``agents/dev/`` (or deeper) finds the project above it.

    Like git's ``safe.directory``, the search stops at a directory above ``start`` that
    another user could have planted a project in (see :func:`unsafe_parent`).
    """
    return _search(start)[0]


def _search(start: Path) -> tuple[Path | None, str | None]:
    """The project found from ``start``, or None and why the search stopped early."""
    for candidate in (start, *start.parents):
        reason = unsafe_parent(candidate, first=candidate == start)
        if reason is not None:
            return None, reason
        if _is_agent_dir(candidate):
            continue
        if (candidate / "agents").is_dir() or (candidate / "config.toml").is_file():
            return candidate, None
    return None, None


def unsafe_parent(candidate: Path, *, first: bool) -> str | None:
    """Why ``candidate`` may not be taken for a project while searching upwards, or None.

    A sticky world-writable directory (``/tmp``) is never a project: anyone can plant
    ``agents/`` there. A directory above the starting one must belong to this user or to
    root (the starting directory is the one the user chose to run in)."""
    try:
        info = os.stat(candidate)
    except OSError:
        return None
    mode = info.st_mode
    if mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        return f"{candidate} is world-writable with the sticky bit (like /tmp)"
    if not first and info.st_uid not in (os.geteuid(), 0):
        return f"{candidate} belongs to another user (uid {info.st_uid})"
    return None


def _is_agent_dir(candidate: Path) -> bool:
    """``candidate`` is an agent's folder: it sits in a folder named ``agents`` and has no
    ``agents/`` of its own (a project that happens to live under a folder named
    ``agents`` has one)."""
    return candidate.parent.name == "agents" and not (candidate / "agents").is_dir()


def resolve_project_root(explicit: Path | None) -> Path:
    """``explicit`` when given (it must exist), else the project around the current directory."""
    if explicit is not None:
        if not explicit.is_dir():
            raise UsageError(f"project directory {explicit} does not exist")
        return explicit.resolve()
    found, stopped = _search(Path.cwd())
    if stopped is not None:
        raise UsageError(
            f"no corral project here: the search upwards from {Path.cwd()} stopped because "
            f"{stopped}, where another user could plant a project. Run inside a project, "
            "pass --project DIR to use a project there on purpose, or create one with "
            "`corral new DIR`."
        )
    if found is None:
        raise UsageError(
            f"no corral project here: {Path.cwd()} and its parents have no config.toml "
            "or agents/ directory. Run inside a project, pass --project DIR, "
            "or create one with `corral new DIR`."
        )
    return found


def state_dir(root: Path) -> Path:
    """The project's ``.corral`` directory, made (or made again) private: mode 0700.

    One that is a symbolic link or belongs to another user is refused: its owner could
    plant links there that make this user (root, say) write or chmod other files."""
    directory = root / ".corral"
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return private_dirs(directory, directory)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{directory} is not a plain directory (a symbolic link?): remove it")
    if info.st_uid != os.geteuid():
        raise UsageError(
            f"{directory} belongs to uid {info.st_uid}, not to the user running corral "
            f"(uid {os.geteuid()}): run corral as its owner, or remove it if it was not "
            "made by corral"
        )
    return private_dirs(directory, directory)


def private_dirs(path: Path, top: Path) -> Path:
    """Make ``path`` a directory, with every directory from ``top`` down to it mode 0700.

    ``top`` is ``path`` or one of its parents; the parents of ``top`` (the project, say)
    are made if missing, as any directory, and otherwise left as they are. A directory
    made here has its mode from the start (the umask can only remove bits); one that was
    there is made private too.
    """
    if path != top and top not in path.parents:
        raise ValueError(f"{top} is not {path} or one of its parents")
    top.parent.mkdir(parents=True, exist_ok=True)
    chain = [top, *(top / part for part in _prefixes(path.relative_to(top)))]
    for directory in chain:
        try:
            os.mkdir(directory, STATE_DIR_MODE)
        except FileExistsError:
            pass
        info = os.stat(directory)
        if info.st_mode & 0o7777 != STATE_DIR_MODE:
            os.chmod(directory, STATE_DIR_MODE)
    return path


def _prefixes(relative: Path) -> list[Path]:
    parts = relative.parts
    return [Path(*parts[: i + 1]) for i in range(len(parts))]


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a state file with ``O_CREAT``: a new file is 0600 from the start, and
    one that was readable by others is made 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, STATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o7777 != STATE_FILE_MODE:
            os.fchmod(fd, STATE_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private_in(
    directory: Path, name: str, text: str, owner: tuple[int, int] | None = None
) -> None:
    """Write ``name`` in ``directory`` as a new 0600 file, never through a link.

    For a directory a run can write to (its own ``.corral``, which belongs to the run's
    uid in the sandbox): whatever the run left under ``name`` (a symlink to another
    project's token, a hard link) is removed, not followed, and a ``directory`` that is
    itself a symlink is refused. ``owner`` (uid, gid) is given to the new file by its
    descriptor, never by its path.
    """
    flags = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        dir_fd = os.open(directory, flags)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (not a plain directory)", str(directory)) from exc
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
        create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, create, STATE_FILE_MODE, dir_fd=dir_fd)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            handle.write(text)
    finally:
        os.close(dir_fd)
