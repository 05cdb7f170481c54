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
from collections.abc import Iterable, Mapping
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
    #: Earlier names of the field (corral's before it took Action Llama's): a file stored
    #: under one is renamed to ``name`` when read, and ``--file OLD=PATH`` still works.
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnvVar:
    """An environment variable a credential sets in a run.

    ``name`` and ``value`` are templates (see the module); ``optional`` holds
    ``(field, text)`` pairs, the text appended to the value when that optional field
    is set. With ``shell``, the value is a shell command line and paths in it are quoted.
    With ``when``, the variable is set only when that (optional) field has a value.
    """

    name: str
    value: str
    optional: tuple[tuple[str, str], ...] = ()
    shell: bool = False
    when: str | None = None

    def applies(self, values: Mapping[str, str]) -> bool:
        return self.when is None or self.when in values

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
    #: ``(field, text)``: the text is added to the line when that optional field is set.
    context_optional: tuple[tuple[str, str], ...] = ()
    #: The instance is the name of the environment variable (the generic ``env`` type).
    instance_is_env_name: bool = False
    #: Whether an agent may name it in ``credentials``. A webhook signing secret is for the
    #: gateway alone: a run that held it could forge deliveries that start more runs.
    given_to_runs: bool = True
    #: Optional fields any one of which makes the credential whole without its required
    #: ones (git_ssh: a git identity alone, SSH left to the system's configuration, as
    #: Action Llama's "use system SSH config" stores it). The required fields stay the
    #: ones `corral creds add` asks for first.
    alone: tuple[str, ...] = ()
    #: The prompt line's start when the credential holds none of its required fields.
    context_alone: str = ""

    def missing(self, values: Mapping[str, str] | Iterable[str]) -> list[str]:
        """The required fields ``values`` lacks (none when it holds one of ``alone``)."""
        present = set(values)
        absent = [f.name for f in self.required_fields if f.name not in present]
        if absent and present.intersection(self.alone):
            return []
        return absent

    def field(self, name: str) -> CredentialField | None:
        """The field called ``name`` or, failing that, the one that was called so before."""
        found = next((f for f in self.fields if f.name == name), None)
        return found or next((f for f in self.fields if name in f.aliases), None)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    @property
    def required_fields(self) -> tuple[CredentialField, ...]:
        return tuple(f for f in self.fields if f.required)

    def context_line(self, instance: str, values: Mapping[str, str] | None = None) -> str:
        extra = "".join(text for name, text in self.context_optional if name in (values or {}))
        base = self.context
        if self.context_alone and not any(f.name in (values or {}) for f in self.required_fields):
            base = self.context_alone
        return base.replace("{instance}", instance) + extra

    def env_names(self, instance: str) -> tuple[str, ...]:
        return tuple(var.name.replace("{instance}", instance) for var in self.env)


def _token(name: str, variable: str, what: str, example: str, use: str) -> CredentialType:
    """A credential of one secret ``token`` set as one variable, as Action Llama's are."""
    return CredentialType(
        name=name,
        description=f"{what}.",
        fields=(CredentialField("token", f"the {example}"),),
        env=(EnvVar(variable, "{token}"),),
        context=f"`{variable}` — {use}",
    )


def _model_key(provider: str, variable: str, what: str, example: str) -> CredentialType:
    """``PROVIDER_key``: a model provider's API key. An agent's ``models`` imply it
    (:mod:`corral.credentials.models`); ``api_key`` was the field's name in corral before."""
    return CredentialType(
        name=f"{provider}_key",
        description=f"{what} API key, for the agent's {provider} models.",
        fields=(CredentialField("token", f"the API key ({example})", aliases=("api_key",)),),
        env=(EnvVar(variable, "{token}"),),
        context=f"`{variable}` — {what} API key",
    )


def _fields(name: str, what: str, use: str, *fields: tuple[str, str, bool, bool]) -> CredentialType:
    """A credential of several fields, each set as ``NAME_FIELD`` in upper case.

    ``fields`` are ``(field, variable, secret, required)``."""
    return CredentialType(
        name=name,
        description=f"{what}.",
        fields=tuple(
            CredentialField(field, f"the {field.replace('_', ' ')}", required=req, secret=sec)
            for field, _, sec, req in fields
        ),
        env=tuple(
            EnvVar(variable, f"{{{field}}}", when=None if req else field)
            for field, variable, _, req in fields
        ),
        context=" ".join(f"`{variable}`" for _, variable, _, _ in fields) + f" — {use}",
    )


_GIT_IDENTITY = tuple(
    EnvVar(f"GIT_{who}_{what.upper()}", f"{{{field}}}", when=field)
    for field, what in (("username", "name"), ("email", "email"))
    for who in ("AUTHOR", "COMMITTER")
)

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
        description="An SSH private key for `git` over SSH (e.g. a deploy key), and the git "
        "identity commits are made as.",
        fields=(
            CredentialField(
                "id_rsa",
                "the private key file's content (-----BEGIN ...)",
                multiline=True,
                aliases=("private_key",),
            ),
            CredentialField(
                "username", "the git author name for commits", required=False, secret=False
            ),
            CredentialField(
                "email", "the git author email for commits", required=False, secret=False
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
                "ssh -i {id_rsa:path} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new",
                optional=(("known_hosts", " -o UserKnownHostsFile={known_hosts:path}"),),
                shell=True,
                when="id_rsa",
            ),
            *_GIT_IDENTITY,
        ),
        context="`GIT_SSH_COMMAND` — `git` uses the SSH key for clones, fetches and pushes "
        "over SSH",
        context_optional=(
            ("username", "; `GIT_AUTHOR_NAME` / `GIT_COMMITTER_NAME` set for `git commit`"),
            ("email", "; `GIT_AUTHOR_EMAIL` / `GIT_COMMITTER_EMAIL` set for `git commit`"),
        ),
        alone=("username", "email"),
        context_alone="`git` over SSH uses the system's SSH configuration (no key stored)",
    ),
    _model_key("anthropic", "ANTHROPIC_API_KEY", "An Anthropic", "sk-ant-..."),
    _model_key("openai", "OPENAI_API_KEY", "An OpenAI", "sk-..."),
    _model_key("groq", "GROQ_API_KEY", "A Groq", "gsk_..."),
    _model_key("google", "GEMINI_API_KEY", "A Google AI (Gemini)", "from Google AI Studio"),
    _model_key("xai", "XAI_API_KEY", "An xAI", "xai-..."),
    _model_key("mistral", "MISTRAL_API_KEY", "A Mistral AI", "from console.mistral.ai"),
    _model_key("openrouter", "OPENROUTER_API_KEY", "An OpenRouter", "sk-or-..."),
    _model_key("custom", "CUSTOM_API_KEY", "A custom provider's", "for the model's baseUrl"),
    _token(
        "sentry_token",
        "SENTRY_AUTH_TOKEN",
        "A Sentry auth token",
        "auth token",
        "use `curl` for Sentry API requests",
    ),
    _token(
        "linear_token",
        "LINEAR_API_TOKEN",
        "A Linear personal API token",
        "API token (lin_api_...)",
        "use for Linear API access via curl or HTTP libraries",
    ),
    _fields(
        "linear_oauth",
        "Linear OAuth2 credentials",
        "use for Linear OAuth API access",
        ("client_id", "LINEAR_CLIENT_ID", False, True),
        ("client_secret", "LINEAR_CLIENT_SECRET", True, True),
        ("access_token", "LINEAR_ACCESS_TOKEN", True, True),
        ("refresh_token", "LINEAR_REFRESH_TOKEN", True, False),
    ),
    _token(
        "bugsnag_token",
        "BUGSNAG_AUTH_TOKEN",
        "A Bugsnag auth token",
        "auth token",
        "use for Bugsnag API requests",
    ),
    _token(
        "netlify_token",
        "NETLIFY_AUTH_TOKEN",
        "A Netlify personal access token",
        "access token",
        "use for Netlify API requests",
    ),
    _token(
        "mintlify_token",
        "MINTLIFY_API_TOKEN",
        "A Mintlify API token",
        "API token",
        "use for API access to Mintlify services",
    ),
    _token(
        "slack_bot_token",
        "SLACK_BOT_TOKEN",
        "A Slack bot user OAuth token",
        "bot token (xoxb-...)",
        "use for Slack API access via curl or HTTP libraries",
    ),
    _fields(
        "discord_bot",
        "Discord bot credentials",
        "use for the Discord API",
        ("application_id", "DISCORD_APPLICATION_ID", False, True),
        ("public_key", "DISCORD_PUBLIC_KEY", False, True),
        ("bot_token", "DISCORD_BOT_TOKEN", True, True),
    ),
    _fields(
        "x_twitter_api",
        "X (Twitter) API credentials",
        "use X API v2 directly",
        ("consumer_key", "X_CONSUMER_KEY", True, True),
        ("consumer_secret", "X_CONSUMER_SECRET", True, True),
        ("bearer_token", "X_BEARER_TOKEN", True, True),
    ),
    _fields(
        "reddit_oauth",
        "Reddit OAuth2 credentials of a script app",
        "use for Reddit OAuth2 script app authentication",
        ("client_id", "REDDIT_CLIENT_ID", False, True),
        ("client_secret", "REDDIT_CLIENT_SECRET", True, True),
        ("username", "REDDIT_USERNAME", False, True),
        ("password", "REDDIT_PASSWORD", True, True),
        ("user_agent", "REDDIT_USER_AGENT", False, True),
    ),
    _fields(
        "aws",
        "AWS credentials",
        "use the `aws` CLI and AWS SDKs directly",
        ("access_key_id", "AWS_ACCESS_KEY_ID", True, True),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY", True, True),
        ("default_region", "AWS_DEFAULT_REGION", False, False),
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
# Action Llama has one secret type per provider; all of them are this one here.
_ALIASES = {
    "github_webhook_secret": WEBHOOK_SECRET,
    "sentry_client_secret": WEBHOOK_SECRET,
    "linear_webhook_secret": WEBHOOK_SECRET,
    "mintlify_webhook_secret": WEBHOOK_SECRET,
    "slack_signing_secret": WEBHOOK_SECRET,
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

    ``"MyOrg"`` (a bare instance, as Action Llama writes it) is
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
