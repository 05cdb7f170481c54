"""The frozen, validated shapes of project and agent settings.

Field names are snake_case; TOML spells them in camelCase (the alias). Scalar
types are strict: ``"3"`` is not an integer and ``1`` is not ``true``.
Validators raise :func:`_checks.problem` errors whose text follows the field
name, e.g. ``'schedule' <text>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)
from pydantic.alias_generators import to_camel

from corral.project import _checks

__all__ = [
    "AgentConfig",
    "GatewayConfig",
    "HarnessConfig",
    "HooksConfig",
    "LocalConfig",
    "ModelConfig",
    "ProjectConfig",
    "RuntimeConfig",
    "StateConfig",
    "TelemetryConfig",
    "WebhookSource",
    "WebhookTrigger",
]

Provider = Literal[
    "anthropic", "openai", "groq", "google", "xai", "mistral", "openrouter", "custom"
]
AuthType = Literal["api_key", "oauth_token", "pi_auth"]
ThinkingLevel = Literal["off", "minimal", "low", "medium", "high", "xhigh"]
WebhookType = Literal["github", "sentry", "linear", "mintlify", "generic"]

Memory = Annotated[StrictStr, AfterValidator(_checks.memory)]
StateUrl = Annotated[StrictStr, AfterValidator(_checks.state_url)]
Cron = Annotated[StrictStr, AfterValidator(_checks.cron)]
CredentialRef = Annotated[StrictStr, AfterValidator(_checks.credential_ref)]
Strings = tuple[StrictStr, ...]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel)


# --- project config.toml ----------------------------------------------------


class ModelConfig(_Model):
    provider: Provider
    model: StrictStr
    auth_type: AuthType = "api_key"
    thinking_level: ThinkingLevel | None = None
    base_url: StrictStr | None = None


class LocalConfig(_Model):
    image: StrictStr | None = None
    memory: Memory = "4g"
    cpus: StrictFloat = Field(2.0, gt=0)
    timeout: StrictInt | None = Field(None, gt=0)


class GatewayConfig(_Model):
    port: StrictInt = Field(8080, ge=1, le=65535)
    url: StrictStr | None = None
    host: StrictStr = "127.0.0.1"


class WebhookSource(_Model):
    type: WebhookType
    credential: StrictStr | None = None
    allow_unsigned: StrictBool = False


class TelemetryConfig(_Model):
    enabled: StrictBool = False
    provider: Literal["otel", "none"] = "none"
    endpoint: StrictStr | None = None
    service_name: StrictStr | None = None
    headers: Mapping[str, StrictStr] = Field(default_factory=dict)
    sampling_rate: StrictFloat | None = Field(None, ge=0, le=1)


class StateConfig(_Model):
    url: StateUrl = "sqlite:///.corral/state.db"


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
    state: StateConfig = StateConfig()
    models: Mapping[str, ModelConfig] = Field(default_factory=dict)
    local: LocalConfig = LocalConfig()
    gateway: GatewayConfig = GatewayConfig()
    webhooks: Mapping[str, WebhookSource] = Field(default_factory=dict)
    telemetry: TelemetryConfig = TelemetryConfig()


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


class HooksConfig(_Model):
    pre: Strings = ()
    post: Strings = ()


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


class AgentConfig(_Model):
    source: StrictStr | None = None
    models: Strings = ()
    credentials: tuple[CredentialRef, ...] = ()
    schedule: Cron | None = None
    webhooks: tuple[WebhookTrigger, ...] = ()
    hooks: HooksConfig = HooksConfig()
    params: Mapping[str, Any] = Field(default_factory=dict)
    scale: StrictInt | None = Field(None, ge=0)
    timeout: StrictInt = Field(3600, gt=0)
    max_work_queue_size: StrictInt = Field(100, ge=1)
    runtime: RuntimeConfig = RuntimeConfig()
    harness: HarnessConfig = HarnessConfig()
