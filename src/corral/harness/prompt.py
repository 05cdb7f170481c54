"""Prompt assembly: the user message an agent receives, block by block.

The order is fixed: ``<agent-config>``, ``<credential-context>`` (when the agent
names credentials), ``<environment>``, then the trigger block. SKILL.md's body
is the system prompt and is not part of this text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["PromptContext", "build_prompt", "trigger_block"]

SCHEDULED = "You are running on a schedule. Check for new work and act on anything you find."
MANUAL = "You have been triggered manually. Check for new work and act on anything you find."
USER_TASK = "You have been given a specific task. Complete the task described above."
WEBHOOK = (
    "A webhook event just fired. Review the trigger context above and take appropriate action."
)


@dataclass(frozen=True)
class PromptContext:
    params: Mapping[str, Any]
    workdir: Path
    shared_dir: Path
    trigger: str  # schedule | manual | webhook | call
    user_prompt: str | None = None
    payload: Mapping[str, Any] | None = None  # webhook payload or {"caller":…, "context":…}


def _block(tag: str, body: str) -> str:
    return f"<{tag}>\n{body}\n</{tag}>"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def environment_block(workdir: Path, shared_dir: Path) -> str:
    lines = [
        f"Filesystem: your working directory is `{workdir}`. Use it for cloning repos,",
        "writing scratch files, and any other disk I/O.",
        f"Shared project context files are at `{shared_dir}` (read them, do not change them).",
        "Environment variables: Use `setenv NAME value` to persist variables across bash commands.",
    ]
    return _block("environment", "\n".join(lines))


def trigger_block(ctx: PromptContext) -> str:
    if ctx.trigger == "webhook":
        return _block("webhook-trigger", _compact(ctx.payload or {})) + "\n\n" + WEBHOOK
    if ctx.trigger == "call":
        payload = ctx.payload or {}
        caller = str(payload.get("caller", ""))
        call = _block("agent-call", _compact(payload))
        return (
            f'{call}\n\nYou were called by the "{caller}" agent. Review the call context above,\n'
            "do the requested work, and use `al-return` to send back your result."
        )
    if ctx.user_prompt:
        return _block("user-prompt", ctx.user_prompt) + "\n\n" + USER_TASK
    return SCHEDULED if ctx.trigger == "schedule" else MANUAL


def build_prompt(ctx: PromptContext) -> str:
    parts = [
        _block("agent-config", _compact(dict(ctx.params))),
        environment_block(ctx.workdir, ctx.shared_dir),
        trigger_block(ctx),
    ]
    return "\n\n".join(parts) + "\n"
