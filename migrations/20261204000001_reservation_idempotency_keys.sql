-- A hold may be asked for with an `Idempotency-Key` header: asked again with the same key (the
-- answer to the first request was lost), the customer's hold made by the first is answered,
-- and nothing new is held. The key lives as long as its hold's row (retention.reservations_days
-- after it is closed).
ALTER TABLE reservations ADD COLUMN idempotency_key TEXT;

CREATE UNIQUE INDEX reservations_idempotency_key ON reservations (customer_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
