"""kill -9 of `corral start` right after a 2xx, in the middle of a burst of deliveries, on
both stores: every delivery the sender saw acknowledged is in the store with its queue
item, and no delivery is half recorded (a receipt without its items, or the reverse)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from corral.credentials import CredentialStore
from corral.store import ReceiptOutcome, SchedulerInfo, Store, TriggerKind
from tests.scheduler.helpers import wait_for, write_project
from tests.scheduler.procs import SchedulerProcess
from tests.webhooks.helpers import fixture_json
from tests.webhooks.signing import SECRET, sign_github

pytestmark = pytest.mark.slow

CLIENTS = 12
#: Each round kills the gateway right after its Nth acknowledgement.
KILL_AFTER = (1, 9, 60)


async def gateway_of(store: Store, pid: int) -> str:
    found: list[SchedulerInfo] = []

    async def registered() -> bool:
        found[:] = [
            s for s in await store.list_schedulers() if s.pid == pid and s.state == "running"
        ]
        return bool(found)

    await wait_for(registered, timeout=30)
    assert found[0].gateway_url is not None
    return found[0].gateway_url


async def burst(url: str, pid: int, kill_after: int, round_no: int) -> list[str]:
    """Deliveries from CLIENTS clients until the gateway dies; SIGKILL right after the
    ``kill_after``-th 2xx. Returns the receipt ids of every 2xx the clients got."""
    acknowledged: list[str] = []
    killed = asyncio.Event()

    async def client(n: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            for i in range(10_000):
                payload = fixture_json("issues")
                payload["issue"]["number"] = i
                body = json.dumps(payload).encode()
                headers = sign_github(body, SECRET, delivery_id=f"r{round_no}-c{n}-{i}")
                try:
                    response = await http.post("/webhooks/gh", content=body, headers=headers)
                except httpx.TransportError:
                    assert killed.is_set(), "the gateway failed before it was killed"
                    return
                assert response.status_code == 202, response.text
                acknowledged.append(response.json()["receiptId"])
                if len(acknowledged) >= kill_after and not killed.is_set():
                    os.kill(pid, signal.SIGKILL)  # right now, with other requests in flight
                    killed.set()

    await asyncio.wait_for(asyncio.gather(*(client(n) for n in range(CLIENTS))), 60)
    return acknowledged


async def test_kill_9_right_after_a_2xx_loses_nothing_acknowledged(
    tmp_path: Path, store: Store, store_url: str
) -> None:
    root = tmp_path / "p"
    webhooks = '[[webhooks]]\nsource = "gh"\nevents = ["issues"]\n'
    write_project(
        root,
        {"dev": {"maxWorkQueueSize": 100_000, "command": "true"}},
        '[webhooks.gh]\ntype = "github"\ncredential = "gh"\n',
        {"dev": webhooks},
    )
    # `corral start` runs with HOME = the project's parent (see SchedulerProcess).
    CredentialStore(tmp_path / ".corral" / "credentials").add(
        "webhook_secret", "gh", {"secret": SECRET}
    )
    acknowledged: list[str] = []
    for round_no, kill_after in enumerate(KILL_AFTER):
        with SchedulerProcess(root, store_url, tmp_path / f"start-{round_no}.log") as proc:
            url = await gateway_of(store, proc.pid)
            got = await burst(url, proc.pid, kill_after, round_no)
            await asyncio.to_thread(proc.proc.wait, 10)
            assert proc.proc.returncode == -signal.SIGKILL, proc.output()
        assert len(got) >= kill_after
        acknowledged += got

    receipts = {r.id: r for r in await store.list_receipts(limit=100_000)}
    missing = [rid for rid in acknowledged if rid not in receipts]
    assert missing == [], f"{len(missing)} acknowledged deliveries were lost"
    items = {i.id: i for i in await store.list_items(limit=100_000)}
    for receipt in receipts.values():
        # Whatever was recorded (acknowledged or not) was recorded whole.
        assert receipt.outcome is ReceiptOutcome.ACCEPTED
        assert len(receipt.item_ids) == 1, receipt
        (item_id,) = receipt.item_ids
        item = items[item_id]
        assert item.trigger is TriggerKind.WEBHOOK
        assert item.trigger_detail is not None and item.trigger_detail["receiptId"] == receipt.id
    webhook_items = [i for i in items.values() if i.trigger is TriggerKind.WEBHOOK]
    assert len(webhook_items) == len(receipts)  # no item without its receipt
