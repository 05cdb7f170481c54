"""Harness presets: the exact command lines corral runs for common coding-agent CLIs.

``[harness] preset = "claude-code"`` is the same as writing its ``command`` out; the
table in docs/harness.md is generated from this data. Every preset reads the prompt
and the system prompt from the files corral writes for the run
(``$CORRAL_PROMPT_FILE``, ``$CORRAL_SYSTEM_PROMPT_FILE``; the prompt is also on stdin)
and runs the CLI non-interactively with its permission prompts turned off: the run's
runtime (a sandbox, a dedicated host user) is the boundary. Each CLI must be installed
and logged in (or given its API key as a credential).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    program: str
    command: str
    notes: str


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
        ),
        Preset(
            "codex",
            "codex",
            f"codex exec --full-auto --skip-git-repo-check {_BOTH}",
            "The system prompt goes first in the one prompt codex exec takes.",
        ),
        Preset(
            "gemini",
            "gemini",
            f"gemini --yolo -p {_BOTH}",
            "The system prompt goes first in the one prompt gemini -p takes.",
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
