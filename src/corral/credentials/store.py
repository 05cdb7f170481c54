"""The credential store: one directory per credential, one file per field.

    <corral home>/credentials/            0700   ($CORRAL_HOME or ~/.corral)
        github_token/default/token       dirs 0700, files 0600
        git_ssh/deploy/private_key
        env/SENTRY_TOKEN/value

A run gets the credentials its agent names through :meth:`CredentialStore.resolve`,
which checks all of them and reports every problem at once.
"""

from __future__ import annotations

import builtins
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from corral.credentials._files import private_dir, write_private_files
from corral.credentials.errors import CredentialError, CredentialProblem, CredentialUsageError
from corral.credentials.redact import MIN_SECRET_LEN
from corral.credentials.types import (
    CredentialField,
    CredentialRef,
    CredentialType,
    credential_type,
    parse_ref,
)
from corral.locate import corral_home

__all__ = ["CredentialStore", "LoadedCredential", "StoredCredential", "default_root"]


def default_root() -> Path:
    """``<corral home>/credentials``: ``$CORRAL_HOME/credentials`` or ``~/.corral/credentials``."""
    return corral_home() / "credentials"


@dataclass(frozen=True)
class StoredCredential:
    """A credential as listed: which fields are set, where, and what is wrong with it."""

    ref: CredentialRef
    path: Path
    fields: tuple[str, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedCredential:
    """A credential read for a run. Its values are left out of ``repr``."""

    ref: CredentialRef
    type: CredentialType = field(repr=False)
    #: The credential's directory on this host.
    directory: Path
    #: field -> its file on this host
    files: Mapping[str, Path]
    #: field -> value
    values: Mapping[str, str] = field(repr=False)
    #: variable -> value, with the host paths of the files where the type uses a file
    env: Mapping[str, str] = field(repr=False)

    def env_for(self, mount_root: PurePath) -> dict[str, str]:
        """The variables with file paths as seen where the credential's directory is mounted
        at ``mount_root/TYPE/INSTANCE`` (the sandbox mounts them at ``/credentials``)."""
        return _render_env(self.type, self.ref, self.values, mount_root / self.ref.type)

    def secrets(self) -> tuple[str, ...]:
        """The values to redact from the run's output (secret fields only)."""
        return tuple(
            value
            for name, value in self.values.items()
            if (spec := self.type.field(name)) is None or spec.secret
        )

    def context_line(self) -> str:
        return self.type.context_line(self.ref.instance, self.values)

    def copy_to(self, root: Path) -> dict[str, str]:
        """Write the files under ``root/TYPE/INSTANCE`` (private) and return the env for there.

        For a runtime without mounts: the host runtime copies them into the run's
        ``.corral/credentials``.
        """
        root.mkdir(parents=True, exist_ok=True)
        private_dir(root)
        private_dir(root / self.ref.type)
        target = root / self.ref.type / self.ref.instance
        private_dir(target)
        contents = {name: value.encode() for name, value in self.values.items()}
        write_private_files(target, contents, prune=True)
        return self.env_for(root)


def _render_env(
    ctype: CredentialType, ref: CredentialRef, values: Mapping[str, str], type_dir: PurePath
) -> dict[str, str]:
    paths = {name: type_dir / ref.instance / name for name in values}
    return dict(var.render(ref.instance, values, paths) for var in ctype.env if var.applies(values))


class CredentialStore:
    """Credentials kept as private files under ``root`` (default: :func:`default_root`)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_root()

    def __repr__(self) -> str:
        return f"CredentialStore({str(self.root)!r})"

    def path(self, ref: CredentialRef) -> Path:
        return self.root / ref.type / ref.instance

    def exists(self, ref: CredentialRef) -> bool:
        return self.path(ref).is_dir()

    def add(
        self,
        type: str,
        instance: str,
        values: Mapping[str, str],
        *,
        replace: bool = False,
    ) -> StoredCredential:
        """Store a credential; replacing an existing one needs ``replace=True``.

        Values are checked first (every required field, no unknown one, none empty or
        too short to be redacted, single-line fields on one line); nothing is written
        unless all of them are fine. Each file is replaced atomically.
        """
        ref = parse_ref(f"{type}:{instance}")
        ctype = credential_type(ref.type)
        contents = _check_values(ref, ctype, values)
        target = self.path(ref)
        if target.exists() and not replace:
            raise CredentialUsageError(
                str(ref),
                f"already stored in {target}",
                f"replace it with `{ref.add_command} --force`",
            )
        if not self.root.exists():
            self.root.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        private_dir(self.root)
        private_dir(self.root / ref.type)
        private_dir(target)
        write_private_files(target, contents, prune=True)
        return StoredCredential(ref, target, tuple(sorted(contents)))

    def check(self, type: str, instance: str, values: Mapping[str, str]) -> tuple[str, ...]:
        """Check values exactly as :meth:`add` does, writing nothing anywhere; the fields
        that would be stored (``creds import --dry-run``)."""
        ref = parse_ref(f"{type}:{instance}")
        return tuple(sorted(_check_values(ref, credential_type(ref.type), values)))

    def remove(self, type: str, instance: str) -> Path:
        """Delete a stored credential; an absent one is an error."""
        ref = parse_ref(f"{type}:{instance}")
        target = self.path(ref)
        if not target.is_dir():
            raise CredentialUsageError(
                str(ref),
                f"not stored (no directory {target})",
                "`corral creds ls` lists the stored ones",
            )
        shutil.rmtree(target)
        try:
            (self.root / ref.type).rmdir()
        except OSError:
            pass  # other instances of the type are left
        return target

    def list(self) -> builtins.list[StoredCredential]:
        """Every stored credential, sorted, with the fields set and any problem; no values."""
        found: builtins.list[StoredCredential] = []
        if not self.root.is_dir():
            return found
        for type_dir in sorted(self.root.iterdir()):
            if type_dir.name.startswith(".") or not type_dir.is_dir():
                continue
            for directory in sorted(type_dir.iterdir()):
                if directory.name.startswith(".") or not directory.is_dir():
                    continue
                found.append(self._stored(type_dir.name, directory))
        return found

    def _stored(self, type_name: str, directory: Path) -> StoredCredential:
        ref = CredentialRef(type_name, directory.name)
        names = tuple(sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")))
        try:
            ref = parse_ref(ref.full)
        except CredentialError as exc:
            problems = builtins.list(exc.problems)
        else:
            _, problems = _read(ref, credential_type(ref.type), directory)
        shown = tuple(p.message if p.fix is None else f"{p.message}; {p.fix}" for p in problems)
        return StoredCredential(ref, directory, names, shown)

    def resolve(
        self, names: Sequence[str], *, missing_ok: bool = False
    ) -> builtins.list[LoadedCredential]:
        """Read the credentials ``names`` (as written in an agent's config) for a run.

        Raises one :class:`CredentialError` naming every credential that is missing,
        malformed, unsafe or in conflict with another, each with the command that fixes it.
        With ``missing_ok`` a credential that is not stored at all is left out instead (the
        model keys an agent's models imply: a local server may need none).
        """
        problems: builtins.list[CredentialProblem] = []
        loaded: builtins.list[LoadedCredential] = []
        seen: set[CredentialRef] = set()
        for name in names:
            try:
                ref = parse_ref(name)
            except CredentialError as exc:
                problems += exc.problems
                continue
            if ref in seen:
                continue
            seen.add(ref)
            if missing_ok and not self.path(ref).exists():
                continue
            credential, found = self._load(ref)
            problems += found
            if credential is not None:
                loaded.append(credential)
        problems += _conflicts(loaded)
        if problems:
            raise CredentialError(problems)
        return loaded

    def _load(
        self, ref: CredentialRef
    ) -> tuple[LoadedCredential | None, builtins.list[CredentialProblem]]:
        ctype = credential_type(ref.type)
        directory = self.path(ref)
        if not directory.exists():
            fix = f"add it with `{ref.add_command}`"
            return None, [CredentialProblem(str(ref), "not stored", fix)]
        values, problems = _read(ref, ctype, directory)
        if problems:
            return None, problems
        env = _render_env(ctype, ref, values, self.root / ref.type)
        files = {name: directory / name for name in values}
        return LoadedCredential(ref, ctype, directory, files, values, env), []


def _check_values(
    ref: CredentialRef, ctype: CredentialType, values: Mapping[str, str]
) -> dict[str, bytes]:
    label = str(ref)
    # An earlier name of a field (private_key for id_rsa) is taken as the field itself.
    values = {
        (spec.name if (spec := ctype.field(name)) else name): value
        for name, value in values.items()
    }
    unknown = sorted(set(values) - set(ctype.field_names))
    if unknown:
        raise CredentialUsageError(
            label,
            f"{ctype.name} has no field {', '.join(unknown)}",
            f"its fields are {', '.join(ctype.field_names)}",
        )
    missing = ctype.missing(values)
    if missing:
        raise CredentialUsageError(label, f"no value for {', '.join(missing)}")
    contents: dict[str, bytes] = {}
    for name, value in values.items():
        spec = ctype.field(name)
        assert spec is not None
        contents[name] = _check_value(label, spec, value).encode()
    return contents


def _check_value(label: str, spec: CredentialField, value: str) -> str:
    if not value.strip():
        raise CredentialUsageError(label, f"the value of {spec.name} is empty")
    if "\0" in value:
        raise CredentialUsageError(label, f"the value of {spec.name} contains a NUL character")
    if spec.secret and len(value.strip()) < MIN_SECRET_LEN:
        raise CredentialUsageError(
            label,
            f"the value of {spec.name} is shorter than {MIN_SECRET_LEN} characters: a value "
            "that short cannot be kept out of logs (it would be redacted everywhere it "
            "occurs by chance) and is no secret",
        )
    if spec.multiline:
        # OpenSSH, among others, refuses a key file without its final newline.
        return value if value.endswith("\n") else value + "\n"
    if "\n" in value or "\r" in value:
        raise CredentialUsageError(
            label, f"the value of {spec.name} must be one line; it has line breaks"
        )
    return value


def _read(
    ref: CredentialRef, ctype: CredentialType, directory: Path
) -> tuple[dict[str, str], builtins.list[CredentialProblem]]:
    """The values of the credential in ``directory``, or the problems that stop its use."""
    label = str(ref)
    fix_perms = f"make it private with `chmod -R go-rwx {directory}`"
    redo = f"store it again with `{ref.add_command} --force`"
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        return {}, [CredentialProblem(label, f"{directory} is not a directory", redo)]
    if info.st_mode & 0o077:
        message = f"{directory} is open to group or others (mode {_mode(info)}); refused"
        return {}, [CredentialProblem(label, message, fix_perms)]
    values: dict[str, str] = {}
    problems: builtins.list[CredentialProblem] = []
    for spec in ctype.fields:
        path = _field_path(directory, spec)
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            problems.append(CredentialProblem(label, f"{path} is not a file", redo))
        elif info.st_mode & 0o077:
            message = f"{path} is open to group or others (mode {_mode(info)}); refused"
            problems.append(CredentialProblem(label, message, fix_perms))
        else:
            value, problem = _decode(spec, path)
            if problem is not None:
                problems.append(CredentialProblem(label, problem, redo))
            else:
                values[spec.name] = value
    if not problems:
        for name in ctype.missing(values):
            problems.append(CredentialProblem(label, f"{name} is missing", redo))
    return values, problems


def _field_path(directory: Path, spec: CredentialField) -> Path:
    """The field's file; one stored under an earlier name of the field is renamed first,
    so that a run (which sees the files by their names) finds it where its variables say."""
    path = directory / spec.name
    if path.exists() or path.is_symlink():
        return path
    for alias in spec.aliases:
        old = directory / alias
        if old.is_file() and not old.is_symlink():
            try:
                os.rename(old, path)
            except OSError:
                return old  # a read-only store: read it where it is
            return path
    return path


def _decode(spec: CredentialField, path: Path) -> tuple[str, str | None]:
    try:
        value = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return "", f"{spec.name} is not UTF-8 text"
    if not spec.multiline:
        # A file written by hand (echo TOKEN > file) ends with a newline: not part of the value.
        value = value.removesuffix("\n").removesuffix("\r")
        if "\n" in value or "\r" in value:
            return "", f"{spec.name} must be one line; {path} has several"
    if not value.strip():
        return "", f"{spec.name} is empty"
    return value, None


def _mode(info: os.stat_result) -> str:
    return f"{stat.S_IMODE(info.st_mode):04o}"


def _conflicts(loaded: Sequence[LoadedCredential]) -> builtins.list[CredentialProblem]:
    setters: dict[str, CredentialRef] = {}
    problems: builtins.list[CredentialProblem] = []
    for credential in loaded:
        for name in credential.env:
            first = setters.setdefault(name, credential.ref)
            if first != credential.ref:
                problems.append(
                    CredentialProblem(
                        str(credential.ref),
                        f"sets {name}, which {first} sets too; a run can have only one of them",
                        "name only one of them in the agent's credentials",
                    )
                )
    return problems
