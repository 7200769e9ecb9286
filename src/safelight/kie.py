"""The kie.ai Market wire contract, in one place (spec/kie-api.md).

Everything a kie client can observe is defined here and imported by every layer: the task
states, the failCodes, the response envelope's codes and messages, the task record that
recordInfo and callbacks carry, and the callback body. It uses the standard library only, so
the SDK (which installs without the server) reads the same vocabulary.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from enum import IntEnum, StrEnum, nonmember
from typing import Any


class TaskState(StrEnum):
    """A task's lifecycle: waiting -> queuing -> generating -> success | fail.

    Only the worker moves a task forward; nothing moves a task out of a terminal state.
    """

    WAITING = "waiting"  # accepted and paid for (credits reserved); no worker holds it
    QUEUING = "queuing"  # claimed by a worker under a lease; its inputs are being fetched
    GENERATING = "generating"  # a backend is producing the images
    SUCCESS = "success"  # results stored; credits charged
    FAIL = "fail"  # failCode and failMsg set; credits refunded

    # Sets of states (not members). Members are strings, so `state in TaskState.TERMINAL` holds
    # for a TaskState and for a plain string read from the database alike.
    TERMINAL = nonmember(frozenset({"success", "fail"}))  # never changes again
    ACTIVE = nonmember(frozenset({"queuing", "generating"}))  # held by a worker under a lease
    UNFINISHED = nonmember(frozenset({"waiting", "queuing", "generating"}))

    @property
    def is_terminal(self) -> bool:
        return self in TaskState.TERMINAL


class FailCode(StrEnum):
    """`failCode` of a failed task (a string in kie's record). Every failure is refunded."""

    INPUT = "400"  # an input could not be used, or the provider refused it
    # A pass-through model's input, refused by the upstream that owns its schema (kie's code 422).
    UPSTREAM_INPUT = "422"
    MODERATED = "451"  # a safety filter blocked the prompt, a reference or the result
    INTERNAL = "500"  # our own error, or the task was interrupted by worker crashes too often
    GENERATION = "501"  # the backend could not produce the image (provider error, bad result)
    UNAVAILABLE = "503"  # every backend of the route was overloaded, down or misconfigured
    TIMEOUT = "504"  # generation passed the task timeout or a provider's deadline
    NOT_SERVED = "505"  # the task asks for something this server cannot honour (nsfw_checker)
    CANCELLED = "499"  # cancelled by its owner (POST /api/v1/jobs/cancel) or its Cancel-After deadline


class Code(IntEnum):
    """The envelope's `code` (the HTTP status stays 200 for business errors, as on kie)."""

    OK = 200
    UNAUTHORIZED = 401
    INSUFFICIENT_CREDITS = 402
    FORBIDDEN = 403  # the admin API, to a user key
    NOT_FOUND = 404
    INVALID = 422
    RATE_LIMITED = 429
    KEY_LIMIT_EXCEEDED = 433  # a per-key credit cap (kie: "sub-key usage exceeds limit")
    MAINTENANCE = 455
    SERVER_ERROR = 500
    GENERATION_FAILED = 501  # callbacks of failed tasks
    FEATURE_DISABLED = 505


# kie's documented messages, where one exists.
MESSAGES: Mapping[int, str] = {
    Code.OK: "success",
    Code.UNAUTHORIZED: "You do not have access permissions",
    Code.INSUFFICIENT_CREDITS: "Credits insufficient",
    Code.RATE_LIMITED: "Rate limit exceeded",
    Code.KEY_LIMIT_EXCEEDED: "Sub-key usage exceeds limit",
    Code.MAINTENANCE: "Service unavailable: the server is in maintenance mode",
    Code.SERVER_ERROR: "Server Error - An unexpected error occurred while processing the request",
}

# recordInfo of an unknown task, or of another account's task: code 422 with this msg and null data.
RECORD_IS_NULL = "recordInfo is null"

# Callback bodies: code 200 with SUCCESS_MSG, or 501 with FAIL_MSG (kie's wording).
CALLBACK_SUCCESS_MSG = "Playground task completed successfully."
CALLBACK_FAIL_MSG = "Playground task failed."

# Webhook keys are issued as `whsec_<base64>` (Standard Webhooks); kie's own scheme keys the HMAC
# with the whole string.
WHSEC_PREFIX = "whsec_"


class KieError(Exception):
    """A refusal in kie's terms: the envelope `code` and a `msg` a person can act on.

    `retry_after` (seconds) goes out as an HTTP Retry-After header with code 429. The HTTP status is
    200, as on kie, unless `http_status` says otherwise (our own routes, such as the admin API)."""

    def __init__(self, code: int, msg: str | None = None, *, retry_after: float | None = None,
                 http_status: int = 200) -> None:
        self.code = int(code)
        self.msg = message(code) if msg is None else msg
        self.retry_after = retry_after
        self.http_status = http_status
        super().__init__(self.msg)


def message(code: int) -> str:
    return MESSAGES.get(code, "error")


def envelope(data: Any = None, code: int = Code.OK, msg: str | None = None) -> dict[str, Any]:
    """kie's response body: {"code", "msg", "data"}."""
    return {"code": int(code), "msg": message(code) if msg is None else msg, "data": data}


def dumps(value: Any) -> str:
    """JSON as kie writes it: compact, UTF-8 kept as is, and only valid JSON (no NaN)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def param_string(model: str, callback_url: str | None, model_input: Any) -> str:
    """`param` as kie returns it: the whole createTask request, as a JSON string."""
    request: dict[str, Any] = {"model": model}
    if callback_url:
        request["callBackUrl"] = callback_url
    request["input"] = model_input
    return dumps(request)


def result_json(urls: list[str], seeds: list[int | None]) -> str:
    return dumps({"resultUrls": urls, "seeds": seeds})


def task_record(row: Mapping[Any, Any], sign_url: Callable[[str], str]) -> dict[str, Any]:
    """The recordInfo `data` object (and a callback's `data`) from a task row.

    `sign_url` turns a storage key into a URL the client can fetch, signed now.
    """
    state = TaskState(row["state"])
    result = None
    if state is TaskState.SUCCESS and row["result"]:
        stored = json.loads(row["result"])
        # Retention may have removed the files; the record itself stays.
        urls = [] if row["files_deleted"] else [sign_url(key) for key in stored["files"]]
        result = result_json(urls, stored.get("seeds", []))
    complete = row["complete_time"]
    started = row["start_time"] or row["create_time"]
    progress = row["progress"]
    return {
        "taskId": row["id"],
        "model": row["model"],
        "state": str(state),
        "param": row["param"],
        "resultJson": result,
        "failCode": row["fail_code"],
        "failMsg": row["fail_msg"],
        "costTime": (complete - started) if complete else None,
        "completeTime": complete,
        "createTime": row["create_time"],
        "updateTime": row["update_time"],
        "progress": progress if progress is not None else (100 if state is TaskState.SUCCESS else 0),
        "creditsConsumed": row["credits_consumed"],
    }


def callback_body(record: Mapping[str, Any], balance: int) -> bytes:
    """The body POSTed to callBackUrl when a task ends."""
    success = record["state"] == TaskState.SUCCESS
    # Older kie callback bodies carry consumeCredits/remainedCredits; newer ones creditsConsumed.
    data = {**record, "consumeCredits": record["creditsConsumed"], "remainedCredits": balance}
    body = envelope(data, Code.OK if success else Code.GENERATION_FAILED,
                    CALLBACK_SUCCESS_MSG if success else CALLBACK_FAIL_MSG)
    return dumps(body).encode()


def upload_reply(code: int, msg: str, data: Any = None) -> dict[str, Any]:
    """The upload routes' body, which differs from the job envelope: `success` first, `data` only on success."""
    body: dict[str, Any] = {"success": code == Code.OK, "code": code, "msg": msg}
    if data is not None:
        body["data"] = data
    return body


def webhook_key_bytes(secret: str | bytes) -> bytes:
    """The Standard Webhooks HMAC key of a webhook secret: base64 after `whsec_`, else the UTF-8 bytes.

    Raises ValueError for a `whsec_` secret that is not base64 after the prefix: such a key was
    never issued by Safelight, and guessing another key would only hide the mistake.
    """
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(WHSEC_PREFIX):
        try:
            return base64.b64decode(secret[len(WHSEC_PREFIX):], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    return secret.encode("utf-8")
