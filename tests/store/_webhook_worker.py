"""A gateway-like store client run as a separate process by test_webhooks.py.

    python _webhook_worker.py URL N   record deliveries d-0 … d-(N-1) of source "gh", each
                                      routed to agent "a", as fast as it can

Several run at once with the same ids: each id must be accepted by exactly one of them.
It prints "ready", waits for "go" on stdin, then prints one JSON line: the delivery ids it
recorded as accepted and as duplicates.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from corral.store import (
    AgentResult,
    NewItem,
    NewReceipt,
    ReceiptOutcome,
    TriggerKind,
    new_receipt_id,
    open_store,
)


async def main(url: str, count: int) -> dict[str, Any]:
    async with await open_store(url) as store:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("expected go")

        async def deliver(n: int) -> tuple[str, ReceiptOutcome]:
            delivery = f"d-{n}"
            new = NewReceipt(
                id=new_receipt_id(),
                source="gh",
                outcome=ReceiptOutcome.ACCEPTED,
                headers={"x-github-delivery": delivery},
                body=b"{}",
                body_size=2,
                verified=True,
                verification="signature verified",
                event="issues",
                delivery_id=delivery,
                results=(AgentResult("a", True, "any issues event"),),
            )
            item = NewItem(
                agent="a",
                trigger=TriggerKind.WEBHOOK,
                trigger_detail={"delivery": delivery, "receiptId": new.id},
                dedupe_key=f"webhook:gh:{delivery}:a",
            )
            stored, _ = await store.record_delivery(new, [item])
            return delivery, stored.outcome

        done = await asyncio.gather(*(deliver(n) for n in range(count)))
    return {
        "accepted": [d for d, outcome in done if outcome is ReceiptOutcome.ACCEPTED],
        "duplicates": [d for d, outcome in done if outcome is ReceiptOutcome.DUPLICATE],
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2])))), flush=True)
