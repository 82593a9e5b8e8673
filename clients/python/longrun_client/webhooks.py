"""Checks that a webhook delivery came from longrun (Standard Webhooks):
the `webhook-signature` header holds `v1,` and the base64 HMAC-SHA256 of
`{webhook-id}.{webhook-timestamp}.{body}` keyed with the secret
(`whsec_` and base64 key bytes); during a rotation, one per secret.

    # Flask
    from longrun_client.webhooks import verify
    event = verify(SECRET, request.headers, request.get_data())

    # FastAPI
    event = verify(SECRET, request.headers, await request.body())
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any, Mapping, Optional

TOLERANCE_SECONDS = 300


class WebhookError(Exception):
    """The delivery is not one longrun signed, or is too old or too new."""


def _key(secret: str) -> bytes:
    if not secret.startswith("whsec_"):
        raise ValueError("a longrun webhook secret starts with whsec_")
    return base64.b64decode(secret[len("whsec_") :])


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookError(f"the {name} header is missing")


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: Optional[float] = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> Any:
    """The delivery's JSON event when its signature is good and its
    timestamp within `tolerance` seconds of now; WebhookError otherwise."""
    webhook_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    try:
        sent = int(stamp)
    except ValueError:
        raise WebhookError("the webhook-timestamp header is not a number") from None
    if abs((time.time() if now is None else now) - sent) > tolerance:
        raise WebhookError("the delivery's timestamp is too far from now")
    signed = f"{webhook_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest()).decode()
    for candidate in _header(headers, "webhook-signature").split():
        version, _, signature = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return json.loads(body)
    raise WebhookError("no signature matches the secret")
