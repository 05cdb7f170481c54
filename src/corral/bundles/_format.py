"""The bundle format: a project directory as one deterministic, content-addressed archive.

A bundle is an uncompressed POSIX tar (pax) of the files a run needs, and nothing else:

    config.toml                 the project's settings
    agents/<name>/**            every file of each agent folder (SKILL.md, config.toml, ...)
    shared/**                   the project's shared context files

Entries are regular files only (directories are implied by the paths), sorted by path,
with every piece of metadata fixed: mtime 0, uid/gid 0, no user or group names, mode
0644 (0755 when the owner may execute the file). The same tree therefore always gives the
same bytes, whatever the file times, owners or umask of the machine that packed it, and
the bundle's name is the SHA-256 of those bytes (``sha256:<hex>``). The archive is not
compressed: compressors' output may differ between library versions, which would give one
tree two names.

Each agent also has a bundle of its own, packed the same way from the project-level
entries (``config.toml``, ``shared/**``) plus ``agents/<name>/**``: what a runner needs to
run that agent and nothing of the others. The manifest maps each agent to that bundle's
hash; the agent bundle is rebuilt from the project bundle on demand and gives the same
bytes (``agent_archive``).

What never travels (``excluded``): the local state directory ``.corral/`` (the store file,
logs, run directories, operator token), version-control metadata (``.git/``, ``.hg/``,
``.svn/``), ``.env.toml`` (the checkout's local overlay: it is meant to stay on its
machine and often carries local paths or secrets), secret-looking files (``.env``,
``.env.*``, ``*.pem``, ``*.key``, ``*.p12``, ``*.pfx``, ``id_rsa``/``id_ecdsa``/
``id_ed25519`` and their ``.pub``, ``.netrc``, ``.npmrc``, ``.pypirc``,
``credentials.json``), byte-code caches (``__pycache__/``, ``*.pyc``) and editor litter
(``*.swp``, ``*~``, ``.DS_Store``). Credentials themselves live in the credential store,
outside the project, and reach a run by reference, never inside a bundle.

Refused with a clear error: a file over ``MAX_FILE_BYTES``, a bundle over
``MAX_BUNDLE_BYTES``, a symbolic link that leads out of the project (or nowhere), and
anything that is neither a file nor a directory (a FIFO, a socket, a device).
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from corral.errors import CorralError

__all__ = [
    "HASH_PREFIX",
    "MAX_BUNDLE_BYTES",
    "MAX_FILE_BYTES",
    "BundleError",
    "Entry",
    "Packed",
    "agent_archive",
    "archive",
    "bundle_hash",
    "excluded",
    "manifest_of",
    "normalize_hash",
    "pack",
    "read_entries",
    "unpack",
]

HASH_PREFIX = "sha256:"
#: The largest file a bundle carries: prompts, configs and context files are far smaller;
#: a bigger one is data that belongs in a repository or an artifact store.
MAX_FILE_BYTES = 8 << 20
#: The largest bundle (it is stored in one row and served in one response).
MAX_BUNDLE_BYTES = 64 << 20
#: The most entries a bundle holds.
MAX_ENTRIES = 20_000

#: Directory names never packed, at any depth.
_EXCLUDED_DIRS = frozenset({".corral", ".git", ".hg", ".svn", "__pycache__"})
#: File name patterns never packed, at any depth.
_EXCLUDED_FILES = (
    ".env.toml",
    ".env",
    ".env.*",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa",
    "id_rsa.pub",
    "id_ecdsa",
    "id_ecdsa.pub",
    "id_ed25519",
    "id_ed25519.pub",
    ".netrc",
    ".npmrc",
    ".pypirc",
    "credentials.json",
    "*.pyc",
    "*.swp",
    "*~",
    ".DS_Store",
)
#: What a bundle carries, from the project root.
_TOP_FILES = ("config.toml",)
_TOP_DIRS = ("agents", "shared")


class BundleError(CorralError):
    """A project that cannot be packed, or bytes that are not a valid bundle."""


@dataclass(frozen=True)
class Entry:
    """One file of a bundle: its path (POSIX, relative), content and executable bit."""

    path: str
    data: bytes
    executable: bool = False


@dataclass(frozen=True)
class Packed:
    """A packed project: the archive, its hash, and each agent's own bundle hash."""

    data: bytes
    hash: str
    agents: dict[str, str]
    entries: tuple[Entry, ...] = field(repr=False)
    #: What was left out on purpose (relative paths), for the operator to see.
    skipped: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return len(self.data)

    def manifest(self) -> dict[str, object]:
        return {"hash": self.hash, "agents": dict(self.agents), "files": len(self.entries)}


def bundle_hash(data: bytes) -> str:
    return HASH_PREFIX + hashlib.sha256(data).hexdigest()


def normalize_hash(text: str) -> str:
    """``sha256:<64 hex>`` from what a user typed (the prefix is optional); BundleError
    for anything else."""
    value = text.strip().lower()
    hexpart = value.removeprefix(HASH_PREFIX)
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise BundleError(
            f"{text!r} is not a bundle hash: expected sha256: followed by 64 hex digits "
            "(`corral bundles ls` lists them)"
        )
    return HASH_PREFIX + hexpart


def excluded(relative: PurePosixPath, is_dir: bool) -> bool:
    """True when ``relative`` (a path under the project root) never travels."""
    if any(part in _EXCLUDED_DIRS for part in (relative.parts if is_dir else relative.parts[:-1])):
        return True
    if is_dir:
        return False
    return any(fnmatch.fnmatchcase(relative.name, pattern) for pattern in _EXCLUDED_FILES)


def pack(root: Path) -> Packed:
    """Pack the project at ``root``; BundleError naming the file when one cannot travel."""
    root = Path(root).resolve()
    if not (root / "config.toml").is_file() and not (root / "agents").is_dir():
        raise BundleError(f"{root} is not a corral project (no config.toml, no agents/)")
    skipped: list[str] = []
    entries = list(_collect(root, skipped))
    if len(entries) > MAX_ENTRIES:
        raise BundleError(
            f"the project has {len(entries)} files to bundle, more than {MAX_ENTRIES}; "
            "keep large trees out of agents/ and shared/"
        )
    data = archive(entries)
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"the bundle would be {len(data)} bytes, more than {MAX_BUNDLE_BYTES}; keep "
            "large files out of agents/ and shared/ (the largest: "
            + ", ".join(f"{e.path} ({len(e.data)} bytes)" for e in _largest(entries))
            + ")"
        )
    return Packed(
        data=data,
        hash=bundle_hash(data),
        agents=manifest_of(entries),
        entries=tuple(entries),
        skipped=tuple(sorted(skipped)),
    )


def manifest_of(entries: Iterable[Entry]) -> dict[str, str]:
    """Each agent's name -> the hash of its own bundle."""
    listed = list(entries)
    return {name: bundle_hash(agent_archive(listed, name)) for name in _agent_names(listed)}


def agent_archive(entries: Iterable[Entry], agent: str) -> bytes:
    """The bundle of one agent: the project-level entries and ``agents/<agent>/**``."""
    prefix = f"agents/{agent}/"
    chosen = [e for e in entries if not e.path.startswith("agents/") or e.path.startswith(prefix)]
    if not any(e.path.startswith(prefix) for e in chosen):
        raise BundleError(f"the bundle has no agent {agent!r}")
    return archive(chosen)


def archive(entries: Iterable[Entry]) -> bytes:
    """The deterministic tar of ``entries`` (sorted by path, metadata fixed)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.size = len(entry.data)
            info.mtime = 0
            info.mode = 0o755 if entry.executable else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(entry.data))
    return out.getvalue()


def read_entries(data: bytes, *, expect: str | None = None) -> list[Entry]:
    """The entries of bundle ``data``; BundleError when the bytes are not a bundle this
    format writes (or, with ``expect``, do not hash to it)."""
    if expect is not None and bundle_hash(data) != expect:
        raise BundleError(
            f"the bundle's bytes hash to {bundle_hash(data)}, not {expect}: it is damaged"
        )
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"a bundle of {len(data)} bytes is over {MAX_BUNDLE_BYTES}")
    entries: list[Entry] = []
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                path = _safe_member(info.name)
                if not info.isreg():
                    raise BundleError(f"bundle entry {path!r} is not a regular file")
                if path in seen:
                    raise BundleError(f"bundle entry {path!r} appears twice")
                if info.size > MAX_FILE_BYTES or len(seen) >= MAX_ENTRIES:
                    raise BundleError(f"bundle entry {path!r} is over the bundle limits")
                seen.add(path)
                handle = tar.extractfile(info)
                body = handle.read() if handle is not None else b""
                entries.append(Entry(path, body, bool(info.mode & 0o100)))
    except (tarfile.TarError, EOFError, ValueError, OverflowError, UnicodeError, OSError) as exc:
        raise BundleError(f"not a bundle (a tar archive): {exc}") from None
    return entries


def unpack(data: bytes, target: Path, *, expect: str | None = None) -> list[Entry]:
    """Write bundle ``data`` into ``target`` (a new, empty directory), files 0644/0755."""
    entries = read_entries(data, expect=expect)
    target.mkdir(mode=0o755, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for entry in entries:
        path = target.joinpath(*PurePosixPath(entry.path).parts)
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o755 if entry.executable else 0o644)
        except OSError as exc:  # a file where a directory is needed, or the reverse
            raise BundleError(f"bundle entry {entry.path!r} cannot be written: {exc}") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(entry.data)
    return entries


# -- walking the project -----------------------------------------------------------------


def _collect(root: Path, skipped: list[str]) -> Iterator[Entry]:
    for name in _TOP_FILES:
        path = root / name
        if path.exists() or path.is_symlink():
            yield from _walk(root, path, PurePosixPath(name), skipped, ())
    for name in _TOP_DIRS:
        path = root / name
        if path.exists() or path.is_symlink():
            yield from _walk(root, path, PurePosixPath(name), skipped, ())


def _walk(
    root: Path,
    path: Path,
    relative: PurePosixPath,
    skipped: list[str],
    visiting: tuple[Path, ...],
) -> Iterator[Entry]:
    shown = relative.as_posix()
    real, info = _resolve(root, path, shown)
    is_dir = stat.S_ISDIR(info.st_mode)
    if excluded(relative, is_dir):
        skipped.append(shown + ("/" if is_dir else ""))
        return
    if is_dir:
        if real in visiting:
            raise BundleError(f"{shown}: a symbolic link loop")
        try:
            children = sorted(real.iterdir(), key=lambda child: child.name)
        except OSError as exc:
            raise BundleError(f"{shown}: cannot be listed ({exc})") from None
        for child in children:
            yield from _walk(root, child, relative / child.name, skipped, (*visiting, real))
        return
    if not stat.S_ISREG(info.st_mode):
        raise BundleError(
            f"{shown}: neither a file nor a directory (a FIFO, socket or device cannot "
            "travel in a bundle); remove it"
        )
    if info.st_size > MAX_FILE_BYTES:
        raise BundleError(
            f"{shown} is {info.st_size} bytes, over the bundle's limit of {MAX_FILE_BYTES} "
            "bytes per file; keep large data out of agents/ and shared/ (fetch it at run "
            "time, or put it in the agent's image)"
        )
    try:
        with open(real, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"{shown}: cannot be read ({exc})") from None
    if len(data) > MAX_FILE_BYTES:
        raise BundleError(f"{shown} grew over {MAX_FILE_BYTES} bytes while it was read")
    yield Entry(shown, data, bool(info.st_mode & stat.S_IXUSR))


def _resolve(root: Path, path: Path, shown: str) -> tuple[Path, os.stat_result]:
    """Where ``path`` really is and its status; a symbolic link must stay in ``root``."""
    try:
        link = path.is_symlink()
        real = path.resolve(strict=True) if link else path
        info = real.stat() if link else path.lstat()
    except (OSError, RuntimeError) as exc:
        if path.is_symlink():
            raise BundleError(
                f"{shown}: a symbolic link that leads nowhere ({exc}); remove it or make "
                "it point at a file inside the project"
            ) from None
        raise BundleError(f"{shown}: cannot be read ({exc})") from None
    if link and not real.is_relative_to(root):
        raise BundleError(
            f"{shown}: a symbolic link that leads out of the project (to {real}); a "
            "bundle carries the project's own files only: copy the file into the project "
            "or remove the link"
        )
    return real, info


def _agent_names(entries: Iterable[Entry]) -> list[str]:
    names = set()
    for entry in entries:
        parts = entry.path.split("/")
        if len(parts) >= 3 and parts[0] == "agents" and not parts[1].startswith("."):
            names.add(parts[1])
    return sorted(names)


def _largest(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: len(e.data), reverse=True)[:3]


def _safe_member(name: str) -> str:
    """A member name that stays inside the target: relative, no ``..``, no empty parts."""
    posix = PurePosixPath(name)
    if (
        not name
        or posix.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or "\\" in name
        or "\x00" in name
    ):
        raise BundleError(f"bundle entry {name!r} is not a safe relative path")
    top = posix.parts[0]
    if not (name in _TOP_FILES or (top in _TOP_DIRS and len(posix.parts) > 1)):
        raise BundleError(f"bundle entry {name!r} is outside config.toml, agents/ and shared/")
    return name
