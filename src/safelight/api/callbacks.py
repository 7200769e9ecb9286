"""The delivery log of a task's callbacks, and manual redelivery (our extension)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from safelight.kie import Code, KieError, TaskState

from .auth import require_account, runtime_of
from .envelope import EnvelopeResponse, envelope, read_json_object
from .jobs import owned_task, record_is_null
from .openapi import TASK_ID_BODY
from .shapes import CallbackLogReply, RedeliverReply

router = APIRouter(prefix="/api/v1/jobs/callbacks", tags=["callbacks"])


@router.get("", summary="Callback deliveries of a task, with every attempt",
            responses={200: {"model": CallbackLogReply}})
async def callback_log(request: Request, taskId: str = "") -> EnvelopeResponse:  # noqa: N803
    account_id = await require_account(request)
    if await owned_task(request, taskId, account_id) is None:
        return record_is_null()
    return envelope(await runtime_of(request).store.callbacks.log(taskId, account_id))


@router.post("/redeliver", summary="Queue one more delivery of a finished task's callback",
             responses={200: {"model": RedeliverReply}}, openapi_extra={"requestBody": TASK_ID_BODY})
async def redeliver(request: Request) -> EnvelopeResponse:
    account_id = await require_account(request)
    body = await read_json_object(request, 64 * 1024, '{"taskId": "..."}')
    task_id = body.get("taskId")
    if not isinstance(task_id, str):
        raise KieError(Code.INVALID, "taskId is required")
    task = await owned_task(request, task_id, account_id)
    if task is None:
        return record_is_null()
    if not task["callback_url"]:
        raise KieError(Code.INVALID, "this task has no callBackUrl")
    if task["state"] not in TaskState.TERMINAL:
        raise KieError(Code.INVALID, f"the task is still {task['state']}; its callback is sent when it ends")
    delivery_id = await runtime_of(request).store.callbacks.redeliver(task_id, account_id)
    return envelope({"webhookId": delivery_id})
