"""Checks on single values, shared by the models and the loader.

Each check that fails raises :func:`problem`: a pydantic error whose message
is the rest of a sentence that starts with the field name, so that
``'schedule' <message>`` reads well.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic_core import PydanticCustomError

from corral.credentials.errors import CredentialError
from corral.credentials.types import WEBHOOK_SECRET, credential_type, webhook_secret_ref
from corral.tasks._model import TaskError, check_id

__all__ = [
    "AGENT_NAME_RE",
    "PROBLEM",
    "board_name",
    "command",
    "credential_ref",
    "cron",
    "describe_value",
    "header_name",
    "memory",
    "problem",
    "resolve_state_url",
    "state_url",
    "validate_agent_name",
    "webhook_credential",
]

PROBLEM = "corral_problem"
AGENT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_CREDENTIAL_RE = re.compile(r"^[a-z][a-z0-9_]*(?::[A-Za-z0-9_.-]+)?$")
# An HTTP field name (RFC 9110 "token").
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_MEMORY_RE = re.compile(r"^[1-9][0-9]*[kmgt]?$", re.IGNORECASE)
_STATE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")
_CRON_FIELDS = (
    ("minute", "0-59"),
    ("hour", "0-23"),
    ("day-of-month", "1-31"),
    ("month", "1-12 or jan-dec"),
    ("day-of-week", "0-7 or sun-sat"),
)


def problem(message: str) -> PydanticCustomError:
    # Braces in user text must not be read as template fields.
    return PydanticCustomError(PROBLEM, message.replace("{", "{{").replace("}", "}}"))


def board_name(value: str) -> str:
    """A board project or a task label (the task board's names)."""
    try:
        return check_id(value, "name")
    except TaskError:
        raise problem(
            "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (e.g. web or api); found {value!r}"
        ) from None


def validate_agent_name(name: str) -> str | None:
    """An error message if ``name`` cannot name an agent, else ``None``."""
    if AGENT_NAME_RE.match(name):
        return None
    rule = "use 1 to 64 lowercase letters, digits, '-' or '_', starting with a letter or digit"
    hint = ""
    if name != name.lower():
        hint = f', e.g. "{name.lower()}"' if AGENT_NAME_RE.match(name.lower()) else ""
        return f'agent name "{name}" has uppercase letters: {rule}{hint}'
    if " " in name:
        return f'agent name "{name}" contains a space: {rule}'
    return f'agent name "{name}" is not valid: {rule}'


def memory(value: str) -> str:
    if not _MEMORY_RE.match(value):
        raise problem(f'must be a size such as "512m" or "4g", got "{value}"')
    return value


def credential_ref(value: str) -> str:
    if not _CREDENTIAL_RE.match(value):
        raise problem(
            f'is "{value}", which is not a credential reference: write "type" or '
            '"type:instance" (type: lowercase letters, digits and "_", starting with a '
            'letter; instance: letters, digits, ".", "_" and "-")'
        )
    _run_may_have(value)
    return value


def _run_may_have(value: str) -> None:
    try:
        ctype = credential_type(value.partition(":")[0])
    except CredentialError:
        return  # an unknown type is reported when a run that needs it starts
    if not ctype.given_to_runs and ctype.name != WEBHOOK_SECRET:
        raise problem(f'names "{value}": {ctype.description} Remove it from the agent')
    if not ctype.given_to_runs:
        raise problem(
            f'names "{value}", a webhook signing secret: it is for the gateway, which checks '
            "deliveries with it, and is never given to a run; remove it (the source's "
            "credential in config.toml is enough)"
        )


def webhook_credential(value: str) -> str:
    """``[webhooks.NAME] credential``: a signing secret (see ``webhook_secret_ref``)."""
    try:
        webhook_secret_ref(value)
    except CredentialError as exc:
        found = exc.problems[0]
        raise problem(
            f'is "{value}": {found.message}' + (f"; {found.fix}" if found.fix else "")
        ) from None
    return value


def header_name(value: str) -> str:
    if not _HEADER_RE.fullmatch(value):
        raise problem(
            f'is "{value}", which is not an HTTP header name: use letters, digits and '
            '!#$%&\'*+.^_`|~- only (no spaces or colons), e.g. "X-Signature-256"'
        )
    return value


def state_url(value: str) -> str:
    if value.startswith("sqlite:///") and len(value) > len("sqlite:///"):
        return value
    if value.startswith(("postgresql://", "postgres://")):
        return value
    accepted = "sqlite:///PATH (relative to the project) or postgresql://USER@HOST/DB"
    if value.startswith("sqlite:"):
        raise problem(f'"{value}" has no file path: write it as {accepted}')
    scheme = value.split(":", 1)[0] if ":" in value else value
    raise problem(f'uses the unsupported scheme "{scheme}": write it as {accepted}')


def resolve_state_url(value: str, root: Path) -> str:
    """Make a sqlite path absolute (relative paths are relative to ``root``)."""
    if not value.startswith("sqlite:///"):
        return value
    path = Path(value[len("sqlite:///") :]).expanduser()
    return "sqlite:///" + str(path if path.is_absolute() else root / path)


_RUNNER_LABEL = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def runner_labels(value: tuple[str, ...]) -> tuple[str, ...]:
    """``runsOn``: the labels a runner must have to take the agent's runs; sorted, no
    repeats, each 1-63 lowercase letters, digits, '_', '.' or '-'."""
    for label in value:
        if not _RUNNER_LABEL.fullmatch(label):
            raise problem(
                f"has a bad runner label {label!r}: use 1-63 lowercase letters, digits, "
                "'_', '.' or '-', starting with a letter or digit (e.g. runsOn = [\"gpu\"]; "
                "runsOn = [] means any runner)"
            )
    if len(set(value)) > 32:
        raise problem(f"names {len(set(value))} runner labels: at most 32")
    return tuple(sorted(set(value)))


def cron(value: str) -> str:
    reason = _cron_problem(value.strip())
    if reason:
        raise problem(f'is not a valid five-field cron expression: "{value}" ({reason})')
    return value


def _cron_problem(expression: str) -> str | None:
    if expression.startswith("@"):
        return None if croniter.is_valid(expression) else "unknown @ shortcut"
    fields = expression.split()
    if len(fields) == 6:
        return (
            "it has 6 fields; corral's schedules have no seconds field: "
            "write minute hour day-of-month month day-of-week"
        )
    if len(fields) != 5:
        return (
            f"it has {len(fields)} field{'' if len(fields) == 1 else 's'}; "
            "write minute hour day-of-month month day-of-week"
        )
    for index, (name, allowed) in enumerate(_CRON_FIELDS):
        probe = ["*"] * 5
        probe[index] = fields[index]
        if not croniter.is_valid(" ".join(probe)):
            return f'the {name} field "{fields[index]}" is not valid; allowed: {allowed}'
    if not croniter.is_valid(expression):
        return "the fields do not form a valid schedule"
    return None


def command(value: Any) -> Any:
    """``[harness] command``: a shell string, or a non-empty list of strings (argv)."""
    if isinstance(value, str):
        if not value.strip():
            raise problem("must not be empty: give a shell command or a list of arguments")
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise problem(
                "must not be an empty list: give the program and its arguments, "
                'e.g. ["my-agent", "--flag"]'
            )
        if not all(isinstance(item, str) for item in value):
            raise problem("must be a list of strings (the program and its arguments)")
        return tuple(value)
    raise problem(
        "must be a string (run with /bin/sh -c) or a list of strings (the program and "
        f"its arguments), got {describe_value(value)}"
    )


def describe_value(value: Any) -> str:
    """How a found value is named in messages: ``the string "three"``, ``-1``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        if not value:
            return "an empty list"
        shown = json.dumps(list(value), default=str)
        return f"a list {shown}" if len(shown) <= 40 else "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__} value ({value})"
