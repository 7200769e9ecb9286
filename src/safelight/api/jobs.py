"""The kie Market job routes: createTask and recordInfo."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy.engine import RowMapping

from safelight.admission import CreateRequest
from safelight.catalog import MODELS
from safelight.kie import RECORD_IS_NULL, Code, KieError

from .auth import admission_of, bearer_key, require_account, runtime_of
from .envelope import EnvelopeResponse, envelope, read_json_object
from .ratelimit import RateLimiter

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

# The body is parsed by hand (kie-style error messages), so describe it for /docs explicitly.
CREATE_TASK_DOC = {
    "security": [{"bearer": []}],
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["model", "input"],
        "properties": {"model": {"type": "string", "enum": list(MODELS)},
                       "callBackUrl": {"type": "string", "format": "uri"},
                       "input": {"type": "object", "description": "Model input; see GET /api/v1/models"}}}}}},
}


@router.post("/createTask", summary="Create a generation task", openapi_extra=CREATE_TASK_DOC)
async def create_task(request: Request) -> EnvelopeResponse:
    # Authentication is called directly rather than through Depends: on the hottest route,
    # FastAPI's dependency solving cost ~15% of the request (bench/api.py).
    account_id = await require_account(request)
    runtime = runtime_of(request)
    settings = runtime.settings
    limiter: RateLimiter | None = request.app.state.rate_limiter
    if limiter is not None and (wait := await limiter.hit(bearer_key(request) or "")) is not None:
        raise KieError(Code.RATE_LIMITED, f"Rate limit exceeded: at most {limiter.limit} requests per "
                                          f"{limiter.window:g} s for this key", retry_after=wait)
    admission = admission_of(request)
    await admission.ensure_open()
    body = await read_json_object(request, settings.max_body_bytes, "{model, callBackUrl, input}")
    task_id = await admission.create(account_id, CreateRequest.from_body(body))
    return envelope({"taskId": task_id})


@router.get("/recordInfo", summary="Get a task's state and result")
async def record_info(request: Request, taskId: str = "") -> EnvelopeResponse:  # noqa: N803
    account_id = await require_account(request)
    row = await owned_task(request, taskId, account_id)
    if row is None:
        return record_is_null()
    return envelope(runtime_of(request).task_record(row))


async def owned_task(request: Request, task_id: str, account_id: int) -> RowMapping | None:
    """The caller's task, or None for an unknown task and another account's task alike (as on kie)."""
    if not task_id:
        raise KieError(Code.INVALID, "taskId is required")
    return await runtime_of(request).store.tasks.get(task_id[:64], account_id)


def record_is_null() -> EnvelopeResponse:
    return envelope(None, Code.INVALID, RECORD_IS_NULL)


