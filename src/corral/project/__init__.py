"""corral.project: read and validate a project directory into frozen objects.

project = load_project("my-project", env="staging")   # ConfigError lists every issue
project.agents["dev"].config.schedule
for value in project.explain(): print(value.key, value.value, value.source)
"""

from corral.project._checks import AGENT_NAME_RE, resolve_state_url, validate_agent_name
from corral.project._loader import load_minimal, load_project
from corral.project._models import (
    AgentBudget,
    AgentConfig,
    GatewayConfig,
    HarnessConfig,
    HooksConfig,
    LocalConfig,
    ModelConfig,
    PriceConfig,
    ProjectBudget,
    ProjectConfig,
    ProviderLimitsConfig,
    RuntimeConfig,
    ScaleConfig,
    StateConfig,
    TaskTrigger,
    TelemetryConfig,
    WebhookSource,
    WebhookTrigger,
)
from corral.project._project import Agent, Project, ResolvedValue
from corral.project._skill import Skill
from corral.project._toml import MAX_FILE_BYTES, file_digest, read_limited

__all__ = [
    "AGENT_NAME_RE",
    "MAX_FILE_BYTES",
    "Agent",
    "AgentBudget",
    "AgentConfig",
    "GatewayConfig",
    "HarnessConfig",
    "HooksConfig",
    "LocalConfig",
    "ModelConfig",
    "PriceConfig",
    "Project",
    "ProjectBudget",
    "ProjectConfig",
    "ProviderLimitsConfig",
    "ResolvedValue",
    "RuntimeConfig",
    "ScaleConfig",
    "Skill",
    "StateConfig",
    "TaskTrigger",
    "TelemetryConfig",
    "WebhookSource",
    "WebhookTrigger",
    "file_digest",
    "load_minimal",
    "load_project",
    "read_limited",
    "resolve_state_url",
    "validate_agent_name",
]
