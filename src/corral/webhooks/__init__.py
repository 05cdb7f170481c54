"""corral.webhooks: the pure core of webhook intake, over bytes, headers and config.

No store, no server: the gateway's ``POST /webhooks/{source}`` does, in this order,

delivery = Delivery(name, dict(request.headers), await request.body())
source = project.config.webhooks[name]
check = verify(source, signing_secret(source, CredentialStore()), delivery)   # first
event = parse(source, delivery)            # PayloadError: the body is not what was promised
matches = route(project, event)            # one Match per subscribed agent, with the reason
trigger = with_receipt(event.trigger, receipt_id)   # what <webhook-trigger> shows
"""

from corral.webhooks._json import MAX_TEXT, PayloadError
from corral.webhooks._trigger import TRIGGER_KEYS, with_receipt
from corral.webhooks.delivery import (
    Delivery,
    Verification,
    signing_credential,
    signing_kind,
    signing_secret,
    verify,
)
from corral.webhooks.events import DEFAULT_EVENT, Event, parse
from corral.webhooks.filters import Match, mismatch, route

__all__ = [
    "DEFAULT_EVENT",
    "MAX_TEXT",
    "TRIGGER_KEYS",
    "Delivery",
    "Event",
    "Match",
    "PayloadError",
    "Verification",
    "mismatch",
    "parse",
    "route",
    "signing_credential",
    "signing_kind",
    "signing_secret",
    "verify",
    "with_receipt",
]
