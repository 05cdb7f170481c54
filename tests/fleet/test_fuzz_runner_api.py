"""schemathesis over the runner API, from its own OpenAPI document (/fleet/v1/openapi.json):
no input gets a 5xx, every answer conforms to the document (status, content type, body),
and no answer gives a runner another runner's run or credential.

A real gateway (uvicorn, the scheduler, a SQLite store) serves in a thread with its own
event loop. Two runners join over HTTP; runner A is handed a run of a pushed bundle.
Each operation is called with A's credential (half the cases aimed at A's run, with its
fence), with B's (half aimed at A's run), with garbage, and with none.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from corral.bundles import pack
from tests.scheduler.helpers import write_project
from tests.served import serve_gateway

# about 100 s for the module on a loaded machine: six rounds of every operation
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OPERATOR = "fuzz-operator-token"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Runner:
    id: str
    credential: str


@dataclass
class Served:
    url: str
    a: Runner
    b: Runner
    run_id: str
    fence: int
    bundle: str


def _setup(url: str, root: Path, follow: Any) -> Served:
    """Push a bundle, join two runners, hand runner A the one queued run."""
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    packed = pack(root)
    pushed = httpx.post(
        f"{url}/control/bundles",
        content=packed.data,
        headers=operator | {"Content-Type": "application/x-tar"},
        timeout=60,
    )
    assert pushed.status_code == 200, pushed.text
    follow()  # the scheduler takes the pushed bundle up now, not on its next look
    runners = []
    for name in ("a", "b"):
        made = httpx.post(f"{url}/control/fleet/tokens", json={}, headers=operator, timeout=30)
        assert made.status_code == 201, made.text
        body = {"token": made.json()["token"], "name": name, "hostname": f"{name}.example"}
        joined = httpx.post(f"{url}/fleet/v1/join", json=body, timeout=30)
        assert joined.status_code == 201, joined.text
        runners.append(Runner(joined.json()["runnerId"], joined.json()["credential"]))
    a, b = runners
    queued = httpx.post(f"{url}/control/runs", json={"agent": "remote"}, headers=operator)
    assert queued.status_code in (200, 201, 202), queued.text
    work = httpx.post(
        f"{url}/fleet/v1/work",
        json={"free": 1, "wait": 10},
        headers={"Authorization": f"Bearer {a.credential}"},
        timeout=30,
    )
    assert len(work.json()["runs"]) == 1, work.text
    [given_run] = work.json()["runs"]
    run = given_run["run"]
    return Served(url, a, b, run["id"], run["fence"], packed.hash)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz-runner") / "p"
    agents: dict[str, dict[str, object]] = {"remote": {"command": "true", "runsOn": []}}
    with serve_gateway(root, agents, operator=OPERATOR) as gateway:

        def follow() -> None:
            gateway.call(gateway.scheduler.bundles.check)

        ready_served = _setup(gateway.url, root, follow)
        stop = threading.Event()
        beating = threading.Thread(target=_keep_alive, args=(ready_served, stop))
        beating.start()
        try:
            yield ready_served
        finally:
            stop.set()
            beating.join(30)


def _keep_alive(served: Served, stop: threading.Event) -> None:
    """Runner A's heartbeat with its run, every second: its lease (12 s) outlives the
    fuzzing, as a live runner's does."""
    body = {"running": [{"runId": served.run_id, "fence": served.fence}]}
    headers = {"Authorization": f"Bearer {served.a.credential}"}
    while not stop.wait(1.0):
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{served.url}/fleet/v1/heartbeat", json=body, headers=headers, timeout=10)


def operations(served: Served) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{served.url}/fleet/v1/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in found}
    assert {"/fleet/v1/join", "/fleet/v1/heartbeat", "/fleet/v1/work"} <= paths
    assert "/fleet/v1/runs/{run_id}/secret" in paths and "/fleet/v1/bundles/{bundle}" in paths
    assert all(path.startswith("/fleet/v1/") for path in paths)  # nothing else in it
    return found


def fuzz(served: Served, credential: str | None, aim: bool) -> list[tuple[str, int, str]]:
    """Every operation with generated input, the credential ``credential`` (None: no
    header); with ``aim``, half the cases about a run name runner A's (and its fence,
    except when ending or releasing it). Returns (path, status, answer) of each call."""
    headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
    seen: list[tuple[str, int, str]] = []
    chance = random.Random(16)
    for operation in operations(served):

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            if case.path == "/fleet/v1/work" and isinstance(case.body, dict):
                wait = case.body.get("wait", 0.2)  # short long polls (25 s when absent)
                case.body["wait"] = min(wait, 0.2) if isinstance(wait, int | float) else wait
            if aim and "run_id" in (case.path_parameters or {}) and chance.random() < 0.5:
                case.path_parameters["run_id"] = served.run_id
                ending = case.path.endswith(("/end", "/release"))
                if isinstance(case.body, dict) and "fence" in case.body:
                    # its own fence, except to end or release it: a wrong one then (a
                    # generated fence is often 1, the run's own, and would end it)
                    case.body["fence"] = served.fence + 7 if ending else served.fence
                if isinstance(case.query, dict) and "fence" in case.query:
                    case.query["fence"] = served.fence
            response = case.call(headers=headers, timeout=30)
            seen.append((case.formatted_path, response.status_code, response.text))
            case.validate_response(response, checks=CHECKS, headers=headers)

        call()
    return seen


def test_runner_a_on_its_own_run(served: Served) -> None:
    seen = fuzz(served, served.a.credential, aim=True)
    mine = [s for p, s, _ in seen if served.run_id in p]
    assert 200 in mine  # the generated cases reached its run
    assert any(p == "/fleet/v1/heartbeat" and s == 200 for p, s, _ in seen)


def test_runner_b_gets_nothing_of_runner_a(served: Served) -> None:
    seen = fuzz(served, served.b.credential, aim=True)
    aimed = [(p, s, text) for p, s, text in seen if served.run_id in p]
    assert aimed, "no case was aimed at runner A's run"
    for path, status, text in aimed:
        assert status in (403, 409, 413, 422), (path, status, text)
    for path, _, text in seen:
        assert served.a.credential not in text and served.a.id not in text.replace(
            f"run {served.run_id} is not a run of runner {served.b.id}", ""
        ), (path, text)


@pytest.mark.parametrize("credential", [None, "garbage", "crr_not-a-runner", OPERATOR])
def test_nothing_opens_without_a_runner_credential(served: Served, credential: str | None) -> None:
    for path, status, text in fuzz(served, credential, aim=True):
        if path == "/fleet/v1/join":
            assert status in (403, 409, 413, 422), (path, status, text)
        elif path.startswith("/fleet/v1/bundles/") and credential == OPERATOR:
            continue  # an operator may read bundles
        else:
            assert status in (400, 401, 403, 413, 422), (path, status, text)
        assert served.run_id not in text or "is not a run" in text, (path, text)


def _as(served: Served, runner: Runner) -> Any:
    def call(method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {runner.credential}"}
        return httpx.request(method, f"{served.url}{path}", headers=headers, timeout=30, **kw)

    return call


def test_a_runner_credential_opens_nothing_else(served: Served) -> None:
    call = _as(served, served.a)
    for method, path, body in (
        ("GET", "/control/status", None),
        ("GET", "/control/fleet/runners", None),
        ("POST", "/control/fleet/tokens", {}),
        ("POST", f"/control/fleet/runners/{served.b.id}/revoke", None),
        ("GET", "/metrics", None),
        ("POST", "/agent/status", {"text": "hi"}),
        ("POST", "/agent/locks/acquire", {"key": "repo:x"}),
    ):
        refused = call(method, path, json=body)
        assert refused.status_code in (401, 403), (path, refused.status_code, refused.text)
    big = call(
        "POST", f"/fleet/v1/runs/{served.run_id}/log?fence={served.fence}", content=b"x" * 70_000
    )
    assert big.status_code == 413


def test_a_runner_reads_the_current_bundle_and_its_runs_only(
    served: Served, tmp_path: Path
) -> None:
    a, b = _as(served, served.a), _as(served, served.b)
    assert a("GET", f"/fleet/v1/bundles/{served.bundle}").status_code == 200
    # a new bundle becomes current: A still holds a run of the old one, B holds none
    root = tmp_path / "p2"
    write_project(root, {"remote": {"command": "echo two", "runsOn": []}})
    pushed = httpx.post(
        f"{served.url}/control/bundles",
        content=pack(root).data,
        headers={"Authorization": f"Bearer {OPERATOR}", "Content-Type": "application/x-tar"},
        timeout=60,
    )
    assert pushed.status_code == 200, pushed.text
    new = pack(root).hash
    assert a("GET", f"/fleet/v1/bundles/{served.bundle}").status_code == 200
    assert a("GET", f"/fleet/v1/bundles/{served.bundle}/agents/remote").status_code == 200
    old = b("GET", f"/fleet/v1/bundles/{served.bundle}")
    assert old.status_code == 403 and "not the current bundle" in old.json()["error"]
    assert b("GET", f"/fleet/v1/bundles/{served.bundle}/agents/remote").status_code == 403
    assert b("GET", f"/fleet/v1/bundles/{new}").status_code == 200
    # an operator reads any
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    got = httpx.get(f"{served.url}/fleet/v1/bundles/{served.bundle}", headers=operator)
    assert got.status_code == 200


def test_a_run_secret_is_set_before_the_run_starts_only(served: Served) -> None:
    a = _as(served, served.a)
    path = f"/fleet/v1/runs/{served.run_id}"
    started = a("POST", f"{path}/running", json={"fence": served.fence, "pid": 1})
    assert started.status_code in (200, 409), started.text  # 409: the fuzzing ran it already
    again = a("POST", f"{path}/secret", json={"fence": served.fence, "hash": "1" * 64})
    assert again.status_code == 409, again.text
    assert "its secret is set before it starts" in again.json()["error"]
