"""Webhook intake: ``POST /webhooks/{source}``, durable before it is acknowledged.

Each delivery goes through the same steps, and every one of them ends in a receipt in
the store (``corral webhook receipts``), whatever the outcome:

1. An unknown source is answered 404.
2. The body is read with a hard cap (the source's ``maxBodyBytes``): a larger declared
   ``Content-Length`` is refused before reading anything, a longer stream as soon as it
   passes the cap; 413, and the connection is closed rather than drained.
3. The signature is verified before anything else is done with the body (401 when it
   fails; nothing is parsed, de-duplicated or queued). A delivery accepted without a
   checked signature (``allowUnsigned``) must also be JSON and not come from a browser on
   another site: what a web page could send is refused (403).
4. The body is parsed (400 when it is not what the sender documents, a lone UTF-16
   surrogate included).
5. A ping is answered 200 ``{"ok":true,"pong":true}``; Slack's ``url_verification``
   and Discord's PING with exactly what they expect (``{"challenge":…}``,
   ``{"type":1}``).
6. The event is routed against the project's agents, and the receipt and one queue item
   per matching agent are written in ONE transaction (``Store.record_delivery``); only
   then does the sender get 202, so a crash after the answer loses nothing it was told
   was accepted. A delivery id already taken by an earlier verified delivery of the
   source is answered 200 ``{"ok":true,"duplicate":true}`` and queues nothing.

A stranger's delivery (refused, or unsigned and invalid) gets a small receipt, counted on
a recent one of its kind when there are many, and kept a day (``corral.store._webhooks``);
the HTTP layer below bounds its head, its body's time and the connections
(``corral.gateway.guard``).

``GET /webhooks/{source}?crc_token=…`` answers X's CRC check for a ``twitter`` source
(``WebhookIntake.crc``); it records nothing.

The route needs no operator token: a delivery is authenticated by its signature. The
gateway listens on loopback unless ``corral start --expose`` (or a reverse proxy in
front of it) makes it reachable from the sender.

The package: ``answers`` (what a sender is told), ``intake`` (the steps above), ``route``
(the FastAPI route and its OpenAPI description) and ``fastpath`` (the same intake ahead of
FastAPI's routing). What a delivery becomes (its queue items) and a replay of a recorded
one are ``corral.engine.deliveries``, shared with the CLI.
"""

from __future__ import annotations

from corral.gateway.webhooks.answers import Answer, ClientGone, accepted_json
from corral.gateway.webhooks.fastpath import WebhookFastPath
from corral.gateway.webhooks.intake import WebhookIntake
from corral.gateway.webhooks.route import install_webhooks, webhook_router

__all__ = [
    "Answer",
    "ClientGone",
    "WebhookFastPath",
    "WebhookIntake",
    "accepted_json",
    "install_webhooks",
    "webhook_router",
]
