"""Callback verification for both signing schemes a Safelight (or kie.ai) callback can carry.

- kie.ai: `X-Webhook-Timestamp` (unix seconds) and `X-Webhook-Signature` =
  base64(HMAC-SHA256(key, f"{taskId}.{timestamp}")). It signs only the task id, not the body.
- Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature` ("v1,<base64>", possibly
  several separated by spaces) = base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")) over the raw body.

The key: a secret of the form `whsec_<base64>` is base64-decoded after the prefix; any other
secret is used as its UTF-8 bytes. (The Standard Webhooks libraries always base64-decode; kie's
keys are plain strings.) For the kie scheme the full secret's UTF-8 bytes are accepted too, as
kie's docs key the HMAC with the string itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from safelight.kie import webhook_key_bytes

from .errors import SignatureError
from .task import Task


def verify_callback(
    headers: Mapping[str, str] | Any,
    body: bytes | str,
    secret: str | bytes,
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> Task:
    """Check a callback's signature and return its task; raise SignatureError otherwise.

    `headers` is any mapping with `.items()` (dict, Starlette/FastAPI, Flask/Werkzeug, httpx);
    `body` must be the raw request body, byte for byte. When both schemes are present the Standard
    Webhooks one decides, because it covers the body.
    """
    if not secret:
        raise ValueError("verify_callback needs the webhook secret")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    lower = {str(k).lower(): str(v) for k, v in headers.items()}
    current = time.time() if now is None else now

    if "webhook-signature" in lower:
        webhook_id = lower.get("webhook-id", "")
        timestamp = _timestamp(lower.get("webhook-timestamp"), current, tolerance)
        if not webhook_id:
            raise SignatureError("missing webhook-id header")
        signed = f"{webhook_id}.{timestamp}.".encode() + raw
        expected = _sign(webhook_key_bytes(secret), signed)
        offered = [
            part.split(",", 1)[1]
            for part in lower["webhook-signature"].split()
            if part.startswith("v1,") and "," in part
        ]
        if not any(hmac.compare_digest(expected, sig.encode()) for sig in offered):
            raise SignatureError("webhook-signature does not match")
        return _task(raw)

    if "x-webhook-signature" in lower:
        timestamp = _timestamp(lower.get("x-webhook-timestamp"), current, tolerance)
        task = _task(raw)
        if not task.task_id:
            raise SignatureError("callback body has no data.taskId to check the signature against")
        message = f"{task.task_id}.{timestamp}".encode()
        keys = {webhook_key_bytes(secret)}
        if isinstance(secret, str):
            keys.add(secret.encode("utf-8"))
        offered_signature = lower["x-webhook-signature"].strip().encode()
        # Both candidates are always compared, so timing does not tell which key form matched.
        matches = [hmac.compare_digest(_sign(key, message), offered_signature) for key in keys]
        if not any(matches):
            raise SignatureError("X-Webhook-Signature does not match")
        return task

    raise SignatureError("no signature headers (webhook-signature or X-Webhook-Signature)")


def _sign(key: bytes, message: bytes) -> bytes:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest())


def _timestamp(value: str | None, now: float, tolerance: float) -> str:
    if not value:
        raise SignatureError("missing timestamp header")
    try:
        stamp = int(value.strip())
    except ValueError:
        raise SignatureError(f"timestamp is not an integer: {value!r}") from None
    if abs(now - stamp) > tolerance:
        raise SignatureError(f"timestamp {stamp} is outside the {tolerance:g} s tolerance")
    return value.strip()


def _task(raw: bytes) -> Task:
    try:
        payload = json.loads(raw)
    except ValueError:
        raise SignatureError("callback body is not JSON") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise SignatureError("callback body has no `data` object")
    return Task.from_record(data)
