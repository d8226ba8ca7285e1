"""Verifying usage-gate's webhooks: the Standard Webhooks signature (HMAC-SHA256 of
``"{webhook-id}.{webhook-timestamp}.{body}"``, keyed with the base64 after ``whsec_``)."""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import cast

from ._errors import WebhookVerificationError
from .types import WebhookMessage


def verify_webhook(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    raw_body: bytes | str,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> WebhookMessage:
    """Verifies a delivery and returns its message.

    ``secret`` is the endpoint's ``whsec_…``, or a list of them while a receiver moves between
    the old and new one after a rotation (any one matching verifies; usage-gate itself signs
    with both for 24 h). ``raw_body`` must be the bytes as received, before any JSON parsing;
    ``headers`` any mapping (lookups ignore case). Raises ``WebhookVerificationError`` when a
    header is missing, the timestamp is more than ``tolerance`` seconds from now, or no
    signature matches.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = (lowered.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not timestamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not timestamp.isdigit():
        raise WebhookVerificationError(f"webhook-timestamp is not Unix seconds: {timestamp!r}")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp {timestamp} is more than {tolerance:g} s from now ({current:.0f})"
        )
    body = raw_body.encode() if isinstance(raw_body, str) else bytes(raw_body)
    signed = f"{msg_id}.{timestamp}.".encode() + body
    offered = [
        value for version, _, value in (s.partition(",") for s in signatures.split(" ")) if version == "v1" and value
    ]
    for candidate in [secret] if isinstance(secret, str) else list(secret):
        expected = base64.b64encode(hmac.new(_key(candidate), signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, value) for value in offered):
            return cast(WebhookMessage, json.loads(body))
    raise WebhookVerificationError("no signature matches the secret")


def _key(secret: str) -> bytes:
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise WebhookVerificationError("the secret is not whsec_ followed by base64")
    return key
