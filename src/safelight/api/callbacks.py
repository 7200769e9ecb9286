"""The delivery log of a task's callbacks, and manual redelivery (our extension)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from .auth import require_account, runtime_of
from .envelope import KieError, envelope, read_json_object

router = APIRouter(prefix="/api/v1/jobs/callbacks", tags=["callbacks"])


@router.get("", summary="Callback deliveries of a task, with every attempt")
async def callback_log(request: Request, taskId: str = ""):  # noqa: N803
    account_id = await require_account(request)
    if not taskId:
        raise KieError(422, "taskId is required")
    runtime = runtime_of(request)
    if await runtime.store.tasks.get(taskId[:64], account_id) is None:
        return envelope(None, 422, "recordInfo is null")
    return envelope(await runtime.store.callbacks.log(taskId, account_id))


@router.post("/redeliver", summary="Queue one more delivery of a finished task's callback")
async def redeliver(request: Request):
    account_id = await require_account(request)
    body = await read_json_object(request, 64 * 1024, '{"taskId": "..."}')
    task_id = body.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise KieError(422, "taskId is required")
    runtime = runtime_of(request)
    task = await runtime.store.tasks.get(task_id[:64], account_id)
    if task is None:
        return envelope(None, 422, "recordInfo is null")
    if not task["callback_url"]:
        raise KieError(422, "this task has no callBackUrl")
    if task["state"] not in ("success", "fail"):
        raise KieError(422, f"the task is still {task['state']}; its callback is sent when it ends")
    delivery_id = await runtime.store.callbacks.redeliver(task_id, account_id)
    return envelope({"webhookId": delivery_id})
