"""verify_callback against signatures made here, independently of the SDK (and of the server)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from safelight.client import SignatureError, Task, verify_callback

TASK_ID = "e989621f54392584b05867f87b160672"


def callback_body(task_id: str = TASK_ID, state: str = "success") -> bytes:
    param = json.dumps({"model": "z-image", "callBackUrl": "https://me.test/cb",
                        "input": json.dumps({"prompt": "fox", "aspect_ratio": "1:1"})})
    data = {"taskId": task_id, "model": "z-image", "state": state, "param": param,
            "resultJson": json.dumps({"resultUrls": ["https://files.test/1.png"]}),
            "failCode": None, "failMsg": None, "costTime": 8, "creditsConsumed": 1,
            "createTime": 1755599634000, "completeTime": 1755599644000, "updateTime": 1755599644000}
    body = {"code": 200, "msg": "Playground task completed successfully.", "data": data}
    return json.dumps(body, separators=(",", ":")).encode()


def kie_headers(key: bytes, task_id: str = TASK_ID, timestamp: int | None = None) -> dict[str, str]:
    """kie.ai: base64(HMAC-SHA256(key, taskId + "." + timestamp)), timestamp in seconds."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return {"X-Webhook-Timestamp": str(timestamp), "X-Webhook-Signature": base64.b64encode(digest).decode()}


def standard_headers(key: bytes, body: bytes, msg_id: str = "msg_2Kx", timestamp: int | None = None,
                     extra_signatures: tuple[str, ...] = ()) -> dict[str, str]:
    """Standard Webhooks: "v1," + base64(HMAC-SHA256(key, id + "." + timestamp + "." + body))."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(key, msg_id.encode() + b"." + str(timestamp).encode() + b"." + body, hashlib.sha256).digest()
    signature = " ".join((*extra_signatures, "v1," + base64.b64encode(digest).decode()))
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


RAW_KEY = secrets.token_bytes(24)
WHSEC = "whsec_" + base64.b64encode(RAW_KEY).decode()
PLAIN = "my-kie-webhook-hmac-key"


def test_valid_kie_signature():
    task = verify_callback(kie_headers(PLAIN.encode()), callback_body(), PLAIN)
    assert isinstance(task, Task)
    assert task.task_id == TASK_ID and task.state == "success"
    assert task.input == {"prompt": "fox", "aspect_ratio": "1:1"}
    assert task.result_urls == ["https://files.test/1.png"] and task.credits_consumed == 1


def test_kie_signature_with_a_whsec_secret_uses_the_decoded_key():
    verify_callback(kie_headers(RAW_KEY), callback_body(), WHSEC)
    # ...and, as kie's docs key the HMAC with the string itself, the full string's bytes too.
    verify_callback(kie_headers(WHSEC.encode()), callback_body(), WHSEC)


def test_valid_standard_webhooks_signature_with_whsec_secret():
    body = callback_body()
    task = verify_callback(standard_headers(RAW_KEY, body), body, WHSEC)
    assert task.task_id == TASK_ID


def test_valid_standard_webhooks_signature_with_plain_secret():
    body = callback_body(state="fail")
    task = verify_callback(standard_headers(PLAIN.encode(), body), body, PLAIN)
    assert task.state == "fail"
    # A plain secret is its UTF-8 bytes, not base64.
    with pytest.raises(SignatureError):
        verify_callback(standard_headers(base64.b64decode(PLAIN + "=" * (-len(PLAIN) % 4)), body), body, PLAIN)


def test_multiple_signatures_any_one_may_match():
    body = callback_body()
    stale = "v1," + base64.b64encode(b"x" * 32).decode()
    headers = standard_headers(RAW_KEY, body, extra_signatures=(stale, "v1a,ignored-asymmetric"))
    assert verify_callback(headers, body, WHSEC).task_id == TASK_ID
    headers["webhook-signature"] = f"{stale} v1,{base64.b64encode(b'y' * 32).decode()}"
    with pytest.raises(SignatureError):
        verify_callback(headers, body, WHSEC)


def test_header_names_are_case_insensitive():
    body = callback_body()
    headers = {k.upper(): v for k, v in standard_headers(RAW_KEY, body).items()}
    assert verify_callback(headers, body.decode(), WHSEC).task_id == TASK_ID
    kie = {k.lower(): v for k, v in kie_headers(PLAIN.encode()).items()}
    assert verify_callback(kie, callback_body(), PLAIN).task_id == TASK_ID


def test_tampered_body_is_rejected_by_standard_webhooks():
    body = callback_body()
    headers = standard_headers(RAW_KEY, body)
    tampered = body.replace(b"files.test", b"evil.test")
    with pytest.raises(SignatureError, match="does not match"):
        verify_callback(headers, tampered, WHSEC)


def test_both_schemes_present_body_signature_decides():
    body = callback_body()
    headers = kie_headers(RAW_KEY) | standard_headers(RAW_KEY, body)
    assert verify_callback(headers, body, WHSEC).task_id == TASK_ID
    # kie's signature covers only the task id: it would pass a tampered body. The body signature must not.
    with pytest.raises(SignatureError):
        verify_callback(headers, body.replace(b"files.test", b"evil.test"), WHSEC)


def test_kie_signature_for_another_task_is_rejected():
    other = callback_body(task_id="ca9c10541fc2840ba55abcec535a0e73")
    with pytest.raises(SignatureError):
        verify_callback(kie_headers(PLAIN.encode()), other, PLAIN)


@pytest.mark.parametrize("scheme", ["kie", "standard"])
def test_wrong_secret(scheme):
    body = callback_body()
    headers = kie_headers(RAW_KEY) if scheme == "kie" else standard_headers(RAW_KEY, body)
    with pytest.raises(SignatureError):
        verify_callback(headers, body, "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode())
    with pytest.raises(SignatureError):
        verify_callback(headers, body, PLAIN)


@pytest.mark.parametrize("scheme", ["kie", "standard"])
def test_timestamps_outside_tolerance(scheme):
    body = callback_body()
    for offset in (-301, 301, -3600):
        stamp = int(time.time()) + offset
        headers = kie_headers(RAW_KEY, timestamp=stamp) if scheme == "kie" else standard_headers(
            RAW_KEY, body, timestamp=stamp)
        with pytest.raises(SignatureError, match="tolerance"):
            verify_callback(headers, body, WHSEC)
    # Inside a custom tolerance, and relative to an explicit `now`.
    stamp = 1_700_000_000
    headers = kie_headers(RAW_KEY, timestamp=stamp) if scheme == "kie" else standard_headers(
        RAW_KEY, body, timestamp=stamp)
    assert verify_callback(headers, body, WHSEC, tolerance=10, now=stamp + 9).task_id == TASK_ID
    with pytest.raises(SignatureError):
        verify_callback(headers, body, WHSEC, tolerance=10, now=stamp + 11)


def test_missing_or_malformed_headers():
    body = callback_body()
    with pytest.raises(SignatureError, match="no signature"):
        verify_callback({"content-type": "application/json"}, body, WHSEC)
    headers = standard_headers(RAW_KEY, body)
    del headers["webhook-timestamp"]
    with pytest.raises(SignatureError, match="timestamp"):
        verify_callback(headers, body, WHSEC)
    headers = standard_headers(RAW_KEY, body)
    headers["webhook-timestamp"] = "soon"
    with pytest.raises(SignatureError, match="integer"):
        verify_callback(headers, body, WHSEC)
    headers = standard_headers(RAW_KEY, body)
    del headers["webhook-id"]
    with pytest.raises(SignatureError):
        verify_callback(headers, body, WHSEC)
    with pytest.raises(SignatureError, match="not JSON"):
        verify_callback(kie_headers(RAW_KEY), b"<html>", WHSEC)
    with pytest.raises(ValueError):
        verify_callback(kie_headers(RAW_KEY), body, "")


async def test_fastapi_receiver_recipe():
    # The docs/sdk.md recipe, run: Starlette's Headers and the raw body go straight in.
    app = FastAPI()
    received: list[Task] = []

    @app.post("/callbacks/safelight")
    async def safelight_callback(request: Request):
        try:
            task = verify_callback(request.headers, await request.body(), WHSEC)
        except SignatureError:
            raise HTTPException(status_code=401) from None
        received.append(task)
        return {"code": 200, "msg": "success"}

    body = callback_body()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver.test") as http:
        ok = await http.post("/callbacks/safelight", content=body, headers=standard_headers(RAW_KEY, body))
        forged = await http.post("/callbacks/safelight", content=body.replace(b"fox", b"cat"),
                                 headers=standard_headers(RAW_KEY, body))
    assert ok.status_code == 200 and forged.status_code == 401
    assert [t.task_id for t in received] == [TASK_ID]
