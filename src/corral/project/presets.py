"""Harness presets: the exact command lines corral runs for common coding-agent CLIs.

``[harness] preset = "claude-code"`` is the same as writing its ``command`` out; the
table in docs/harness.md is generated from this data. Every preset reads the prompt
and the system prompt from the files corral writes for the run
(``$CORRAL_PROMPT_FILE``, ``$CORRAL_SYSTEM_PROMPT_FILE``; the prompt is also on stdin)
and runs the CLI non-interactively with its permission prompts turned off: the run's
runtime (a sandbox, a dedicated host user) is the boundary. Each CLI must be installed
and logged in, or given its API key: the key of each of the agent's models' providers
is given to the run (see :func:`key_providers`), and a preset whose CLI reads one
provider's key (``provider``) gets that key even when the agent names no model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from corral.project._models import AgentConfig, ModelConfig

__all__ = ["PRESETS", "Preset", "key_providers"]


@dataclass(frozen=True)
class Preset:
    name: str
    program: str
    command: str
    notes: str
    #: The model provider whose key the CLI reads from the environment (its variable is
    #: ``corral.credentials.model_key_variable(provider)``); None when it reads several.
    provider: str | None = None


_BOTH = '"$(cat "$CORRAL_SYSTEM_PROMPT_FILE"; printf "\\n\\n"; cat "$CORRAL_PROMPT_FILE")"'

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "claude-code",
            "claude",
            "claude -p --verbose --output-format stream-json --dangerously-skip-permissions "
            '--append-system-prompt "$(cat "$CORRAL_SYSTEM_PROMPT_FILE")"',
            "The prompt arrives on stdin; the transcript is printed as JSON lines.",
            "anthropic",
        ),
        Preset(
            "codex",
            "codex",
            f"codex exec --full-auto --skip-git-repo-check {_BOTH}",
            "The system prompt goes first in the one prompt codex exec takes.",
            "openai",
        ),
        Preset(
            "gemini",
            "gemini",
            f"gemini --yolo -p {_BOTH}",
            "The system prompt goes first in the one prompt gemini -p takes.",
            "google",
        ),
        Preset(
            "aider",
            "aider",
            'aider --yes-always --no-auto-commits --read "$CORRAL_SYSTEM_PROMPT_FILE" '
            '--message-file "$CORRAL_PROMPT_FILE"',
            "SKILL.md is given as a read-only file in the chat.",
        ),
        Preset(
            "opencode",
            "opencode",
            f"opencode run {_BOTH}",
            "The system prompt goes first in the one message opencode run takes.",
        ),
    )
}


def key_providers(models: Mapping[str, ModelConfig], config: AgentConfig) -> list[tuple[str, str]]:
    """``(provider, authType)`` of each model the agent names, in order, then its preset's
    provider when no model of that provider is named: whose API keys its runs need."""
    pairs: list[tuple[str, str]] = [
        (m.provider, m.auth_type) for name in config.models if (m := models.get(name))
    ]
    preset = PRESETS.get(config.harness.preset or "")
    if preset is not None and preset.provider is not None:
        if all(provider != preset.provider for provider, _ in pairs):
            pairs.append((preset.provider, "api_key"))
    return pairs
