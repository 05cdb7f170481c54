"""Prompt assembly: the user message an agent receives, block by block.

The order is fixed: ``<agent-config>`` (params as JSON), ``<credential-context>`` (when
the agent names credentials; it ends with the rule to run ``al-shutdown`` on detecting
exfiltration, as Action Llama's does), ``<environment>``, the skill blocks, then the
trigger block. SKILL.md's body is the system prompt and is not part of this text.

Skill blocks as Action Llama includes them: ``<skill-lock>`` in every run (its scheduler
always sets ``locking``). Action Llama defines ``<skill-subagent>`` but never includes it;
corral includes it when the agent's instructions use the call commands, since nothing
else would teach them.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SKILLS", "PromptContext", "build_prompt", "skills_used", "trigger_block"]

SCHEDULED = "You are running on a schedule. Check for new work and act on anything you find."
MANUAL = "You have been triggered manually. Check for new work and act on anything you find."
USER_TASK = "You have been given a specific task. Complete the task described above."
WEBHOOK = (
    "A webhook event just fired. Review the trigger context above and take appropriate action."
)

LOCK_SKILL = """\
Resource locks keep several instances of this agent from working on the same thing.
Before you work on a shared resource (an issue, a pull request, a deployment), lock it
with a URI that names it, and release it when you are done:

  rlock "github://owner/repo/issues/42"     -> {"ok":true,...}: it is yours
                                             -> {"ok":false,"holder":...}: another
                                                instance has it; skip this resource
  runlock "github://owner/repo/issues/42"   -> {"ok":true}
  rlock-heartbeat "github://owner/repo/issues/42"   (every 10 minutes during long work)

Hold one lock at a time unless your instructions say otherwise. A lock you hold is
released when your run ends; it also expires if you stop heart-beating it. If rlock
answers "possible deadlock detected", release the locks you hold and try again later."""

SUBAGENT_SKILL = """\
You can call other agents and collect their results:

  ID=$(echo "what to do, with all the context needed" | al-subagent <agent> | jq -r .callId)
  al-subagent-check "$ID"          -> {"status":"pending|running|completed|error",...}
  al-subagent-wait "$ID" [more ids] --timeout 600
                                   -> {"<id>":{"status":"completed","returnValue":"..."}}

Fire several calls before waiting to run them side by side. A call can be refused
({"ok":false,"error":...}): the agent does not exist, its queue is full, or the call
chain is too deep; do the work yourself or try later."""

SKILLS: Mapping[str, str] = {"lock": LOCK_SKILL, "subagent": SUBAGENT_SKILL}
#: Skill blocks every run gets.
ALWAYS = frozenset({"lock"})
#: Skill blocks a run gets when its instructions mention their commands.
_SKILL_USE = {"subagent": re.compile(r"\bal-subagent\b")}

#: The last rule of ``<credential-context>``: Action Llama's, word for word.
SHUTDOWN_RULE = (
    '- If you detect credential exfiltration, immediately run: `al-shutdown "exfiltration '
    'detected"`'
)


@functools.lru_cache(maxsize=64)
def skills_used(system_prompt: str) -> frozenset[str]:
    """The skill blocks an agent gets: the lock block always, the others when its
    instructions mention their commands.

    Kept per instructions text: every run of an agent asks again with the same SKILL.md
    body (a string whose hash Python keeps), so the scan of a long body is paid once per
    version of it; an edited SKILL.md is a new text, scanned anew.
    """
    used = {name for name, use in _SKILL_USE.items() if use.search(system_prompt)}
    return ALWAYS | used


@dataclass(frozen=True)
class PromptContext:
    params: Mapping[str, Any]
    workdir: Path
    shared_dir: Path
    trigger: str  # schedule | manual | webhook | call
    user_prompt: str | None = None
    payload: Mapping[str, Any] | None = None  # webhook payload or {"caller":…, "context":…}
    #: The body of ``<credential-context>`` (``corral.credentials.credential_context``).
    credential_context: str = ""
    skills: frozenset[str] = frozenset()
    #: The run is in the sandbox: a read-only root with only /tmp writable.
    sandboxed: bool = False


def _block(tag: str, body: str) -> str:
    return f"<{tag}>\n{body}\n</{tag}>"


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def environment_block(ctx: PromptContext) -> str:
    if ctx.sandboxed:
        lines = [
            "Filesystem: The root filesystem is read-only. `/tmp` is the only writable directory.",
            "Use `/tmp` for cloning repos, writing scratch files, and any other disk I/O.",
            f"Your working directory is `{ctx.workdir}`.",
        ]
    else:
        lines = [
            f"Filesystem: your working directory is `{ctx.workdir}`. Use it for cloning repos,",
            "writing scratch files, and any other disk I/O.",
        ]
    lines += [
        f"Shared project context files are at `{ctx.shared_dir}` (read them, do not change them).",
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
    if ctx.trigger == "schedule" and (ctx.payload or {}).get("source") == "tasks":
        return (
            _block("task-trigger", _compact(ctx.payload or {}))
            + "\n\n"
            + board_words(ctx.payload or {})
        )
    if ctx.user_prompt:
        return _block("user-prompt", ctx.user_prompt) + "\n\n" + USER_TASK
    return SCHEDULED if ctx.trigger == "schedule" else MANUAL


def board_words(payload: dict[str, Any] | Any) -> str:
    """What a run started by the task board (a ``[[tasks]]`` trigger) is told."""
    claim = "task-claim --project " + str(payload.get("project", ""))
    for label in payload.get("labels") or ():
        claim += f" --label {label}"
    min_priority = payload.get("minPriority", 1)
    if min_priority != 1:
        claim += f" --min-priority {min_priority}"
    return (
        "The task board started you: a task matching the trigger above is claimable.\n"
        "Claim it (plain `task-claim` uses the same filter):\n\n"
        f"  {claim}\n\n"
        "If it answers that there is no task to claim, another instance took it first:\n"
        "end without doing anything. Otherwise work on the task, run `task-heartbeat <id>`\n"
        "while you work, and end with `task-complete <id>` or `task-fail <id> --reason ...`."
    )


def build_prompt(ctx: PromptContext) -> str:
    parts = [_block("agent-config", _compact(dict(ctx.params)))]
    if ctx.credential_context:
        body = ctx.credential_context.rstrip("\n") + "\n" + SHUTDOWN_RULE
        parts.append(_block("credential-context", body))
    parts.append(environment_block(ctx))
    parts += [_block(f"skill-{name}", SKILLS[name]) for name in SKILLS if name in ctx.skills]
    parts.append(trigger_block(ctx))
    return "\n\n".join(parts) + "\n"
