"""Deadlock detection for plain ``rlock``, end to end: real runs retrying a refused rlock
in a loop (as agents written for Action Llama do), the installed commands, the real
gateway, both stores."""

from __future__ import annotations

import json
from pathlib import Path

from corral.store import RunState, Store
from tests.gateway.fleet import running_fleet

K1 = "github://acme/app/pr/10"
K2 = "deploy://api-prod"


def _wait(name: str) -> str:
    return f'while [ ! -e "$OUT/{name}" ]; do sleep 0.02; done; '


def _retry(key: str, me: str) -> str:
    """Retry ``rlock key`` every 0.1 s until granted. On a deadlock answer, release the
    lock the run holds (as the skill block says), note the exit code, and go on trying."""
    return (
        "n=0; while :; do "
        f'rlock "{key}" > "$OUT/{me}.last"; code=$?; '
        f'cat "$OUT/{me}.last" >> "$OUT/{me}.answers"; '
        '[ "$code" -eq 0 ] && break; '
        f'if grep -q "possible deadlock detected" "$OUT/{me}.last"; then '
        f'echo "$code" > "$OUT/{me}.told"; runlock "$MINE" > /dev/null; MINE=; fi; '
        "n=$((n + 1)); [ $n -lt 300 ] || exit 5; sleep 0.1; done; "
    )


def _agent(me: str, other: str, mine: str, wanted: str, *, after_first_try: bool) -> str:
    """Hold ``mine``; once ``other`` holds its key (and, with ``after_first_try``, has
    been refused once), retry ``wanted`` until it is granted; then release what it holds."""
    gate = _wait(f"{other}.answers") if after_first_try else ""
    return (
        f'MINE="{mine}"; rlock "$MINE" > /dev/null || exit 3; touch "$OUT/{me}.holds"; '
        + _wait(f"{other}.holds")
        + gate
        + _retry(wanted, me)
        + f'runlock "{wanted}" > /dev/null; [ -z "$MINE" ] || runlock "$MINE" > /dev/null'
    )


async def test_a_retried_rlock_that_closes_a_cycle_is_told_and_the_loop_resolves(
    tmp_path: Path, store: Store
) -> None:
    agents = {
        "alpha": {"command": _agent("alpha", "beta", K1, K2, after_first_try=False)},
        "beta": {"command": _agent("beta", "alpha", K2, K1, after_first_try=True)},
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("alpha")
        await f.trigger("beta")
        (alpha,) = await f.finished("alpha", 1)
        (beta,) = await f.finished("beta", 1)
    assert (alpha.state, beta.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED), (
        alpha.error,
        beta.error,
    )
    # alpha was refused (a plain holder answer) and retried; beta, whose first try closed
    # the cycle alpha's retry loop was in, was told, with the cycle in Action Llama's form.
    alpha_answers = f.json_lines("alpha.answers")
    assert alpha_answers[0] == {
        "ok": False,
        "holder": beta.id,
        "heldSince": alpha_answers[0]["heldSince"],
    }
    assert alpha_answers[-1]["ok"] is True
    beta_first = f.json_lines("beta.answers")[0]
    assert beta_first == {
        "ok": False,
        "reason": "possible deadlock detected",
        "cycle": [beta.id, K1, alpha.id, K2],
        "deadlock": True,
    }
    assert f.out("beta.told").read_text().strip() == "1"  # rlock's conflict exit code
    assert not f.out("alpha.told").exists()
    assert await store.list_locks() == []
    assert await store.list_lock_wants() == []


async def test_two_runs_closing_a_cycle_at_once_exactly_one_is_told(
    tmp_path: Path, store: Store
) -> None:
    agents = {
        "alpha": {"command": _agent("alpha", "beta", K1, K2, after_first_try=False)},
        "beta": {"command": _agent("beta", "alpha", K2, K1, after_first_try=False)},
    }
    async with running_fleet(tmp_path / "p", store, agents) as f:
        await f.trigger("alpha")
        await f.trigger("beta")
        (alpha,) = await f.finished("alpha", 1)
        (beta,) = await f.finished("beta", 1)
    assert (alpha.state, beta.state) == (RunState.SUCCEEDED, RunState.SUCCEEDED), (
        alpha.error,
        beta.error,
    )
    firsts = {me: f.json_lines(f"{me}.answers")[0] for me in ("alpha", "beta")}
    told = [me for me, first in firsts.items() if first.get("deadlock") is True]
    assert len(told) == 1, firsts
    [other] = {"alpha", "beta"} - set(told)
    assert firsts[other]["ok"] is False and "holder" in firsts[other]
    run = {"alpha": alpha, "beta": beta}
    assert firsts[told[0]]["cycle"] == [
        run[told[0]].id,
        K1 if told[0] == "beta" else K2,
        run[other].id,
        K2 if told[0] == "beta" else K1,
    ]
    assert json.loads(f.out(f"{told[0]}.told").read_text()) == 1
    assert await store.list_locks() == []
