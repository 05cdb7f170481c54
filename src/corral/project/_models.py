"""The frozen, validated shapes of project and agent settings.

Field names are snake_case; TOML spells them in camelCase (the alias). Scalar
types are strict: ``"3"`` is not an integer and ``1`` is not ``true``.
Validators raise :func:`_checks.problem` errors whose text follows the field
name, e.g. ``'schedule' <text>``.
"""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    model_validator,
)
from pydantic.alias_generators import to_camel

from corral.project import _checks

__all__ = [
    "DEFAULT_AGENT_TIMEOUT",
    "SOURCE_DEFAULTS",
    "AgentBudget",
    "AgentConfig",
    "FleetAutoscaleConfig",
    "FleetConfig",
    "GatewayConfig",
    "HarnessConfig",
    "HooksConfig",
    "LocalConfig",
    "ModelConfig",
    "PriceConfig",
    "ProjectBudget",
    "ProjectConfig",
    "ProviderLimitsConfig",
    "RuntimeConfig",
    "ScaleConfig",
    "StateConfig",
    "TaskTrigger",
    "TelemetryConfig",
    "WebhookSource",
    "WebhookTrigger",
]

Provider = Literal[
    "anthropic", "openai", "groq", "google", "xai", "mistral", "openrouter", "custom"
]
AuthType = Literal["api_key", "oauth_token", "pi_auth"]
ThinkingLevel = Literal["off", "minimal", "low", "medium", "high", "xhigh"]
WebhookType = Literal[
    "github", "sentry", "linear", "mintlify", "slack", "discord", "twitter", "generic"
]
SignatureAlgorithm = Literal["sha256", "sha1", "sha512"]

Memory = Annotated[StrictStr, AfterValidator(_checks.memory)]
StateUrl = Annotated[StrictStr, AfterValidator(_checks.state_url)]
Cron = Annotated[StrictStr, AfterValidator(_checks.cron)]
CredentialRef = Annotated[StrictStr, AfterValidator(_checks.credential_ref)]
WebhookCredential = Annotated[StrictStr, AfterValidator(_checks.webhook_credential)]
HeaderName = Annotated[StrictStr, AfterValidator(_checks.header_name)]
BoardName = Annotated[StrictStr, AfterValidator(_checks.board_name)]
Strings = tuple[StrictStr, ...]
RunnerLabels = Annotated[tuple[StrictStr, ...], AfterValidator(_checks.runner_labels)]

#: An agent's maximum run time in seconds when neither it nor ``[local] timeout`` sets
#: one: Action Llama's DEFAULT_AGENT_TIMEOUT.
DEFAULT_AGENT_TIMEOUT = 900


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel)


def _dollars(value: Any) -> float:
    """An amount in US dollars: an integer or a float, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _checks.problem(
            "must be an amount in US dollars, a number such as 5 or 2.50; found "
            + _checks.describe_value(value)
        )
    if not math.isfinite(value) or value < 0:
        raise _checks.problem(f"must be 0 or more US dollars; found {value!r}")
    return float(value)


Dollars = Annotated[float, BeforeValidator(_dollars)]


class PriceConfig(_Model):
    """What a model costs, in US dollars per million tokens."""

    input: Dollars
    output: Dollars
    #: Prompt tokens read from the provider's cache (default: the input price).
    cache_read: Dollars | None = None
    #: Prompt tokens written to the provider's cache (default: the input price).
    cache_write: Dollars | None = None


class ProjectBudget(_Model):
    daily_cost: Dollars | None = None


class AgentBudget(_Model):
    """Limits on one run of the built-in harness, and on the agent's spend per day."""

    max_turns: StrictInt = Field(50, ge=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_cost: Dollars | None = None
    daily_cost: Dollars | None = None


# --- project config.toml ----------------------------------------------------


class ModelConfig(_Model):
    provider: Provider
    model: StrictStr
    auth_type: AuthType = "api_key"
    thinking_level: ThinkingLevel | None = None
    base_url: StrictStr | None = None
    #: Overrides the built-in price table (corral.llm.pricing) for this model.
    price: PriceConfig | None = None


def _provider_name(value: Any) -> str:
    """A key of ``[providers]``: one of the providers a model may name."""
    known = typing.get_args(Provider)
    if isinstance(value, str) and value in known:
        return value
    close = difflib.get_close_matches(str(value), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise _checks.problem(
        f"names no provider ({value!r}): {hint}[providers.<name>] takes the provider of "
        f"[models.<name>], one of {', '.join(known)}"
    )


ProviderName = Annotated[str, BeforeValidator(_provider_name)]


class ProviderLimitsConfig(_Model):
    """``[providers.<name>]``: the provider's rate limits for each API key, shared by
    every run of the built-in harness across the fleet (docs/scaling.md). A table with
    no limit still shares the provider's 429 throttles between runs."""

    requests_per_minute: StrictInt | None = Field(None, ge=1)
    tokens_per_minute: StrictInt | None = Field(None, ge=1)
    #: Requests that may go at once after a quiet spell (the rest are spaced evenly).
    burst: StrictInt = Field(1, ge=1)


class LocalConfig(_Model):
    image: StrictStr | None = None
    memory: Memory = "4g"
    cpus: StrictFloat = Field(2.0, gt=0)
    timeout: StrictInt | None = Field(None, gt=0)


class GatewayConfig(_Model):
    port: StrictInt = Field(8080, ge=1, le=65535)
    url: StrictStr | None = None
    host: StrictStr = "127.0.0.1"


#: How each type of source signs and names its deliveries, by TOML key. ``signaturePrefix``
#: is absent where it follows the algorithm (``"sha1="`` for ``algorithm = "sha1"``).
SOURCE_DEFAULTS: Mapping[str, Mapping[str, str | None]] = {
    "github": {
        "signatureHeader": "X-Hub-Signature-256",
        "algorithm": "sha256",
        "signaturePrefix": "sha256=",
        "eventHeader": "X-GitHub-Event",
        "deliveryHeader": "X-GitHub-Delivery",
    },
    "generic": {
        "signatureHeader": "X-Signature-256",
        "algorithm": "sha256",
        "eventHeader": None,
        "deliveryHeader": "X-Delivery-Id",
    },
    "sentry": {
        "signatureHeader": "Sentry-Hook-Signature",
        "algorithm": "sha256",
        "signaturePrefix": "",
        "eventHeader": "Sentry-Hook-Resource",
        "deliveryHeader": "Request-ID",
    },
    "linear": {
        "signatureHeader": "Linear-Signature",
        "algorithm": "sha256",
        "signaturePrefix": "",
        "eventHeader": None,
        "deliveryHeader": "Linear-Delivery",
    },
    "mintlify": {
        "signatureHeader": "X-Mintlify-Signature",
        "algorithm": "sha256",
        "eventHeader": None,
        "deliveryHeader": "X-Delivery-Id",
    },
    # Slack, Discord and X sign in schemes of their own (corral.webhooks.delivery) and name
    # the event and its id in the body.
    "slack": {
        "signatureHeader": "X-Slack-Signature",
        "algorithm": "sha256",
        "signaturePrefix": "v0=",
        "eventHeader": None,
        "deliveryHeader": None,
    },
    "discord": {
        "signatureHeader": "X-Signature-Ed25519",
        "algorithm": "sha256",
        "signaturePrefix": "",
        "eventHeader": None,
        "deliveryHeader": None,
    },
    "twitter": {
        "signatureHeader": "X-Twitter-Webhooks-Signature",
        "algorithm": "sha256",
        "signaturePrefix": "sha256=",
        "eventHeader": None,
        "deliveryHeader": None,
    },
}
#: The senders whose scheme is fixed, and how they sign: a setting that pretends
#: otherwise is a mistake worth reporting.
_FIXED_SCHEMES = {
    "github": 'GitHub always signs with X-Hub-Signature-256 ("sha256=<hex>") and names the '
    "event in X-GitHub-Event",
    "slack": "Slack always signs with X-Slack-Signature (v0) over X-Slack-Request-Timestamp "
    "and the body, and names the event in the body",
    "discord": "Discord always signs with X-Signature-Ed25519 over X-Signature-Timestamp and "
    "the body, and names the interaction in the body",
    "twitter": 'X always signs with X-Twitter-Webhooks-Signature ("sha256=<base64>") and '
    "names the event in the body",
}
# GitHub's scheme is fixed; a setting that pretends otherwise is a mistake worth reporting.
_SCHEME_KEYS = ("signatureHeader", "algorithm", "signaturePrefix", "eventHeader", "deliveryHeader")


class WebhookSource(_Model):
    """A named sender of webhook deliveries: ``[webhooks.NAME]`` in config.toml.

    The signature and header settings are always filled: what is not written takes the
    type's value from :data:`SOURCE_DEFAULTS`, so code reading a source never has to
    know the defaults. ``eventHeader = None`` means the event is named in the body.
    """

    type: WebhookType
    credential: WebhookCredential | None = None
    allow_unsigned: StrictBool = False
    max_body_bytes: StrictInt = Field(1_048_576, ge=1)
    signature_header: HeaderName = "X-Signature-256"
    algorithm: SignatureAlgorithm = "sha256"
    signature_prefix: StrictStr = "sha256="
    event_header: HeaderName | None = None
    delivery_header: HeaderName | None = "X-Delivery-Id"
    _name: str | None = PrivateAttr(None)

    @property
    def name(self) -> str | None:
        """The ``NAME`` of ``[webhooks.NAME]``, when the source came from a project config."""
        return self._name

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        kind = data.get("type") if isinstance(data, dict) else None
        if not isinstance(kind, str) or kind not in SOURCE_DEFAULTS:
            return data  # reported by the field's own check
        written = [key for key in _SCHEME_KEYS if key in data]
        if kind in _FIXED_SCHEMES and written:
            names = " and ".join(f"'{key}'" for key in written)
            them = "it" if len(written) == 1 else "them"
            raise _checks.problem(
                f"sets {names}, which a {kind} source does not take: {_FIXED_SCHEMES[kind]}; "
                f'remove {them} (a type = "generic" source takes {them})'
            )
        filled = {**SOURCE_DEFAULTS[kind], **data}
        algorithm = filled.get("algorithm")
        if "signaturePrefix" not in filled and isinstance(algorithm, str):
            filled["signaturePrefix"] = f"{algorithm}="
        return filled


def _otlp_endpoint(value: str) -> str:
    """An OTLP/HTTP collector's base URL (``/v1/traces`` and ``/v1/metrics`` go below it)."""
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise _checks.problem(
            f"must be the http:// or https:// URL of an OTLP/HTTP collector, such as "
            f'"http://127.0.0.1:4318"; found {value!r}'
        )
    return value


class TelemetryConfig(_Model):
    enabled: StrictBool = False
    provider: Literal["otel", "none"] = "none"
    endpoint: Annotated[StrictStr, AfterValidator(_otlp_endpoint)] | None = None
    service_name: StrictStr | None = None
    headers: Mapping[str, StrictStr] = Field(default_factory=dict)
    sampling_rate: StrictFloat | None = Field(None, ge=0, le=1)
    #: Accepted as Action Llama's configs write it; not used (docs/telemetry.md).
    propagators: tuple[StrictStr, ...] = ()


class StateConfig(_Model):
    url: StateUrl = "sqlite:///.corral/state.db"


class RuntimeConfig(_Model):
    type: Literal["host", "sandbox"] = "host"
    network: Literal["host", "none"] = "host"
    memory: Memory | None = None
    cpus: StrictFloat | None = Field(None, gt=0)


class HarnessConfig(_Model):
    """``type`` is ``None`` only before the loader resolves the default."""

    type: Literal["command", "builtin"] | None = None
    command: Annotated[str | tuple[str, ...] | None, BeforeValidator(_checks.command)] = None
    #: A named command line for a common coding-agent CLI (``corral.project.presets``).
    preset: StrictStr | None = None
    env: Mapping[str, StrictStr] = Field(default_factory=dict)


def _fraction(value: Any) -> float:
    """A utilisation: a number above 0 and at most 1."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _checks.problem(
            "must be a utilisation between 0 and 1, such as 0.7; found "
            + _checks.describe_value(value)
        )
    if not math.isfinite(value) or not 0 < value <= 1:
        raise _checks.problem(f"must be above 0 and at most 1, such as 0.7; found {value!r}")
    return float(value)


Fraction = Annotated[float, BeforeValidator(_fraction)]


class FleetAutoscaleConfig(_Model):
    """``[fleet.autoscale]``: the runner fleet grown and shrunk by a provider (docs/scaling.md,
    "Scaling the runner fleet"). ``min`` and ``max`` count runners; utilisation is busy
    slots over all slots of the runners it started, and the queue is the runs waiting for
    a runner that has its ``labels``."""

    provider: Literal["local", "command"]
    min: StrictInt = Field(0, ge=0)
    max: StrictInt = Field(ge=1, le=1000)
    policy: Literal["fixed", "reactive", "predictive"] = "reactive"
    target: Fraction = 0.6
    scale_up: Fraction = 0.7
    scale_down: Fraction = 0.2
    #: Seconds fewer runners must be wanted before one is drained.
    stabilization: StrictInt = Field(300, ge=0, le=86_400)
    window: StrictInt = Field(300, ge=15, le=86_400)
    slots_per_runner: StrictInt = Field(1, ge=1, le=1024)
    labels: Strings = ()
    #: Seconds a started runner has to join before it is recorded as failed and stopped.
    join_timeout: StrictInt = Field(120, ge=1, le=3600)
    #: ``command`` provider: the scripts that start and stop a runner host.
    start: Annotated[str | tuple[str, ...] | None, BeforeValidator(_checks.command)] = None
    stop: Annotated[str | tuple[str, ...] | None, BeforeValidator(_checks.command)] = None
    #: Seconds a start or stop script may take before it is killed.
    command_timeout: StrictInt = Field(300, ge=1, le=3600)
    #: The URL runners reach the control plane at (default: the gateway's own URL).
    url: StrictStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FleetAutoscaleConfig:
        if self.min > self.max:
            raise _checks.problem(
                f"has min = {self.min} above max = {self.max}: the fleet's size runs from "
                "min to max runners; lower min or raise max"
            )
        if not self.scale_down < self.target <= self.scale_up:
            raise _checks.problem(
                f"needs scaleDown < target <= scaleUp; found scaleDown = {self.scale_down:g}, "
                f"target = {self.target:g}, scaleUp = {self.scale_up:g} (the defaults are "
                "0.2, 0.6 and 0.7)"
            )
        if self.policy == "fixed" and self.min != self.max:
            raise _checks.problem(
                f'has policy = "fixed" with min = {self.min} and max = {self.max}: a fixed '
                "fleet has one size; set min = max"
            )
        if self.provider == "command" and (self.start is None or self.stop is None):
            missing = " and ".join(k for k in ("start", "stop") if getattr(self, k) is None)
            raise _checks.problem(
                f'has provider = "command" without {missing}: give the commands that start '
                'and stop a runner host, e.g. start = ["./start-runner.sh"]'
            )
        if self.provider == "local" and (self.start is not None or self.stop is not None):
            raise _checks.problem(
                'has start or stop with provider = "local": the local provider starts '
                'runner processes itself; remove them or set provider = "command"'
            )
        return self


class FleetConfig(_Model):
    """How runners keep in touch (docs/fleet.md): a heartbeat every ``heartbeat_seconds``;
    a runner silent for ``offline_after_seconds`` is offline."""

    heartbeat_seconds: StrictInt = Field(5, ge=1, le=300)
    offline_after_seconds: StrictInt = Field(15, ge=2, le=3600)
    #: False: the control plane runs no runs itself; every agent's runs wait for runners
    #: (an agent without ``runsOn`` goes to any runner, as ``runsOn = []`` does).
    run_locally: StrictBool = True
    #: ``[fleet.autoscale]``: runners started and stopped by a provider (None: none).
    autoscale: FleetAutoscaleConfig | None = None

    @model_validator(mode="after")
    def _window_covers_beats(self) -> FleetConfig:
        if self.offline_after_seconds < 2 * self.heartbeat_seconds:
            raise _checks.problem(
                f"offlineAfterSeconds ({self.offline_after_seconds}) must be at least twice "
                f"heartbeatSeconds ({self.heartbeat_seconds}), or a runner that misses one "
                "heartbeat is taken for offline; raise offlineAfterSeconds or lower "
                "heartbeatSeconds"
            )
        return self


class ProjectConfig(_Model):
    project_name: StrictStr | None = None
    scale: StrictInt | None = Field(None, ge=1)
    default_agent_scale: StrictInt = Field(1, ge=0)
    work_queue_size: StrictInt = Field(100, ge=1)
    max_reruns: StrictInt = Field(10, ge=0)
    max_attempts: StrictInt = Field(3, ge=1)
    max_call_depth: StrictInt = Field(3, ge=0)
    resource_lock_timeout: StrictInt = Field(1800, gt=0)
    history_retention_days: StrictInt = Field(14, ge=1)
    #: The most runners (not revoked) the fleet may have; None: no cap.
    max_runners: StrictInt | None = Field(None, ge=1)
    fleet: FleetConfig = FleetConfig()
    state: StateConfig = StateConfig()
    models: Mapping[str, ModelConfig] = Field(default_factory=dict)
    providers: Mapping[ProviderName, ProviderLimitsConfig] = Field(default_factory=dict)
    local: LocalConfig = LocalConfig()
    gateway: GatewayConfig = GatewayConfig()
    webhooks: Mapping[str, WebhookSource] = Field(default_factory=dict)
    telemetry: TelemetryConfig = TelemetryConfig()
    budget: ProjectBudget = ProjectBudget()
    #: Defaults for every agent that does not set the field itself (see _agents.py).
    runtime: RuntimeConfig = RuntimeConfig()
    harness: HarnessConfig = HarnessConfig()

    @model_validator(mode="after")
    def _name_sources(self) -> ProjectConfig:
        # A source's messages (a missing signing secret) name it; the name is its key here.
        for name, source in self.webhooks.items():
            source._name = name
        return self


# --- agents/<name>/config.toml ------------------------------------------------


class WebhookTrigger(_Model):
    source: StrictStr
    repos: Strings = ()
    orgs: Strings = ()
    org: StrictStr | None = None
    events: Strings = ()
    actions: Strings = ()
    labels: Strings = ()
    assignee: StrictStr | None = None
    author: StrictStr | None = None
    branches: Strings = ()
    conclusions: Strings = ()
    resources: Strings = ()
    organizations: Strings = ()
    projects: Strings = ()
    guilds: Strings = ()
    channels: Strings = ()
    commands: Strings = ()
    team_ids: Strings = Field((), alias="team_ids")
    users: Strings = ()
    #: ``present`` (Action Llama's): ``labels`` passes on the labels the issue has;
    #: ``changed``: a ``labeled``/``unlabeled`` event passes only on the label it changed.
    label_match: Literal["present", "changed"] = "present"


class TaskTrigger(_Model):
    """``[[tasks]]`` in an agent's config.toml: runs started by the task board (task
    streaming; docs/tasks.md). While open tasks of ``project`` that have every one of
    ``labels`` and a priority of ``minPriority`` or more have every requirement done, the
    scheduler keeps min(those tasks, scale) runs of the agent queued or running."""

    #: The board project (default: the project directory's name, as `corral tasks add`).
    project: BoardName | None = None
    #: Labels a task must all have (the claim's ``--label`` filter).
    labels: tuple[BoardName, ...] = ()
    min_priority: StrictInt = Field(1, ge=1, le=10)


#: The bounds of a task claim's lease, in seconds (``taskLease``, ``task-claim --lease``).
TASK_LEASE_MIN = 10
TASK_LEASE_MAX = 86_400


class HooksConfig(_Model):
    pre: Strings = ()
    post: Strings = ()
    #: Prepare a workspace before work arrives (warm instances; docs/scaling.md).
    warm: Strings = ()
    #: Bring a warm workspace up to date when a run takes it.
    refresh: Strings = ()


class ScaleConfig(_Model):
    """``[scale]`` in an agent's config.toml: a pool that a policy sizes between min and
    max (corral.autoscale; docs/scaling.md). ``scale = N`` is a fixed pool of N."""

    min: StrictInt = Field(0, ge=0)
    max: StrictInt = Field(ge=1)
    #: The utilisation (busy instances / pool size) a policy sizes the pool for.
    target: Fraction = 0.6
    scale_up: Fraction = 0.7
    scale_down: Fraction = 0.2
    #: Seconds a smaller size must be wanted before the pool shrinks to it.
    stabilization: StrictInt = Field(300, ge=0, le=86_400)
    #: Seconds of the rolling windows the predictive policy measures rates over.
    window: StrictInt = Field(300, ge=15, le=86_400)
    #: Seconds a new instance takes to be ready: the predictive policy's lead.
    startup: StrictInt = Field(60, ge=0, le=86_400)
    policy: Literal["fixed", "reactive", "predictive"] = "reactive"
    #: Workspaces to keep prepared (``hooks.warm``) before work arrives.
    warm: StrictInt = Field(0, ge=0)
    #: A warm workspace is deleted after this many runs ...
    warm_max_runs: StrictInt = Field(20, ge=1, le=1_000_000)
    #: ... or once it is this many seconds old.
    warm_max_age: StrictInt = Field(3600, ge=1, le=30 * 86_400)

    @model_validator(mode="after")
    def _consistent(self) -> ScaleConfig:
        if self.min > self.max:
            raise _checks.problem(
                f"has min = {self.min} above max = {self.max}: the pool's size runs from min "
                "to max; lower min or raise max"
            )
        if self.warm > self.max:
            raise _checks.problem(
                f"has warm = {self.warm} above max = {self.max}: warm instances are part of "
                "the pool; lower warm or raise max"
            )
        if not self.scale_down < self.target <= self.scale_up:
            raise _checks.problem(
                f"needs scaleDown < target <= scaleUp; found scaleDown = {self.scale_down:g}, "
                f"target = {self.target:g}, scaleUp = {self.scale_up:g} (the defaults are "
                "0.2, 0.6 and 0.7)"
            )
        if self.policy == "fixed" and self.min != self.max:
            raise _checks.problem(
                f'has policy = "fixed" with min = {self.min} and max = {self.max}: a fixed '
                "pool has one size; set min = max, or write scale = N above the tables"
            )
        return self


def _scale_kind(value: Any) -> str:
    return "pool" if isinstance(value, dict | ScaleConfig) else "size"


def _scale_shape(value: Any) -> Any:
    """``scale = N`` (N >= 0) or a ``[scale]`` table; the table is checked by ScaleConfig."""
    if isinstance(value, dict | ScaleConfig):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        # The wording of `scale = N` from before [scale] tables, kept for its readers.
        raise _checks.problem("must be an integer >= 0, got " + _checks.describe_value(value))
    return value


Scale = Annotated[
    Annotated[
        Union[Annotated[StrictInt, Tag("size")], Annotated[ScaleConfig, Tag("pool")]],  # noqa: UP007
        Discriminator(_scale_kind),
    ],
    BeforeValidator(_scale_shape),
]


class AgentConfig(_Model):
    source: StrictStr | None = None
    models: Strings = ()
    credentials: tuple[CredentialRef, ...] = ()
    schedule: Cron | None = None
    webhooks: tuple[WebhookTrigger, ...] = ()
    #: ``[[tasks]]``: runs started by the task board (task streaming).
    tasks: tuple[TaskTrigger, ...] = ()
    #: Seconds a task claim of this agent's runs lasts without a heartbeat (default 600).
    task_lease: StrictInt | None = Field(None, ge=TASK_LEASE_MIN, le=TASK_LEASE_MAX)
    hooks: HooksConfig = HooksConfig()
    params: Mapping[str, Any] = Field(default_factory=dict)
    #: ``scale = N``: a fixed pool of N; ``[scale]``: a pool sized by a policy.
    scale: Scale | None = None
    timeout: StrictInt = Field(DEFAULT_AGENT_TIMEOUT, gt=0)
    max_work_queue_size: StrictInt = Field(100, ge=1)
    runtime: RuntimeConfig = RuntimeConfig()
    harness: HarnessConfig = HarnessConfig()
    budget: AgentBudget = AgentBudget()
    #: The labels a runner must have to run this agent (``runsOn``); set (even empty: any
    #: runner), the agent runs on the fleet's runners only, never on the control plane.
    runs_on: RunnerLabels | None = None
