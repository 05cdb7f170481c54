"""schemathesis against the gateway's own OpenAPI document: no input gets a 5xx.

A real gateway (uvicorn, the scheduler, a SQLite store) serves in a thread with its own
event loop; schemathesis generates requests for every operation from /openapi.json, with
a live run's secret (agent API), the operator token (control API), and with neither.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from corral.scheduler.service import Scheduler
from corral.store import NewItem, Store, TriggerKind
from tests.served import serve_gateway

OPERATOR = "fuzz-operator-token"


@dataclass
class Served:
    url: str
    secret: str


async def _prepare(scheduler: Scheduler, store: Store) -> str:
    """A live run of dev's and its secret: the in-run API's credential."""
    await store.enqueue(NewItem(agent="dev", trigger=TriggerKind.MANUAL))
    (claim,) = await store.claim(scheduler.id, lease_seconds=3600, limit=1)
    await store.mark_run_running(claim.run.id, pid=None, host=None)
    secret, ref = scheduler.link.issue(claim.run.id, "dev", "manual")
    await store.set_run_secret(claim.run.id, ref.secret_hash)
    return secret


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz") / "p"
    agents: dict[str, dict[str, object]] = {
        "dev": {"scale": 2, "command": "true"},
        "reviewer": {"command": "true"},
    }
    with serve_gateway(root, agents, operator=OPERATOR, prepare=_prepare) as gateway:
        yield Served(gateway.url, gateway.prepared)


def operations(served: Served) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 14  # the agent API, the control API, health
    return found


def fuzz(served: Served, headers: dict[str, str]) -> list[tuple[str, int]]:
    """Every operation with generated input; returns (path, status) of each call."""
    seen: list[tuple[str, int]] = []
    for operation in operations(served):

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            response = case.call(headers=headers, timeout=30)
            seen.append((case.path, response.status_code))
            assert response.status_code < 500, (case.method, case.path, response.text)

        call()
    return seen


# Every operation, 25 calls each: with the task board's ten routes this passes 120 s on a
# loaded machine, so these two get more time.
@pytest.mark.timeout(600)
def test_no_server_error_with_a_run_secret(served: Served) -> None:
    seen = fuzz(served, {"Authorization": f"Bearer {served.secret}"})
    assert any(path.startswith("/agent/") and status == 200 for path, status in seen)


@pytest.mark.timeout(600)
def test_no_server_error_with_the_operator_token(served: Served) -> None:
    seen = fuzz(served, {"Authorization": f"Bearer {OPERATOR}"})
    assert any(path.startswith("/control/") and status < 300 for path, status in seen)


def test_nothing_is_open_without_credentials(served: Served) -> None:
    for path, status in fuzz(served, {}):
        if path.startswith(("/agent/", "/control/")):
            assert status in (400, 401, 403, 404, 405, 422), (path, status)
