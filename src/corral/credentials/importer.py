"""``corral creds import``: copy an Action Llama credential store into corral's.

Action Llama keeps ``~/.action-llama/credentials/TYPE/INSTANCE/FIELD``, one file per
field, the layout corral's store has too. Each credential is mapped by its type (the
old per-provider webhook secret types are ``webhook_secret``), checked like
``corral creds add`` checks a value, and stored; nothing is written for an entry with a
problem, and an entry stored already is left alone unless replacing is asked for.
Values are never returned in anything that is printed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from corral.credentials.errors import CredentialError, CredentialUsageError
from corral.credentials.store import CredentialStore
from corral.credentials.types import CredentialRef, CredentialType, credential_type, parse_ref

__all__ = ["ImportEntry", "import_store", "source_root"]

#: Action Llama's credentials that only its own provisioning and gateway use.
_NOT_FOR_CORRAL: Mapping[str, str] = {
    "gateway_api_key": "Action Llama's gateway key; corral's gateway uses operator tokens "
    "(`corral token create`)",
    "vultr_api_key": "used by Action Llama's VPS provisioning only",
    "hetzner_api_key": "used by Action Llama's VPS provisioning only",
    "cloudflare_api_token": "used by Action Llama's VPS provisioning only",
    "vps_ssh": "used by Action Llama's VPS provisioning only",
    "gcp_service_account": "used by Action Llama's Cloud Run runtime only",
}

Action = Literal["imported", "would import", "skipped"]


@dataclass(frozen=True)
class ImportEntry:
    """One credential of the source store: what became of it, and why. No values."""

    source: str
    action: Action
    ref: CredentialRef | None = None
    fields: tuple[str, ...] = ()
    reason: str = ""

    def line(self) -> str:
        target = f" as {self.ref.full}" if self.ref and self.ref.full != self.source else ""
        fields = f" (fields: {', '.join(self.fields)})" if self.fields else ""
        reason = f": {self.reason}" if self.reason else ""
        return f"{self.action} {self.source}{target}{fields}{reason}"


def source_root(path: Path) -> Path:
    """The credentials directory of an Action Llama home (``~/.action-llama``) or the
    credentials directory itself."""
    path = path.expanduser()
    return path / "credentials" if (path / "credentials").is_dir() else path


@dataclass
class _Run:
    store: CredentialStore
    replace: bool
    dry_run: bool
    done: dict[CredentialRef, str] = field(default_factory=dict)


def import_store(
    source: Path, store: CredentialStore, *, replace: bool = False, dry_run: bool = False
) -> list[ImportEntry]:
    """Import every credential under ``source`` (see :func:`source_root`) into ``store``,
    in sorted order; with ``dry_run`` nothing is written."""
    root = source_root(source)
    if not root.is_dir():
        raise CredentialUsageError(
            str(source),
            f"no credentials directory at {root}",
            "give Action Llama's home with --from (it holds credentials/TYPE/INSTANCE/FIELD)",
        )
    state = _Run(store, replace, dry_run)
    entries: list[ImportEntry] = []
    for type_dir in _subdirs(root, entries, "{name}"):
        for directory in _subdirs(type_dir, entries, f"{type_dir.name}:{{name}}"):
            entries.append(_one(state, type_dir.name, directory))
    return entries


def _subdirs(path: Path, entries: list[ImportEntry], label: str) -> list[Path]:
    """The directories in ``path``, sorted. A symbolic link is not followed (it may lead
    out of the store, to any file the user can read): each is reported as skipped."""
    found: list[Path] = []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):
            continue
        if child.is_symlink():
            shown = label.format(name=child.name)
            entries.append(ImportEntry(shown, "skipped", reason=_link_reason(child)))
        elif child.is_dir():
            found.append(child)
    return found


def _link_reason(path: Path) -> str:
    try:
        target = str(path.readlink())
    except OSError:
        target = "?"
    return (
        f"{path} is a symbolic link (to {target!r}); links are not followed: copy what it "
        "points to in, or store it with `corral creds add`"
    )


def _one(state: _Run, type_name: str, directory: Path) -> ImportEntry:
    label = f"{type_name}:{directory.name}"
    if type_name in _NOT_FOR_CORRAL:
        return ImportEntry(label, "skipped", reason=_NOT_FOR_CORRAL[type_name])
    try:
        ref = parse_ref(label)
        ctype = credential_type(ref.type)
        values = _values(ctype, directory)
    except CredentialError as exc:
        return ImportEntry(label, "skipped", reason=_reasons(exc))
    if ref in state.done:
        reason = f"{ref} was taken from {state.done[ref]} already"
        return ImportEntry(label, "skipped", ref, reason=reason)
    if state.store.exists(ref) and not state.replace:
        reason = f"{ref} is stored already (--force replaces it)"
        return ImportEntry(label, "skipped", ref, reason=reason)
    try:
        stored = _store(state, ref, values.values)
    except CredentialError as exc:
        return ImportEntry(label, "skipped", ref, reason=_reasons(exc))
    state.done[ref] = label
    action: Action = "would import" if state.dry_run else "imported"
    return ImportEntry(label, action, ref, stored, reason=values.warning())


def _store(state: _Run, ref: CredentialRef, values: dict[str, str]) -> tuple[str, ...]:
    if state.dry_run:  # checked as storing would check them; nothing is written
        return state.store.check(ref.type, ref.instance, values)
    return state.store.add(ref.type, ref.instance, values, replace=state.replace).fields


@dataclass
class _Read:
    """What was read of one source credential: its values, and which of its files others
    than the user could read (imported anyway, with a warning)."""

    values: dict[str, str] = field(default_factory=dict)
    loose: list[str] = field(default_factory=list)

    def warning(self) -> str:
        if not self.loose:
            return ""
        return (
            f"warning: {', '.join(self.loose)} in the source could be read by group or others; "
            "the copy is private (0600), but consider the values exposed and rotate them"
        )


def _values(ctype: CredentialType, directory: Path) -> _Read:
    label = f"{directory.parent.name}:{directory.name}"
    read = _Read()
    unknown: list[str] = []
    for path in sorted(p for p in directory.iterdir() if not p.name.startswith(".")):
        spec = ctype.field(path.name)
        if path.is_symlink():
            raise CredentialUsageError(label, _link_reason(path))
        if spec is None or not path.is_file():
            unknown.append(path.name)
            continue
        text = _read_file(label, path, read)
        if not spec.multiline:  # written by `echo VALUE > FILE`: the newline is no part of it
            text = text.removesuffix("\n").removesuffix("\r")
        read.values[spec.name] = text
    if unknown:
        raise CredentialUsageError(
            label,
            f"{ctype.name} has no field {', '.join(unknown)} (its fields are "
            f"{', '.join(ctype.field_names)})",
            f"store it by hand with `corral creds add {label}`",
        )
    return read


def _read_file(label: str, path: Path, read: _Read) -> str:
    """The file's text, opened without following a link (one swapped in after the check
    above is refused by the kernel)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            _note_mode(read, path.name, os.fstat(handle.fileno()).st_mode)
            return handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialUsageError(label, f"cannot read {path.name}: {exc}") from None


def _note_mode(read: _Read, shown: str, mode: int) -> None:
    if mode & 0o077:
        read.loose.append(f"{shown} (mode {stat.S_IMODE(mode):04o})")


def _reasons(exc: CredentialError) -> str:
    return "; ".join(p.message if p.fix is None else f"{p.message}; {p.fix}" for p in exc.problems)
