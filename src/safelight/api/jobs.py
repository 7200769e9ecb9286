"""The kie Market job routes, createTask and recordInfo, and our extensions of them.

Extensions a kie client never notices (without the header or route, every byte is kie's):
`Prefer: wait[=N]`, `Idempotency-Key` and `Cancel-After` on createTask; `queuePosition` on a
waiting task's record; `POST /cancel` and `GET /list`. The event stream is in stream.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.engine import RowMapping

from safelight.admission import CreateRequest, cancel_after_seconds, idempotency_key
from safelight.kie import RECORD_IS_NULL, Code, KieError, TaskState
from safelight.store import TaskNotCancellable

from .auth import admission_of, bearer_key, require_account, require_key, runtime_of
from .envelope import EnvelopeResponse, envelope, read_json_object
from .openapi import CREATE_TASK_BODY, TASK_ID_BODY
from .ratelimit import RateLimiter
from .shapes import CreateTaskReply, RecordReply, TaskListReply

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

# `Prefer: wait` holds createTask at most this long.
MAX_WAIT_SECONDS = 60.0
MAX_LIST_LIMIT = 100

@router.post("/createTask", summary="Create a generation task", responses={200: {"model": CreateTaskReply}},
             # The body is parsed by hand (kie-style error messages): its schema, one per model, is in openapi.py.
             openapi_extra={"requestBody": CREATE_TASK_BODY})
async def create_task(request: Request) -> EnvelopeResponse:
    """Queue a task: `model` chooses the schema of `input`, and `data.taskId` names the task. Follow it with
    recordInfo, the event stream, or the signed POST to `callBackUrl` when it ends.

    Optional headers (extensions; without them every byte is kie's): `Prefer: wait[=N]` holds the answer up to
    N seconds (60 at most) and answers the whole record if the task ends within them; `Idempotency-Key`
    makes a retry answer the same task; `Cancel-After: N` (seconds, or `Ns`/`Nm`) cancels the task, refunded,
    if it has not ended by then."""
    # Authentication is called directly rather than through Depends: on the hottest route,
    # FastAPI's dependency solving cost ~15% of the request (bench/api.py).
    caller = await require_key(request)
    account_id = caller.account_id
    runtime = runtime_of(request)
    settings = runtime.settings
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None and (wait := await limiter.hit(bearer_key(request) or "")) is not None:
        raise KieError(Code.RATE_LIMITED, f"Rate limit exceeded: at most {limiter.limit} requests per "
                                          f"{limiter.window:g} s for this key", retry_after=wait)
    admission = admission_of(request)
    await admission.ensure_open()
    key, deadline = request.headers.get("idempotency-key"), request.headers.get("cancel-after")
    if key is None:
        admission.refuse_if_full(account_id)  # before reading the body: under overload, refusals stay cheap
    wait = prefer_wait(request.headers.get("prefer"))
    body = await read_json_object(request, settings.max_body_bytes, "{model, callBackUrl, input}")
    create = CreateRequest.from_body(body)
    if key is not None or deadline is not None:
        create = replace(create, idempotency_key=idempotency_key(key) if key is not None else None,
                         cancel_after_seconds=cancel_after_seconds(deadline) if deadline is not None else None)
    task_id = await admission.create(account_id, create, key=caller)
    if wait is None:
        return envelope({"taskId": task_id})
    row = await wait_for_end(request, task_id, account_id, wait)
    applied = {"Preference-Applied": f"wait={wait:g}"}
    if row is not None and row["state"] in TaskState.TERMINAL:
        return envelope(await task_data(request, row), headers=applied)
    return envelope({"taskId": task_id}, headers=applied)


def prefer_wait(header: str | None) -> float | None:
    """Seconds of `Prefer: wait` or `wait=N` (RFC 7240), 1 <= N <= 60; None when not asked for."""
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value:
            return MAX_WAIT_SECONDS
        try:
            seconds = float(value)
        except ValueError:
            raise KieError(Code.INVALID, f"Prefer: wait must be a number of seconds; got {value[:20]!r}") from None
        return min(max(seconds, 1.0), MAX_WAIT_SECONDS)
    return None


async def wait_for_end(request: Request, task_id: str, account_id: int, timeout: float) -> RowMapping | None:
    """The task's row once it ends, or as it is after `timeout` seconds. Woken by the task's own
    changes (task events: in-process, or NOTIFY on PostgreSQL), not by polling; no database
    connection is held while waiting."""
    store = runtime_of(request).store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with store.task_events.subscribe(task_id) as changed:
        while True:
            changed.clear()
            row = await store.tasks.get(task_id, account_id)
            remaining = deadline - loop.time()
            if row is None or row["state"] in TaskState.TERMINAL or remaining <= 0:
                return row
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await changed.wait()


@router.get("/recordInfo", summary="Get a task's state and result", responses={200: {"model": RecordReply}})
async def record_info(request: Request, taskId: str = "") -> EnvelopeResponse:  # noqa: N803
    account_id = await require_account(request)
    row = await owned_task(request, taskId, account_id)
    if row is None:
        return record_is_null()
    return envelope(await task_data(request, row))


@router.post("/cancel", summary="Cancel a task (extension): it ends as fail 499, fully refunded",
             responses={200: {"model": RecordReply}}, openapi_extra={"requestBody": TASK_ID_BODY})
async def cancel(request: Request) -> EnvelopeResponse:
    account_id = await require_account(request)
    body = await read_json_object(request, 64 * 1024, '{"taskId": "..."}')
    task_id = body.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise KieError(Code.INVALID, "taskId is required")
    try:
        row = await runtime_of(request).store.tasks.cancel(task_id[:64], account_id)
    except TaskNotCancellable as exc:
        raise KieError(Code.INVALID, f"the task has already ended ({exc.state}); only a waiting, queuing or "
                                     "generating task can be cancelled") from None
    if row is None:
        return record_is_null()
    return envelope(await task_data(request, row))


@router.get("/list", summary="The account's tasks, newest first (extension)",
            responses={200: {"model": TaskListReply}})
async def list_tasks(request: Request, state: str | None = None, model: str | None = None,
                     since: int | None = None, limit: int = 20, cursor: str | None = None) -> EnvelopeResponse:
    account_id = await require_account(request)
    if state is not None and state not in set(TaskState):
        raise KieError(Code.INVALID, f"state must be one of {', '.join(TaskState)}; got {state[:30]!r}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise KieError(Code.INVALID, f"limit must be 1-{MAX_LIST_LIMIT}; got {limit}")
    before = decode_cursor(cursor) if cursor else None
    rows = await runtime_of(request).store.tasks.list_for(account_id, limit=limit + 1, state=state, model=model,
                                                         since_ms=since, before=before)
    page, more = rows[:limit], len(rows) > limit
    next_cursor = encode_cursor(page[-1]["create_time"], page[-1]["id"]) if more else None
    return envelope({"items": [await task_data(request, row) for row in page], "nextCursor": next_cursor})


def encode_cursor(create_time: int, task_id: str) -> str:
    return base64.urlsafe_b64encode(f"{create_time}:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        create_time, _, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        return int(create_time), task_id
    except (ValueError, UnicodeDecodeError):
        raise KieError(Code.INVALID, "cursor is not one this server gave out (use nextCursor as it is)") from None


async def task_data(request: Request, row: RowMapping) -> dict[str, Any]:
    """The recordInfo `data`: kie's record, plus `queuePosition` while the task is waiting."""
    runtime = runtime_of(request)
    data = runtime.task_record(row)
    if row["state"] == TaskState.WAITING:
        data["queuePosition"] = await runtime.store.tasks.queue_position(row)
    return data


async def owned_task(request: Request, task_id: str, account_id: int) -> RowMapping | None:
    """The caller's task, or None for an unknown task and another account's task alike (as on kie)."""
    if not task_id:
        raise KieError(Code.INVALID, "taskId is required")
    return await runtime_of(request).store.tasks.get(task_id[:64], account_id)


def record_is_null() -> EnvelopeResponse:
    return envelope(None, Code.INVALID, RECORD_IS_NULL)


