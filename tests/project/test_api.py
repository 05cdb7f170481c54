"""The public surface of corral.project, pinned."""

from __future__ import annotations

import corral.project
from corral.project import AGENT_NAME_RE, validate_agent_name


def test_exports() -> None:
    assert sorted(corral.project.__all__) == sorted([
        "AGENT_NAME_RE", "Agent", "AgentBudget", "AgentConfig", "GatewayConfig",
        "HarnessConfig", "HooksConfig", "LocalConfig", "ModelConfig", "PriceConfig", "Project",
        "ProjectBudget", "ProjectConfig", "ProviderLimitsConfig", "ResolvedValue",
        "RuntimeConfig", "ScaleConfig", "Skill", "StateConfig", "TaskTrigger",
        "TelemetryConfig", "WebhookSource", "WebhookTrigger",
        "load_project", "validate_agent_name", "MAX_FILE_BYTES", "load_minimal", "file_digest",
        "read_limited", "resolve_state_url",
    ])  # fmt: skip


def test_agent_names() -> None:
    assert AGENT_NAME_RE.match("dev-agent_2")
    assert validate_agent_name("dev") is None
    assert validate_agent_name("a" * 64) is None
    assert validate_agent_name("a" * 65) is not None
    assert validate_agent_name("-dev") is not None
    assert validate_agent_name("Dev") == (
        "agent name \"Dev\" has uppercase letters: use 1 to 64 lowercase letters, digits, '-' or "
        "'_', starting with a letter or digit, e.g. \"dev\""
    )
    assert validate_agent_name("my dev") == (
        "agent name \"my dev\" contains a space: use 1 to 64 lowercase letters, digits, '-' or "
        "'_', starting with a letter or digit"
    )
