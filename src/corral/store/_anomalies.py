"""Anomalies found where a run ends (crash loop, failed hook, budget overrun), and the
once-per-episode record every anomaly kind but ``token_reused`` uses.

``finalize`` is where a run's end is recorded, for a control plane's own runs and for
runners' runs alike (the runs API calls it too). A run that succeeded costs nothing
here; a run that did not costs one more transaction, after its end is committed:

- ``hook_failed``: its error names a hook that failed (``pre hook 1 (`cmd`) exited with
  code 3``); subject ``<agent>:<kind> hook <n>``.
- ``budget_overrun``: it was stopped by a budget (``runs.budget``: turns, tokens, cost,
  wall clock, daily cost); subject ``<agent>:<budget>``.
- ``crash_loop``: it ended failed or timed out, and so did each of the last
  ``CRASH_LOOP_RUNS`` runs ended on its runner (subject ``rnr-…``) or, for a control
  plane's run, of its agent on the control plane (subject ``agent:<name>``).

An episode: while an anomaly of a kind and subject is open, a new occurrence updates its
evidence (the latest run, how many times it happened) instead of adding a row; once
resolved, the next occurrence opens a new one.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from corral.errors import StoreError
from corral.store._core import Row, StoreCore, Transaction
from corral.store.records import AnomalyKind, Run, RunState

__all__ = ["CRASH_LOOP_RUNS", "budget_limit", "hook_failure", "note_run_end", "record_episode_in"]

log = logging.getLogger("corral.store")

#: A runner (or an agent on the control plane) is in a crash loop when this many of the
#: runs it ended last, in a row, failed or timed out.
CRASH_LOOP_RUNS = 5

_CRASHED = frozenset({RunState.FAILED.value, RunState.TIMED_OUT.value})
_HOOK = re.compile(
    r"(?P<kind>pre|post) hook (?P<index>\d+) \(`(?P<command>.*)`\) "
    r"(?:exited with code (?P<code>-?\d+)|timed out after (?P<timeout>[\d.]+) s)",
    re.DOTALL,
)


_RUN_LIMIT = re.compile(r"stopped by the .+? budget \((?P<limit>[^)]*)\)")
_DAILY = re.compile(
    r"(?P<who>agent '[^']*'|the project) has spent \$(?P<spent>[\d.]+) today \(UTC\) "
    r"of its \$(?P<limit>[\d.]+) a day"
)


def budget_limit(error: str | None) -> dict[str, Any]:
    """The limit (and, for a daily cap, what was spent today and whose cap it is) as a
    run's error words it: the built-in harness's ``stopped by the tokens budget (1000
    tokens)``, the daily cap's ``agent 'a' has spent $1.20 today (UTC) of its $1.00``."""
    daily = None if error is None else _DAILY.search(error)
    if daily is not None:
        return {
            "limit": f"${daily['limit']} a day",
            "spentToday": f"${daily['spent']}",
            "cap": "project" if daily["who"] == "the project" else "agent",
        }
    found = None if error is None else _RUN_LIMIT.search(error)
    return {"limit": None if found is None else found["limit"]}


def hook_failure(error: str | None, *, anchored: bool = False) -> dict[str, Any] | None:
    """The hook an error names as failed (as ``harness.hooks.HookFailure`` words it);
    ``anchored``: only when the text starts with it."""
    if error is None:
        return None
    found = _HOOK.match(error) if anchored else _HOOK.search(error)
    if found is None:
        return None
    code = found["code"]
    return {
        "hook": f"{found['kind']} hook {found['index']}",
        "command": found["command"],
        "exitCode": None if code is None else int(code),
        "timedOut": found["timeout"] is not None,
    }


async def note_run_end(store: StoreCore, run: Run) -> None:
    """Record the anomalies ``run``'s end shows, if any (nothing for a success). A store
    error is logged, never raised: the run's end is recorded already."""
    if run.state is RunState.SUCCEEDED:
        return
    hook = hook_failure(run.error)
    crashed = run.state.value in _CRASHED
    if hook is None and run.budget is None and not crashed:
        return
    try:
        # The usual failed run: one read (its runner's or agent's last ends) and no
        # write; a transaction only when there is something to record.
        loop = await _crash_loop_rows(store, run) if crashed else None
        if hook is None and run.budget is None and loop is None:
            return
        async with store.transaction() as tx:
            if hook is not None:
                await _hook_failed(store, tx, run, hook)
            if run.budget is not None:
                await _budget_overrun(store, tx, run)
            if loop is not None:
                await _crash_loop(store, tx, run, *loop)
    except StoreError as exc:
        log.warning(
            "could not record the anomalies of run %s: %s",
            run.id,
            exc,
            extra={"action": "anomaly_unrecorded", "run_id": run.id},
        )


def _where(run: Run) -> dict[str, Any]:
    return {"runner": run.runner_id, "host": run.host}


async def _hook_failed(store: StoreCore, tx: Transaction, run: Run, hook: dict[str, Any]) -> None:
    evidence = {
        "run": run.id,
        "agent": run.agent,
        **hook,
        **_where(run),
        "error": run.error,
        "at": _iso(run),
    }
    await record_episode_in(
        store, tx, AnomalyKind.HOOK_FAILED, f"{run.agent}:{hook['hook']}", evidence
    )


async def _budget_overrun(store: StoreCore, tx: Transaction, run: Run) -> None:
    evidence = {
        "run": run.id,
        "agent": run.agent,
        "budget": run.budget,
        # The limit as the run's error words it: the config may have changed since.
        **budget_limit(run.error),
        "error": run.error,
        "spent": {
            "costUsd": run.cost_usd,
            "inputTokens": run.input_tokens,
            "outputTokens": run.output_tokens,
        },
        **_where(run),
        "at": _iso(run),
    }
    subject = f"{run.agent}:{run.budget}"
    await record_episode_in(store, tx, AnomalyKind.BUDGET_OVERRUN, subject, evidence)


async def _crash_loop_rows(store: StoreCore, run: Run) -> tuple[str, list[Any]] | None:
    """The subject and the last ends that make a crash loop of ``run``'s end (its
    runner's, or its agent's on the control plane), or None when they do not."""
    if run.runner_id is not None:
        subject = run.runner_id
        query, params = "last_ends_on_runner", {"runner_id": run.runner_id}
    else:
        subject = f"agent:{run.agent}"
        query, params = "last_ends_of_agent_here", {"agent": run.agent}
    rows = await store.statement(query, {**params, "limit": CRASH_LOOP_RUNS})
    if len(rows) < CRASH_LOOP_RUNS or any(row["state"] not in _CRASHED for row in rows):
        return None
    return subject, rows


async def _crash_loop(
    store: StoreCore, tx: Transaction, run: Run, subject: str, rows: list[Any]
) -> None:
    evidence = {
        "rule": f"the last {CRASH_LOOP_RUNS} runs ended failed or timed out",
        "runs": [
            {
                "run": row["id"],
                "agent": row["agent"],
                "state": row["state"],
                "exitCode": row["exit_code"],
            }
            for row in rows
        ],
        "agents": sorted({row["agent"] for row in rows}),
        **_where(run),
    }
    await record_episode_in(store, tx, AnomalyKind.CRASH_LOOP, subject, evidence)


def _iso(run: Run) -> str | None:
    return None if run.ended_at is None else run.ended_at.isoformat()


async def record_episode_in(
    store: StoreCore,
    tx: Transaction,
    kind: AnomalyKind,
    subject: str,
    evidence: dict[str, Any],
    *,
    same: str | None = None,
) -> tuple[Row, bool]:
    """Open an anomaly of ``kind`` about ``subject`` with ``evidence``, or, when one is
    open already, update its evidence (``occurrences`` counts them), or leave it as it is
    when its evidence has the same value for ``same`` (the same occurrence seen again):
    the row, and whether it is new."""
    key = {"kind": kind.value, "subject": subject}
    found = await tx.fetch_one("open_anomaly_of", key)
    if found is None:
        params = {
            **key,
            "now": store.encode_time(store.now()),
            "evidence": store.encode_json({**evidence, "occurrences": 1}),
        }
        row = await tx.fetch_one("insert_anomaly_episode", params)
        if row is not None:
            return row, True
        # another process opened it a moment ago: this occurrence updates it
        found = store._returned(await tx.fetch_one("open_anomaly_of", key), "open_anomaly_of")
    if same is not None:
        if (store.decode_json(found["evidence"]) or {}).get(same) == evidence.get(same):
            return found, False
    before = store.decode_json(found["evidence"]) or {}
    seen = int(before.get("occurrences") or 1)
    first = before.get("first", before.get("run"))
    merged = {**evidence, "occurrences": seen + 1}
    if first is not None:
        merged["first"] = first
    params = {"id": found["id"], "evidence": store.encode_json(merged)}
    row = await tx.fetch_one("update_anomaly_evidence", params)
    return store._returned(row, "update_anomaly_evidence"), False
