"""What a run's page shows besides its live status and log: what started it (the trigger
payload, the webhook receipt, the call), the trigger part of its prompt, the calls it
made, and the runs before and after it in its rerun chain.

The prompt is not stored whole: a run's assembled prompt holds its agent's params (which
may be secrets, and which the dashboard shows by name only) and is written into the
run's own directory, where the run could replace it with anything (a link elsewhere, its
credentials). The page shows the part the store records exactly: the trigger block,
rebuilt from the run's trigger, payload and prompt by the function that built it for the
run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from corral.gateway.dashboard._context import Dashboard
from corral.harness.prompt import PromptContext, trigger_block
from corral.store import Call, Run, TriggerKind

__all__ = ["PAYLOAD_FOLD", "PAYLOAD_LIMIT", "RunDetails", "run_details"]

#: A payload longer than this (characters, or lines) starts folded.
PAYLOAD_FOLD = 2_000
PAYLOAD_FOLD_LINES = 40
#: The most of a payload the page shows.
PAYLOAD_LIMIT = 64 * 1024
#: How many runs back the page follows a rerun chain.
CHAIN_BACK = 10
#: How many calls, and runs queued by the run, the page lists.
RELATED_LIMIT = 100


@dataclass
class RunDetails:
    payload: str | None = None
    payload_folded: bool = False
    payload_cut: bool = False
    receipt_id: str | None = None
    prompt: str = ""
    calls_made: list[Call] = field(default_factory=list)
    called_by: Call | None = None
    reruns_before: list[Run] = field(default_factory=list)
    reruns_after: list[Run] = field(default_factory=list)


async def run_details(dash: Dashboard, run: Run) -> RunDetails:
    store = dash.scheduler.store
    details = RunDetails()
    if run.trigger_detail is not None:
        text = json.dumps(run.trigger_detail, indent=2, ensure_ascii=False, sort_keys=False)
        details.payload_cut = len(text) > PAYLOAD_LIMIT
        details.payload = text[:PAYLOAD_LIMIT]
        details.payload_folded = len(text) > PAYLOAD_FOLD or text.count("\n") > PAYLOAD_FOLD_LINES
        receipt = run.trigger_detail.get("receiptId")
        if run.trigger is TriggerKind.WEBHOOK and isinstance(receipt, str) and receipt:
            details.receipt_id = receipt
    details.prompt = _trigger_prompt(run)
    details.calls_made, details.called_by = await store.calls_of_run(run.id, limit=RELATED_LIMIT)
    children = await store.list_child_runs(run.id, limit=RELATED_LIMIT)
    details.reruns_after = [child for child in children if child.trigger is not TriggerKind.CALL]
    details.reruns_before = await _chain_back(dash, run)
    return details


def _trigger_prompt(run: Run) -> str:
    context = PromptContext(
        params={},
        workdir=Path("."),
        shared_dir=Path("."),
        trigger=run.trigger.value,
        user_prompt=run.prompt,
        payload=run.trigger_detail,
    )
    return trigger_block(context)


async def _chain_back(dash: Dashboard, run: Run) -> list[Run]:
    """The runs this one reran, nearest first (a call's run has its caller as parent:
    that is the call, not a rerun)."""
    chain: list[Run] = []
    current = run
    while (
        len(chain) < CHAIN_BACK
        and current.parent_run_id is not None
        and current.trigger is not TriggerKind.CALL
    ):
        parent = await dash.scheduler.store.get_run(current.parent_run_id)
        if parent is None:
            break
        chain.append(parent)
        current = parent
    return chain
