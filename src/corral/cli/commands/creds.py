"""Credentials for runs: `corral creds add|ls|rm|import|types`. Values are never shown."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from corral.cli._main import cli
from corral.cli._render import cell, console, print_json
from corral.credentials import (
    CredentialField,
    CredentialRef,
    CredentialStore,
    CredentialType,
    CredentialUsageError,
    StoredCredential,
    credential_type,
    credential_types,
    parse_ref,
)
from corral.credentials.importer import ImportEntry, import_store

NO_ARGUMENT_VALUES = (
    "values are not taken as command-line arguments, where `ps` and the shell history "
    "would show them"
)


@cli.group("creds")
def creds_group() -> None:
    """Credentials given to runs: an agent names them in its config.toml
    (credentials = ["github_token", "env:SENTRY_TOKEN"]) and its runs get them as
    environment variables and files. Values live in ~/.corral/credentials (or
    $CORRAL_HOME/credentials), readable by you only, and are never printed.
    """


@creds_group.command("add")
@click.argument("name", metavar="TYPE[:INSTANCE]")
@click.option(
    "--file",
    "files",
    multiple=True,
    metavar="FIELD=PATH",
    help="Read FIELD's value from the file PATH (repeatable), e.g. id_rsa=~/.ssh/deploy.",
)
@click.option("--force", is_flag=True, help="Replace the credential if it is stored already.")
def add_cmd(name: str, files: tuple[str, ...], force: bool) -> None:
    """Store the credential TYPE[:INSTANCE] (the instance defaults to "default").

    In a terminal each value is asked for and not shown (a multi-line value ends at an
    empty line). Otherwise the one required value is read from stdin
    (`corral creds add github_token < token.txt`); other fields come from --file.
    `corral creds types` lists the types and their fields.
    """
    ref = parse_ref(name)
    ctype = credential_type(ref.type)
    store = CredentialStore()
    if store.exists(ref) and not force:
        raise CredentialUsageError(
            str(ref),
            f"already stored in {store.path(ref)}",
            f"replace it with `{ref.add_command} --force`",
        )
    values = _values_from_files(ref, ctype, files)
    rest = [spec for spec in ctype.fields if spec.name not in values]
    if sys.stdin.isatty():
        values.update(_ask(ref, ctype, rest))
    else:
        values.update(_from_stdin(ref, ctype, rest))
    stored = store.add(ref.type, ref.instance, values, replace=force)
    console.print(
        f"stored {ref} in {stored.path} (fields: {', '.join(stored.fields)})",
        markup=False,
        soft_wrap=True,
    )


def _values_from_files(
    ref: CredentialRef, ctype: CredentialType, options: Sequence[str]
) -> dict[str, str]:
    values: dict[str, str] = {}
    for option in options:
        name, sep, path = option.partition("=")
        spec = ctype.field(name)
        if not sep or not path:
            raise CredentialUsageError(str(ref), f"--file {option!r} is not FIELD=PATH")
        if spec is None:
            raise CredentialUsageError(
                str(ref),
                f"--file {option!r}: {ctype.name} has no field {name!r}",
                f"its fields are {', '.join(ctype.field_names)}",
            )
        if spec.name in values:
            raise CredentialUsageError(str(ref), f"--file gives {spec.name} twice")
        try:
            raw = Path(path).expanduser().read_bytes()
        except OSError as exc:
            raise CredentialUsageError(
                str(ref), f"cannot read {path} for {name}: {exc.strerror}"
            ) from None
        values[spec.name] = _text(ref, spec, raw, f"the file {path}")
    return values


def _text(ref: CredentialRef, spec: CredentialField, raw: bytes, source: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CredentialUsageError(
            str(ref), f"{source} is not UTF-8 text; {spec.name} must be text"
        ) from None
    if not spec.multiline:
        text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise CredentialUsageError(str(ref), f"{source} is empty; {spec.name} needs a value")
    return text


def _from_stdin(
    ref: CredentialRef, ctype: CredentialType, rest: Sequence[CredentialField]
) -> dict[str, str]:
    required = [spec for spec in rest if spec.required]
    if not required:
        return {}
    if len(required) > 1:
        names = ", ".join(spec.name for spec in required)
        flags = " ".join(f"--file {spec.name}=PATH" for spec in required)
        raise CredentialUsageError(
            str(ref),
            f"stdin is not a terminal, so one value can be read from it, and {ctype.name} "
            f"needs {names}",
            f"give them as files ({flags}) or run the command in a terminal; {NO_ARGUMENT_VALUES}",
        )
    (spec,) = required
    raw = sys.stdin.buffer.read()
    if not raw.strip():
        raise CredentialUsageError(
            str(ref),
            f"nothing on stdin for {spec.name}",
            f"pipe the value in (`{ref.add_command} < FILE`), use --file {spec.name}=PATH, or "
            f"run the command in a terminal to be asked; {NO_ARGUMENT_VALUES}",
        )
    return {spec.name: _text(ref, spec, raw, "stdin")}


def _ask(
    ref: CredentialRef, ctype: CredentialType, rest: Sequence[CredentialField]
) -> dict[str, str]:
    """Each field from the terminal. A required field may be skipped when the type is
    complete without it (git_ssh with a git identity alone); that is checked at the end."""
    values: dict[str, str] = {}
    for spec in rest:
        label = f"{spec.name} ({spec.description})"
        skippable = not spec.required or bool(ctype.alone)
        if spec.multiline:
            value = _ask_lines(label, optional=skippable)
        elif not skippable:
            value = click.prompt(label, hide_input=True, err=True)
        else:
            value = click.prompt(
                f"{label}, empty to skip", hide_input=True, err=True, default="", show_default=False
            )
        if value.strip():
            values[spec.name] = value
        elif not skippable:
            raise CredentialUsageError(str(ref), f"no value for {spec.name}; nothing was stored")
    lacking = ctype.missing(values)
    if lacking:
        either = f" (or one of {', '.join(ctype.alone)})" if ctype.alone else ""
        raise CredentialUsageError(
            str(ref), f"no value for {', '.join(lacking)}{either}; nothing was stored"
        )
    return values


def _ask_lines(label: str, *, optional: bool) -> str:
    """Lines from the terminal until an empty line or end of input, without echo."""
    import termios

    skip = "; just an empty line to skip" if optional else ""
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    quiet = termios.tcgetattr(fd)
    quiet[3] &= ~termios.ECHO
    # TCSANOW, not TCSAFLUSH: lines already pasted must not be thrown away. Echo goes off
    # before the request is shown, so that a paste made as soon as it shows is not echoed.
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    lines: list[str] = []
    try:
        click.echo(f"{label}: paste it, then an empty line (it is not shown){skip}", err=True)
        while line := sys.stdin.readline():
            if not line.strip():
                break
            lines.append(line)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    click.echo(f"read {len(lines)} line{'' if len(lines) == 1 else 's'}", err=True)
    return "".join(lines)


@creds_group.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def ls_cmd(as_json: bool) -> None:
    """List the stored credentials: type, instance, fields set, path; never values."""
    store = CredentialStore()
    stored = store.list()
    if as_json:
        print_json([_stored_json(item) for item in stored])
        return
    if not stored:
        console.print(
            f"no credentials are stored in {store.root}; add one with `corral creds add TYPE`",
            markup=False,
            soft_wrap=True,
        )
        return
    table = Table("type", "instance", "fields", "path", "status", box=None)
    for item in stored:
        status = "ok" if not item.problems else "; ".join(item.problems)
        table.add_row(
            cell(item.ref.type),
            cell(item.ref.instance),
            cell(", ".join(item.fields)),
            cell(item.path),
            cell(status),
        )
    console.print(table)


def _stored_json(item: StoredCredential) -> dict[str, Any]:
    return {
        "ref": str(item.ref),
        "type": item.ref.type,
        "instance": item.ref.instance,
        "fields": list(item.fields),
        "path": str(item.path),
        "problems": list(item.problems),
    }


@creds_group.command("rm")
@click.argument("name", metavar="TYPE[:INSTANCE]")
def rm_cmd(name: str) -> None:
    """Delete the stored credential TYPE[:INSTANCE]."""
    ref = parse_ref(name)
    path = CredentialStore().remove(ref.type, ref.instance)
    console.print(f"removed {ref} ({path})", markup=False, soft_wrap=True)


@creds_group.command("import")
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path),
    default=Path("~/.action-llama"),
    show_default=True,
    help="Action Llama's home (or its credentials directory).",
)
@click.option("--dry-run", is_flag=True, help="Check and list; store nothing.")
@click.option("--force", is_flag=True, help="Replace credentials stored here already.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of lines.")
def import_cmd(source: Path, dry_run: bool, force: bool, as_json: bool) -> None:
    """Copy the credentials of an Action Llama store (~/.action-llama/credentials) here.

    Each one is checked as `corral creds add` checks it and listed with what became of it
    (imported, or skipped and why); values are never shown. Its old webhook secret types
    (github_webhook_secret:MyOrg) become webhook_secret:MyOrg. Exits 1 when one was
    skipped for a problem.
    """
    store = CredentialStore()
    entries = import_store(source, store, replace=force, dry_run=dry_run)
    if as_json:
        print_json([_entry_json(entry) for entry in entries])
    else:
        for entry in entries:
            console.print(entry.line(), markup=False, soft_wrap=True)
        done = sum(entry.action != "skipped" for entry in entries)
        verb = "would be imported" if dry_run else "imported"
        console.print(
            f"{done} of {len(entries)} {verb} into {store.root}", markup=False, soft_wrap=True
        )
    if any(entry.action == "skipped" for entry in entries):
        raise SystemExit(1)


def _entry_json(entry: ImportEntry) -> dict[str, Any]:
    return {
        "source": entry.source,
        "action": entry.action,
        "ref": None if entry.ref is None else str(entry.ref),
        "fields": list(entry.fields),
        "reason": entry.reason or None,
    }


@creds_group.command("types")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def types_cmd(as_json: bool) -> None:
    """The credential types: their fields and the environment variables they set."""
    if as_json:
        print_json([_type_json(ctype) for ctype in credential_types()])
        return
    table = Table("type", "fields", "environment", "description", box=None)
    for ctype in credential_types():
        fields = ", ".join(_field_text(spec) for spec in ctype.fields)
        env = "\n".join(var.describe() for var in ctype.env)
        table.add_row(ctype.name, escape(fields), escape(env), escape(ctype.description))
    console.print(table)


def _field_text(spec: CredentialField) -> str:
    flags = (("optional", not spec.required), ("multi-line", spec.multiline))
    notes = [note for note, on in flags if on]
    return f"{spec.name} ({', '.join(notes)})" if notes else spec.name


def _type_json(ctype: CredentialType) -> dict[str, Any]:
    return {
        "name": ctype.name,
        "description": ctype.description,
        "instanceIsEnvName": ctype.instance_is_env_name,
        "fields": [
            {
                "name": spec.name,
                "description": spec.description,
                "required": spec.required,
                "multiline": spec.multiline,
                "secret": spec.secret,
            }
            for spec in ctype.fields
        ],
        "env": [{"name": var.shown_name(), "value": var.shown_value()} for var in ctype.env],
        "context": ctype.context,
    }
