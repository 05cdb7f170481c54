"""POST /control/runs under retries, over a real gateway and real concurrent clients.

A store held busy by another process (the SQLite write lock; a PostgreSQL project row
locked, with the pool then exhausted by the waiting requests) makes requests fail fast
with 503 and Retry-After, committing nothing afterwards; retries with the same
idempotency keys then queue exactly one item per key.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.cli.remote_run import queue_remote
from corral.store import Store, TriggerKind
from tests.gateway.fleet import TOKEN, running_fleet
from tests.store._busy_holder import held_busy

AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENTS: dict[str, dict[str, object]] = {"dev": {"command": "true", "scale": 2}}


async def _post(
    http: httpx.AsyncClient, key: str | None, prompt: str = "fix it", **body: Any
) -> tuple[httpx.Response, float]:
    headers = AUTH | ({"Idempotency-Key": key} if key is not None else {})
    began = time.monotonic()
    response = await http.post(
        "/control/runs", json={"agent": "dev", "prompt": prompt, **body}, headers=headers
    )
    return response, time.monotonic() - began


async def _manual_items(store: Store) -> list[int]:
    items = await store.list_items(limit=10_000)
    return [item.id for item in items if item.trigger is TriggerKind.MANUAL]


@pytest.mark.slow
async def test_busy_store_answers_503_fast_and_retries_queue_one_item_per_key(
    tmp_path: Path, store_url: str, store: Store
) -> None:
    keys = [f"req-{n}" for n in range(16)]
    async with (
        running_fleet(tmp_path / "p", store, AGENTS) as fleet,
        httpx.AsyncClient(base_url=fleet.url, timeout=60) as http,
    ):
        with held_busy(store_url):
            answers = await asyncio.gather(*(_post(http, key) for key in keys))
        for response, took in answers:
            assert response.status_code == 503, response.text
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["ok"] is False and "busy" in response.json()["error"]
            assert took < 10, f"a 503 came after {took:.1f} s"
        await asyncio.sleep(1.5)
        assert await _manual_items(store) == []  # nothing committed after its 503

        # every client retries, some twice at once: one item per key
        retries = await asyncio.gather(*(_post(http, key) for key in keys + keys[:6]))
        assert {r.status_code for r, _ in retries} == {202}
        ids: dict[str, set[int]] = {}
        for key, (response, _) in zip(keys + keys[:6], retries, strict=True):
            ids.setdefault(key, set()).add(response.json()["item"]["id"])
        assert all(len(found) == 1 for found in ids.values()), ids
        assert sum(r.headers.get("Idempotent-Replayed") == "true" for r, _ in retries) == 6
        assert sorted(await _manual_items(store)) == sorted(i for s in ids.values() for i in s)

        # once more, later: the same answer, nothing new
        again, _ = await _post(http, keys[0])
        assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert {again.json()["item"]["id"]} == ids[keys[0]]
        assert len(await _manual_items(store)) == len(keys)


async def test_a_key_sent_with_another_request_is_a_422(tmp_path: Path, store: Store) -> None:
    async with (
        running_fleet(tmp_path / "p", store, AGENTS) as fleet,
        httpx.AsyncClient(base_url=fleet.url, timeout=30) as http,
    ):
        first, _ = await _post(http, "k", "one")
        assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
        other, _ = await _post(http, "k", "two")
        assert other.status_code == 422
        assert "idempotency key 'k' was first sent" in other.json()["error"]
        # the body field names the same key; both at once must agree
        same, _ = await _post(http, None, "one", idempotencyKey="k")
        assert same.status_code == 202 and same.headers["Idempotent-Replayed"] == "true"
        assert same.json()["item"]["id"] == first.json()["item"]["id"]
        clash, _ = await _post(http, "k", "one", idempotencyKey="other")
        assert clash.status_code == 400 and "differ" in clash.json()["error"]
        for bad in ("", "x" * 201, "has space", "caf\u00e9"):
            refused, _ = await _post(http, None, "one", idempotencyKey=bad)
            assert refused.status_code == 422, (bad, refused.text)
        assert len(await _manual_items(store)) == 1


@pytest.mark.slow
async def test_corral_run_retries_a_busy_gateway_with_one_key(
    tmp_path: Path, store_url: str, store: Store
) -> None:
    """The client of `corral -E NAME run`: a 503 is retried after Retry-After with the same
    key, and the run is queued once."""
    retries: list[str] = []
    async with running_fleet(tmp_path / "p", store, AGENTS) as fleet:
        with held_busy(store_url, seconds=6):  # lets go by itself while the client waits
            answer = await queue_remote(fleet.url, TOKEN, "dev", "fix it", on_retry=retries.append)
        assert retries and "busy" in retries[0] and "same key" in retries[0]
        assert await _manual_items(store) == [answer["item"]["id"]]
        [entry] = [e for e in await store.list_audit() if e.action == "run.trigger"]
        assert entry.actor == "token:env" and str((entry.detail or {})["key"]).startswith("cli-")


async def test_corral_run_with_a_remote_environment_queues_there(
    tmp_path: Path, store: Store
) -> None:
    async with running_fleet(tmp_path / "p", store, AGENTS) as fleet:
        home = tmp_path / "home"
        (home / "environments").mkdir(parents=True)
        (home / "environments" / "remote.toml").write_text(f'[gateway]\nurl = "{fleet.url}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        env |= {"CORRAL_HOME": str(home), "CORRAL_OPERATOR_TOKEN": TOKEN}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "corral",
            "-E",
            "remote",
            "run",
            "dev",
            "from afar",
            "--json",
            cwd=fleet.root,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        item = json.loads(out)
        [queued] = [i for i in await store.list_items() if i.trigger is TriggerKind.MANUAL]
        assert (queued.id, queued.prompt) == (item["id"], "from afar")
        [entry] = [e for e in await store.list_audit() if e.action == "run.trigger"]
        assert str((entry.detail or {})["key"]).startswith("cli-")
