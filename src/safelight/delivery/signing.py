"""Signing callbacks two ways: kie's scheme (compatible clients keep working) and Standard Webhooks.

kie signs only `taskId.timestamp`, keyed by the webhook key string itself, so a tampered body
would still verify; Standard Webhooks signs `id.timestamp.body`. Keys are issued as
`whsec_<base64>`: the Standard Webhooks libraries decode the part after the prefix, and kie
receivers use the whole string, so both verify with the one secret the account holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from safelight.kie import webhook_key_bytes


def _b64_hmac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def signature_headers(*, secret: str, task_id: str, webhook_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "X-Webhook-Timestamp": str(timestamp),
        "X-Webhook-Signature": _b64_hmac(secret.encode(), f"{task_id}.{timestamp}".encode()),
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + _b64_hmac(webhook_key_bytes(secret),
                                               f"{webhook_id}.{timestamp}.".encode() + body),
    }
