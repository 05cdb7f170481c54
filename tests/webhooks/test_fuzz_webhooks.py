"""schemathesis over POST /webhooks/{source}, from the gateway's own OpenAPI document: no
generated delivery gets a 5xx, signed or not, and every answer that names a receipt has
one in the store.

A real gateway (uvicorn, the scheduler, a SQLite store) serves in a thread with its own
event loop, with a GitHub source (a signing secret) and a generic one (allowUnsigned).
Each generated case is sent four ways: as generated (any source name, any headers), to
the GitHub source as generated (whatever signature header it made up), to the GitHub
source signed with its secret (so it passes verification and reaches the parser and the
router), and to the unsigned source.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from corral.credentials import CredentialStore
from corral.scheduler.service import Scheduler
from corral.store import open_store
from tests.served import serve_gateway
from tests.webhooks.signing import SECRET, github_signature

PROJECT = """
[webhooks.gh]
type = "github"
credential = "gh"

[webhooks.open]
type = "generic"
allowUnsigned = true
"""
TABLES = {
    "dev": '[[webhooks]]\nsource = "gh"\nevents = ["issues", "pull_request"]\n',
    "ops": '[[webhooks]]\nsource = "open"\n',
}
ANSWERS = {200, 202, 400, 401, 404, 413}


@dataclass
class Served:
    url: str
    state_url: str


def _credentials(scheduler: Scheduler, home: Path) -> None:
    credentials = CredentialStore(home / "credentials")
    credentials.add("webhook_secret", "gh", {"secret": SECRET})
    scheduler.executor.credentials = credentials


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("fuzz-webhooks") / "p"
    agents: dict[str, dict[str, object]] = {"dev": {"command": "true"}, "ops": {"command": "true"}}
    # the scheduler does not dispatch here: the queue only fills
    with serve_gateway(
        root,
        agents,
        operator="fuzz-operator-token",
        project_toml=PROJECT,
        agent_tables=TABLES,
        configure=_credentials,
    ) as gateway:
        yield Served(gateway.url, gateway.state_url)


def webhook_operation(served: Served) -> Any:
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    (found,) = [
        result.ok()
        for result in schema.get_all_operations()
        if result.ok().path == "/webhooks/{source}" and result.ok().method.upper() == "POST"
    ]
    return found


def _request(case: Any, served: Served) -> tuple[str, bytes, dict[str, str]]:
    """The generated request as (url, body bytes, headers)."""
    kwargs = case.as_transport_kwargs(base_url=served.url)
    headers = {str(k): str(v) for k, v in (kwargs.get("headers") or {}).items()}
    if "json" in kwargs:
        body = json.dumps(kwargs["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        raw = kwargs.get("data", b"")
        body = raw.encode() if isinstance(raw, str) else bytes(raw or b"")
    return str(kwargs["url"]), body, headers


def fuzz(served: Served, mode: str) -> list[tuple[int, dict[str, Any]]]:
    operation = webhook_operation(served)
    seen: list[tuple[int, dict[str, Any]]] = []
    with httpx.Client(timeout=30) as http:

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            if mode != "as generated":
                target = "open" if mode == "unsigned source" else "gh"
                case.path_parameters = {"source": target}
            url, body, headers = _request(case, served)
            if mode == "signed":
                headers = {k: v for k, v in headers.items() if k.lower() != "x-hub-signature-256"}
                headers["X-Hub-Signature-256"] = github_signature(body, SECRET)
            response = http.post(url, content=body, headers=headers)
            assert response.status_code < 500, (url, headers, body[:300], response.text)
            try:
                answer = response.json()
            except ValueError:
                answer = {}
            seen.append((response.status_code, answer if isinstance(answer, dict) else {}))

        call()
    return seen


async def _receipts(state_url: str, ids: list[str]) -> set[str]:
    async with await open_store(state_url) as store:
        found = {r.id for r in await store.list_receipts(limit=100_000)}
    return found & set(ids)


@pytest.mark.parametrize("mode", ["as generated", "forged", "signed", "unsigned source"])
def test_no_delivery_gets_a_server_error(served: Served, mode: str) -> None:
    seen = fuzz(served, mode)
    statuses = {status for status, _ in seen}
    assert statuses <= ANSWERS | {405, 422}, statuses
    if mode == "signed":
        assert statuses & {200, 202}, statuses  # verification was passed
        assert 401 not in statuses
    if mode == "forged":  # the generated headers' signatures: nothing gets through
        assert statuses <= {401, 413}, statuses
    if mode == "unsigned source":
        assert 202 in statuses
    ids = [str(answer["receiptId"]) for _, answer in seen if "receiptId" in answer]
    assert ids and asyncio.run(_receipts(served.state_url, ids)) == set(ids)
