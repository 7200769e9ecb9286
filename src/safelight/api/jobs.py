"""The kie Market job routes: createTask and recordInfo."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy.engine import RowMapping

from safelight.catalog import MODELS, InputError, get_model, validate_input
from safelight.net import FetchError, UnsafeURLError, check_url
from safelight.records import build_task_record
from safelight.store import InsufficientCredits

from .auth import bearer_key, require_account, runtime_of
from .envelope import KieError, envelope, read_json_object
from .runtime import Runtime

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

MAX_URL_LENGTH = 2048
# createTask vets callBackUrl and input URLs (DNS included) for at most this long; a check still
# running then is left to the worker and the delivery loop, which vet every request they make.
URL_CHECK_TIMEOUT_SECONDS = 3.0

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
async def create_task(request: Request):
    # Authentication is called directly rather than through Depends: on the hottest route,
    # FastAPI's dependency solving cost ~15% of the request (bench/api.py).
    account_id = await require_account(request)
    runtime = runtime_of(request)
    settings = runtime.settings
    if runtime.rate_limiter is not None and not runtime.rate_limiter.allow(bearer_key(request) or ""):
        raise KieError(429, f"Rate limit exceeded: at most {settings.rate_limit_per_key} requests per "
                            f"{settings.rate_limit_window_seconds:g} s for this key")
    if await runtime.maintenance():
        raise KieError(455)

    body = await read_json_object(request, settings.max_body_bytes, "{model, callBackUrl, input}")
    model_id = body.get("model")
    if model_id is None:
        raise KieError(422, "model is required")
    if not isinstance(model_id, str):
        raise KieError(422, "model must be a string")
    spec = get_model(model_id)
    if spec is None:
        raise KieError(422, f"model {model_id[:100]!r} is not supported; available: {', '.join(MODELS)}")
    if model_id in await runtime.disabled_models():
        raise KieError(505, f"model {model_id} is disabled on this server")

    callback_url = body.get("callBackUrl")
    if callback_url is not None and callback_url != "":
        if not isinstance(callback_url, str):
            raise KieError(422, "callBackUrl must be a string")
        if len(callback_url) > MAX_URL_LENGTH or not callback_url.lower().startswith(("http://", "https://")):
            raise KieError(422, f"callBackUrl must be an http or https URL of at most {MAX_URL_LENGTH} characters")
    else:
        callback_url = None

    if "input" not in body:
        raise KieError(422, "input is required")
    try:
        model_input = validate_input(spec, body["input"])
    except InputError as exc:
        raise KieError(422, str(exc)) from None

    if not runtime.routing.route_for(model_id):
        raise KieError(505, f"model {model_id} is not served on this server")
    params = spec.to_params(model_input)
    if params.nsfw_checker and model_id not in runtime.safety_checked_models:
        raise KieError(505, f"nsfw_checker is not available for {model_id} on this server")

    input_urls = spec.input_urls(model_input)
    if callback_url is not None or input_urls:
        await _check_urls(runtime, callback_url, input_urls)

    num_images = spec.image_count(model_input)
    cost = spec.price_per_image(model_input, settings.prices) * num_images
    param = _param_string(model_id, callback_url, body["input"])
    try:
        task_id = await runtime.store.tasks.create(account_id=account_id, model=model_id, param=param,
                                                   callback_url=callback_url, num_images=num_images, cost=cost,
                                                   batch_key=params.batch_key)
    except InsufficientCredits as exc:
        raise KieError(402, f"Credits insufficient: this task costs {exc.needed} credits, "
                            f"the balance is {exc.balance}") from None
    return envelope({"taskId": task_id})


@router.get("/recordInfo", summary="Get a task's state and result")
async def record_info(request: Request, taskId: str = ""):  # noqa: N803
    account_id = await require_account(request)
    if not taskId:
        raise KieError(422, "taskId is required")
    runtime = runtime_of(request)
    row = await runtime.store.tasks.get(taskId[:64], account_id)
    if row is None:
        # Unknown and other accounts' tasks look the same, as on kie.
        return envelope(None, 422, "recordInfo is null")
    return envelope(task_record(runtime, row))


def task_record(runtime: Runtime, row: RowMapping) -> dict[str, Any]:
    """The recordInfo `data` object, with result URLs signed now."""
    return build_task_record(row, runtime.signer, runtime.settings.result_url_ttl_seconds)


async def _check_urls(runtime: Runtime, callback_url: str | None, input_urls: list[tuple[str, str]]) -> None:
    """422 naming the first field whose URL the outbound policy refuses or whose host does not resolve.

    Input URLs pointing at our own files are read from storage, never over HTTP, so they are not
    checked; a callBackUrl always is (it is POSTed to through the outbound guard).
    """
    assert runtime.signer is not None
    foreign = [("callBackUrl", callback_url)] if callback_url is not None else []
    foreign += [(field, url) for field, url in input_urls if runtime.signer.key_from_url(url) is None]
    if not foreign:
        return
    checks: dict[str, asyncio.Task] = {}
    for _field, url in foreign:
        if url not in checks:
            checks[url] = asyncio.ensure_future(check_url(url, runtime.policy))
    try:
        await asyncio.wait(checks.values(), timeout=URL_CHECK_TIMEOUT_SECONDS, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for check in checks.values():
            check.cancel()  # no-op for finished checks
    # Read every finished check's outcome (so none is logged as "never retrieved"), then report in field order.
    outcomes = {url: check.exception() for url, check in checks.items() if check.done() and not check.cancelled()}
    for field, url in foreign:
        exc = outcomes.get(url)
        if isinstance(exc, UnsafeURLError):
            raise KieError(422, f"{field} is not allowed: {exc.reason}")
        if isinstance(exc, FetchError):
            raise KieError(422, f"{field} could not be resolved: {exc.reason}")
        if exc is not None:
            raise exc


def _param_string(model: str, callback_url: str | None, model_input: Any) -> str:
    """`param` as kie returns it: the whole createTask request, as a JSON string."""
    request: dict[str, Any] = {"model": model}
    if callback_url:
        request["callBackUrl"] = callback_url
    request["input"] = model_input
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"))
