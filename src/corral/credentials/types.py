"""Credential types: plain data saying what each kind of credential holds and what a run gets.

A credential is named ``TYPE`` or ``TYPE:INSTANCE`` (the instance defaults to ``default``).
Each of its fields is one file; each environment variable it sets is a template over
those fields: ``{FIELD}`` is the field's value, ``{FIELD:path}`` the path of its file and
``{instance}`` the instance name.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath

from corral.credentials.errors import CredentialUsageError

__all__ = [
    "DEFAULT_INSTANCE",
    "WEBHOOK_SECRET",
    "CredentialField",
    "CredentialRef",
    "CredentialType",
    "EnvVar",
    "credential_type",
    "credential_types",
    "parse_ref",
    "webhook_secret_ref",
]

DEFAULT_INSTANCE = "default"
#: The type of a webhook source's signing secret (``[webhooks.NAME] credential``).
WEBHOOK_SECRET = "webhook_secret"

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# No leading "." : no hidden directories, and neither "." nor ".." can name an instance.
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE_RE = re.compile(r"\{([a-z_]+)(:path)?\}")

# Variables a credential may not set: the ones corral itself gives every run, and the
# ones that change how every program in the run behaves.
_RESERVED_ENV = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "PWD", "TERM", "TZ", "LANG", "GATEWAY_URL"}
)
_RESERVED_ENV_PREFIXES = ("CORRAL_", "LC_", "LD_")


@dataclass(frozen=True)
class CredentialField:
    """One value of a credential, stored as one file named after the field."""

    name: str
    description: str
    multiline: bool = False
    required: bool = True
    #: Whether the value is a secret: secret values are redacted from a run's output.
    secret: bool = True


@dataclass(frozen=True)
class EnvVar:
    """An environment variable a credential sets in a run.

    ``name`` and ``value`` are templates (see the module); ``optional`` holds
    ``(field, text)`` pairs, the text appended to the value when that optional field
    is set. With ``shell``, the value is a shell command line and paths in it are quoted.
    """

    name: str
    value: str
    optional: tuple[tuple[str, str], ...] = ()
    shell: bool = False

    def render(
        self, instance: str, values: Mapping[str, str], paths: Mapping[str, PurePath]
    ) -> tuple[str, str]:
        """``(name, value)`` for a credential with these field values and file paths."""
        value = self.value + "".join(text for field, text in self.optional if field in values)
        return (
            _fill(self.name, instance, values, paths, shell=False),
            _fill(value, instance, values, paths, shell=self.shell),
        )

    def shown_name(self) -> str:
        """The variable's name for humans: ``<INSTANCE>`` for the generic ``env`` type."""
        return self.name.replace("{instance}", "<INSTANCE>")

    def shown_value(self) -> str:
        """The value for humans: ``<token>``, ``ssh -i <private_key file> ...``."""
        text = self.value + "".join(f" [{text.strip()}]" for _, text in self.optional)
        return _TEMPLATE_RE.sub(_placeholder, text)

    def describe(self) -> str:
        """``GITHUB_TOKEN``, or ``GIT_SSH_COMMAND = ssh -i <private_key file> ...``."""
        if _TEMPLATE_RE.fullmatch(self.value):
            return self.shown_name()
        return f"{self.shown_name()} = {self.shown_value()}"


def _placeholder(match: re.Match[str]) -> str:
    return f"<{match[1]} file>" if match[2] else f"<{match[1]}>"


def _fill(
    template: str,
    instance: str,
    values: Mapping[str, str],
    paths: Mapping[str, PurePath],
    *,
    shell: bool,
) -> str:
    def one(match: re.Match[str]) -> str:
        name, is_path = match[1], bool(match[2])
        if name == "instance" and not is_path:
            return instance
        if is_path:
            path = str(paths[name])
            return shlex.quote(path) if shell else path
        return values[name]

    return _TEMPLATE_RE.sub(one, template)


@dataclass(frozen=True)
class CredentialType:
    """A kind of credential: its fields, the variables it sets and its line in the prompt."""

    name: str
    description: str
    fields: tuple[CredentialField, ...]
    env: tuple[EnvVar, ...]
    #: One line for the prompt's ``<credential-context>`` block (a template, ``{instance}``).
    context: str
    #: The instance is the name of the environment variable (the generic ``env`` type).
    instance_is_env_name: bool = False
    #: Whether an agent may name it in ``credentials``. A webhook signing secret is for the
    #: gateway alone: a run that held it could forge deliveries that start more runs.
    given_to_runs: bool = True

    def field(self, name: str) -> CredentialField | None:
        return next((f for f in self.fields if f.name == name), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def required_fields(self) -> tuple[CredentialField, ...]:
        return tuple(f for f in self.fields if f.required)

    def context_line(self, instance: str) -> str:
        return self.context.replace("{instance}", instance)

    def env_names(self, instance: str) -> tuple[str, ...]:
        return tuple(var.name.replace("{instance}", instance) for var in self.env)


_BUILTIN: tuple[CredentialType, ...] = (
    CredentialType(
        name="github_token",
        description="A GitHub personal access token or app token, for `gh` and `git` over HTTPS.",
        fields=(CredentialField("token", "the token (ghp_..., github_pat_... or ghs_...)"),),
        env=(EnvVar("GITHUB_TOKEN", "{token}"), EnvVar("GH_TOKEN", "{token}")),
        context="`GITHUB_TOKEN` / `GH_TOKEN` — use `gh` CLI and `git` directly",
    ),
    CredentialType(
        name="git_ssh",
        description="An SSH private key for `git` over SSH (e.g. a deploy key).",
        fields=(
            CredentialField(
                "private_key", "the private key file's content (-----BEGIN ...)", multiline=True
            ),
            CredentialField(
                "known_hosts",
                "known_hosts lines for the git servers (optional; without it the first "
                "key a server shows is accepted)",
                multiline=True,
                required=False,
                secret=False,
            ),
        ),
        env=(
            EnvVar(
                "GIT_SSH_COMMAND",
                "ssh -i {private_key:path} -o IdentitiesOnly=yes "
                "-o StrictHostKeyChecking=accept-new",
                optional=(("known_hosts", " -o UserKnownHostsFile={known_hosts:path}"),),
                shell=True,
            ),
        ),
        context="`GIT_SSH_COMMAND` — `git` uses the SSH key for clones, fetches and pushes "
        "over SSH",
    ),
    CredentialType(
        name="anthropic_key",
        description="An Anthropic API key.",
        fields=(CredentialField("api_key", "the API key (sk-ant-...)"),),
        env=(EnvVar("ANTHROPIC_API_KEY", "{api_key}"),),
        context="`ANTHROPIC_API_KEY` — Anthropic API key",
    ),
    CredentialType(
        name="openai_key",
        description="An OpenAI API key.",
        fields=(CredentialField("api_key", "the API key (sk-...)"),),
        env=(EnvVar("OPENAI_API_KEY", "{api_key}"),),
        context="`OPENAI_API_KEY` — OpenAI API key",
    ),
    CredentialType(
        name="env",
        description="Any secret as one environment variable; the instance is the variable's "
        "name (env:SENTRY_TOKEN).",
        fields=(CredentialField("value", "the variable's value"),),
        env=(EnvVar("{instance}", "{value}"),),
        context="`{instance}` — set from the credential env:{instance}",
        instance_is_env_name=True,
    ),
    CredentialType(
        name=WEBHOOK_SECRET,
        description="A webhook source's signing secret: for the gateway, never given to a run.",
        fields=(CredentialField("secret", "the signing secret, as entered at the sender"),),
        env=(),
        context="a webhook signing secret (checked by the gateway; never given to a run)",
        given_to_runs=False,
    ),
    CredentialType(
        name="operator_token",
        description="An operator token of a remote corral gateway, for the CLI "
        "(`corral stat -E NAME` reads operator_token:NAME); never given to a run.",
        fields=(CredentialField("token", "the token `corral token create` printed there"),),
        env=(),
        context="an operator token (used by the CLI; never given to a run)",
        given_to_runs=False,
    ),
)
_BY_NAME = {ctype.name: ctype for ctype in _BUILTIN}
# The described system has one secret type per provider; all of them are this one here.
_ALIASES = {
    "github_webhook_secret": WEBHOOK_SECRET,
    "sentry_client_secret": WEBHOOK_SECRET,
    "linear_webhook_secret": WEBHOOK_SECRET,
    "mintlify_webhook_secret": WEBHOOK_SECRET,
}


def credential_types() -> tuple[CredentialType, ...]:
    """Every credential type corral knows, in the order they are documented."""
    return _BUILTIN


def credential_type(name: str) -> CredentialType:
    """The type called ``name`` (or an old name of it, such as ``github_webhook_secret``);
    an unknown name is an error listing the known ones."""
    found = _BY_NAME.get(_ALIASES.get(name, name))
    if found is not None:
        return found
    known = ", ".join(_BY_NAME)
    close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
    hint = f'did you mean "{close[0]}"? ' if close else ""
    raise CredentialUsageError(
        name,
        f'unknown credential type "{name}"',
        f"{hint}the known types are {known} (`corral creds types` describes them)",
    )


@dataclass(frozen=True, order=True)
class CredentialRef:
    """A credential's name: its type and instance."""

    type: str
    instance: str = DEFAULT_INSTANCE

    def __str__(self) -> str:
        """``TYPE`` for the default instance, else ``TYPE:INSTANCE``, as written in configs."""
        return self.type if self.instance == DEFAULT_INSTANCE else f"{self.type}:{self.instance}"

    @property
    def full(self) -> str:
        return f"{self.type}:{self.instance}"

    @property
    def add_command(self) -> str:
        return f"corral creds add {self}"


def parse_ref(text: str) -> CredentialRef:
    """Read ``TYPE`` or ``TYPE:INSTANCE`` and check it names a possible credential."""
    type_name, _, instance = text.partition(":")
    has_instance = ":" in text
    if not _TYPE_RE.match(type_name):
        raise CredentialUsageError(
            text,
            "not a credential name: write TYPE or TYPE:INSTANCE, TYPE in lowercase letters, "
            "digits and '_' (e.g. github_token or env:SENTRY_TOKEN)",
        )
    ctype = credential_type(type_name)
    type_name = ctype.name  # an alias names the same stored credential as its type
    if ctype.instance_is_env_name:
        return CredentialRef(type_name, _env_instance(text, instance, has_instance))
    if not has_instance:
        return CredentialRef(type_name)
    if not _INSTANCE_RE.match(instance):
        raise CredentialUsageError(
            text,
            f'instance "{instance}" is not valid: use 1 to 128 letters, digits, ".", "_" '
            'and "-", not starting with "."',
        )
    return CredentialRef(type_name, instance)


def webhook_secret_ref(text: str) -> CredentialRef:
    """The signing secret named by a webhook source's ``credential``.

    ``"MyOrg"`` (a bare instance, as the described system writes it) is
    ``webhook_secret:MyOrg``; ``webhook_secret`` and its old per-provider names
    (``github_webhook_secret:MyOrg``) are accepted with or without an instance. Any other
    type is refused: only a signing secret can check a signature.
    """
    if ":" not in text and text != WEBHOOK_SECRET and text not in _ALIASES:
        text = f"{WEBHOOK_SECRET}:{text}"
    ref = parse_ref(text)
    if ref.type != WEBHOOK_SECRET:
        raise CredentialUsageError(
            text,
            f"a {ref.type} credential cannot sign webhooks",
            f'name a {WEBHOOK_SECRET} credential: its instance alone ("MyOrg" is '
            f"{WEBHOOK_SECRET}:MyOrg) or {WEBHOOK_SECRET}:INSTANCE",
        )
    return ref


def _env_instance(text: str, instance: str, has_instance: bool) -> str:
    if not has_instance or not instance:
        raise CredentialUsageError(
            text,
            "the env type needs the variable's name as its instance",
            "write env:NAME, e.g. env:SENTRY_TOKEN",
        )
    if not _ENV_NAME_RE.match(instance):
        raise CredentialUsageError(
            text,
            f'"{instance}" is not a valid environment variable name: use letters, digits and '
            '"_", not starting with a digit',
        )
    upper = instance.upper()
    if upper in _RESERVED_ENV or upper.startswith(_RESERVED_ENV_PREFIXES):
        raise CredentialUsageError(
            text,
            f"{instance} cannot be set from a credential: corral sets it, or it changes how "
            "every program in the run behaves",
            "give the value another variable name",
        )
    return instance
