-- 0009 a stranger's webhook receipts: small, counted, kept a day.
-- A delivery refused before it could be trusted (no or a bad signature, an unknown
-- source, too large), or an unsigned delivery that does not parse, costs its sender
-- nothing, so the receipt the gateway keeps for it is bounded: a little of its body and
-- headers, and repeat_key names its kind ("refused:<source>"). Past a number of receipts
-- of one kind an hour, more of that kind are counted on the newest (repeats,
-- last_repeat_at) instead of being stored; such receipts are pruned after a day.

ALTER TABLE corral_webhook_receipts ADD COLUMN repeat_key text;
ALTER TABLE corral_webhook_receipts ADD COLUMN repeats integer NOT NULL DEFAULT 0;
ALTER TABLE corral_webhook_receipts ADD COLUMN last_repeat_at timestamptz;

CREATE INDEX corral_webhook_receipts_repeats
    ON corral_webhook_receipts (repeat_key, received_at) WHERE repeat_key IS NOT NULL;
