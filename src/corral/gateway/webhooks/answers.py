"""What the intake answers a sender: status and JSON, and the delivery metric's label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse

from corral.gateway.edge import json_response
from corral.store import Receipt

__all__ = ["Answer", "ClientGone", "accepted_json", "duplicate_answer", "metric_outcome"]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer to a delivery: status and JSON body (and whether to close)."""

    status: int
    body: dict[str, Any]
    close: bool = False
    #: The metric's outcome label when the status and body do not tell it (a sender's
    #: check answered with the body it expects).
    metric: str | None = None

    def response(self) -> JSONResponse:
        headers = {"connection": "close"} if self.close else None
        return json_response(self.body, self.status, headers)


#: How an HTTP refusal is counted in ``corral_webhook_deliveries_total``.
_REFUSALS = {
    401: "refused",
    403: "refused",
    404: "unknown_source",
    413: "too_large",
    503: "no_secret",
}


def metric_outcome(answer: Answer) -> str:
    """The delivery's outcome label for the metrics, from the answer it got."""
    if answer.metric is not None:
        return answer.metric
    if answer.status == 202:
        return "accepted"
    if answer.status == 200:
        if answer.body.get("duplicate"):
            return "duplicate"
        return "ping" if answer.body.get("pong") else "accepted"
    if answer.status == 400:
        return "invalid"
    return _REFUSALS.get(answer.status, "error")


class ClientGone(Exception):
    """The sender disconnected before its body was read: nothing to answer or record."""


def accepted_json(receipt: Receipt) -> dict[str, Any]:
    """The 202 answer: the receipt id and what became of the delivery for each agent."""
    return {
        "ok": True,
        "receiptId": receipt.id,
        "event": receipt.event,
        "deliveryId": receipt.delivery_id,
        "queued": receipt.queued,
        "agents": [r.to_json() for r in receipt.results],
    }


def duplicate_answer(receipt: Receipt) -> Answer:
    return Answer(
        200,
        {
            "ok": True,
            "duplicate": True,
            "receiptId": receipt.id,
            "duplicateOf": receipt.duplicate_of,
            "deliveryId": receipt.delivery_id,
        },
    )
