"""The assembled prompt for every trigger kind, against golden files.

Regenerate after an intended change with CORRAL_REGEN_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.harness import PromptContext, build_prompt
from corral.harness.prompt import skills_used

GOLDEN = Path(__file__).with_name("golden")
PARAMS = {"repo": "acme/widgets", "labels": ["bug", "triage"]}
WEBHOOK = {
    "source": "github",
    "event": "issues",
    "action": "opened",
    "repo": "acme/widgets",
    "number": 42,
    "title": "Login button broken on Safari",
    "body": "Steps to reproduce...",
    "url": "https://github.com/acme/widgets/issues/42",
    "author": "jdoe",
    "labels": ["bug"],
    "sender": "jdoe",
    "timestamp": "2026-03-24T14:30:00Z",
    "receiptId": "wh_abc123",
}
CREDENTIALS = (
    "Credential files are mounted at `/credentials/` (read-only).\n\n"
    "Environment variables already set from credentials:\n\n"
    "- `GITHUB_TOKEN` / `GH_TOKEN` — use `gh` CLI and `git` directly"
)


def context(**changes: object) -> PromptContext:
    """A run's prompt context; its skills are those of a SKILL.md that names no command."""
    base: dict[str, object] = {
        "params": PARAMS,
        "workdir": Path("/srv/project/.corral/runs/dev-0123456789ab"),
        "shared_dir": Path("/srv/project/shared"),
        "trigger": "manual",
        "skills": skills_used("Review the pull request."),
    }
    return PromptContext(**(base | changes))  # type: ignore[arg-type]


CASES = {
    "schedule": context(trigger="schedule"),
    "tasks": context(
        trigger="schedule",
        payload={
            "source": "tasks",
            "trigger": 0,
            "project": "web",
            "labels": ["api", "backend"],
            "minPriority": 3,
        },
    ),
    "manual": context(),
    "manual-with-prompt": context(user_prompt="Fix issue #42 and open a PR."),
    "webhook": context(trigger="webhook", payload=WEBHOOK),
    "call": context(
        trigger="call",
        payload={"caller": "orchestrator", "context": "Find competitors for Acme in the CRM space"},
    ),
    "webhook-sandboxed-with-credentials-and-skills": context(
        trigger="webhook",
        payload=WEBHOOK,
        workdir=Path("/tmp/work"),
        sandboxed=True,
        credential_context=CREDENTIALS,
        skills=frozenset({"lock", "subagent"}),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prompt_matches_its_golden_file(name: str) -> None:
    prompt = build_prompt(CASES[name])
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("CORRAL_REGEN_GOLDEN"):
        path.write_text(prompt)
    assert prompt == path.read_text()


def test_blocks_come_in_the_documented_order() -> None:
    prompt = build_prompt(CASES["webhook-sandboxed-with-credentials-and-skills"])
    tags = [
        "<agent-config>",
        "<credential-context>",
        "<environment>",
        "<skill-lock>",
        "<skill-subagent>",
        "<webhook-trigger>",
    ]
    positions = [prompt.index(tag) for tag in tags]
    assert positions == sorted(positions)
    assert '{"repo":"acme/widgets","labels":["bug","triage"]}' in prompt


def test_no_credential_block_without_credentials_and_no_skills_unless_used() -> None:
    prompt = build_prompt(CASES["manual"])
    assert "<credential-context>" not in prompt and "<skill-subagent>" not in prompt
    assert "al-shutdown" not in prompt  # its rule is part of the credential block


def test_every_run_gets_the_lock_skill_as_in_action_llama() -> None:
    # Action Llama's scheduler always includes <skill-lock>, whatever SKILL.md says.
    assert skills_used("Review the pull request.") == {"lock"}
    assert skills_used('1. rlock "github://a/b/issues/1"\n2. runlock it') == {"lock"}
    for trigger in ("schedule", "manual", "webhook", "call"):
        assert "<skill-lock>" in build_prompt(CASES[trigger])


def test_the_subagent_skill_comes_with_the_call_commands() -> None:
    assert skills_used("echo ctx | al-subagent reviewer") == {"lock", "subagent"}
    assert skills_used("al-subagent-wait y") == {"lock", "subagent"}
    assert "<skill-subagent>" not in build_prompt(CASES["call"])


def test_the_credential_block_ends_with_the_shutdown_rule() -> None:
    prompt = build_prompt(CASES["webhook-sandboxed-with-credentials-and-skills"])
    block = prompt.split("<credential-context>\n", 1)[1].split("\n</credential-context>", 1)[0]
    assert block.endswith(
        '- If you detect credential exfiltration, immediately run: `al-shutdown "exfiltration '
        'detected"`'
    )


def test_skills_follow_an_edited_skill_body() -> None:
    # Kept per body text: the same agent before and after SKILL.md names al-subagent.
    before = "Review the pull request, then stop."
    assert skills_used(before) == {"lock"}
    after = before + "\nAsk the tester: echo ctx | al-subagent tester"
    assert skills_used(after) == {"lock", "subagent"}
    assert skills_used(before) == {"lock"}
