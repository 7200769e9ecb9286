"""The admin JSON API (`/api/admin/...`): what the operator console is built on, usable on its own.

Every route needs an admin key (`Authorization: Bearer sla_...`); a user key gets 403. Unlike the
kie routes, answers carry real HTTP statuses, and the envelope's `code` equals it: 200, 400 (bad
input; the message names the field and the rule), 401, 403, 404, 409. Every change is written to the
audit log with the admin key as its actor, in the transaction that makes the change.

Lists answer `{"items", "nextCursor"}`, newest first where time orders them; `cursor` continues
from where the previous page ended (keyset pagination), `limit` is 1-200.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from safelight import __version__
from safelight.catalog import ANY_MODEL, MODELS
from safelight.kie import KieError, TaskState
from safelight.routing import SANDBOX
from safelight.store import AdminKey, InsufficientCredits, NotFound, TaskNotCancellable, now_ms
from safelight.store.accounts import ADMIN_KEY_ID, KEY_PREFIX, KeyLimits
from safelight.store.workers import LIVE_SECONDS
from safelight.validation import describe_error

from . import admin_schema as schema
from .auth import admission_of, require_admin, runtime_of
from .envelope import EnvelopeResponse, envelope
from .jobs import task_data

LIMIT = Query(schema.DEFAULT_PAGE, ge=1, le=schema.MAX_PAGE, description="items per page, 1-200")
CURSOR = Query(None, max_length=200, description="nextCursor of the previous page")
AdminAuth = Annotated[AdminKey, Depends(require_admin)]
Row = Mapping[Any, Any]


class AdminError(KieError):
    """A refusal with its real HTTP status, which is also the envelope's code (the app's KieError
    handler answers it, as it answers require_admin's 401 and 403)."""

    def __init__(self, status: int, msg: str) -> None:
        super().__init__(status, msg, http_status=status)


class AdminRoute(APIRoute):
    """Answers a body or query that does not validate as HTTP 400 naming the field (the app's own
    handler answers kie's 200 with code 422, which is right for the kie routes only)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return refusal(400, "; ".join(_problem(error) for error in exc.errors()) or "invalid request")

        return guarded


def refusal(status: int, msg: str) -> EnvelopeResponse:
    return envelope(None, status, msg, http_status=status)


def _problem(error: Mapping[str, Any]) -> str:
    loc = [part for part in error.get("loc", ()) if part not in ("body", "query", "path")]
    where = ".".join(str(part) for part in loc)
    kind, msg = error.get("type"), str(error.get("msg", ""))
    if kind == "json_invalid":
        return f"the body is not valid JSON: {(error.get('ctx') or {}).get('error', msg)}"
    if kind == "extra_forbidden":
        return f"{where} is not a field of this request"
    if kind == "value_error":  # our validators' messages, after pydantic's "Value error, "
        detail = msg.removeprefix("Value error, ")
        return f"{where}{'' if detail.startswith('[') else ' '}{detail}"
    if not loc and kind == "missing":
        return "the body is required: send a JSON object"
    if not loc:
        return "the body must be a JSON object (Content-Type: application/json)"
    got = error.get("input")
    if error.get("loc", ("",))[0] == "query" and isinstance(got, str) and got.lstrip("-").isdigit():
        got = int(got)  # a number in the query string is shown as the number it is
    return describe_error({**error, "loc": tuple(loc), "input": got})  # type: ignore[typeddict-item]


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schema.ErrorReply, "description": "bad input: the message names the field and the rule"},
    401: {"model": schema.ErrorReply, "description": "no key, or a key that is not valid or was revoked"},
    403: {"model": schema.ErrorReply, "description": "a user key: this API needs an admin key"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": schema.ErrorReply, "description": "unknown"}}
CONFLICT: dict[int | str, dict[str, Any]] = {409: {"model": schema.ErrorReply,
                                                    "description": "the change conflicts with the current state"}}

router = APIRouter(prefix="/api/admin", tags=["admin"], route_class=AdminRoute, responses=ERRORS)


def ok(data: schema.Wire) -> EnvelopeResponse:
    return envelope(data.wire())


# --- cursors: opaque to clients, the keyset position of the last item of a page -------------------


def encode_cursor(*position: int | str) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(position)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *shape: type) -> list[Any] | None:
    if cursor is None:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except ValueError:
        position = None
    if (not isinstance(position, list) or len(position) != len(shape)
            or not all(type(part) is kind for part, kind in zip(position, shape, strict=True))):
        raise AdminError(400, "cursor is not one this server gave out; pass a page's nextCursor as it is")
    return position


def next_cursor(rows: Sequence[Row], limit: int, position: Callable[[Row], Sequence[int | str]]) -> str | None:
    """The cursor after a page, when the query (asked for limit + 1 rows) found more."""
    return encode_cursor(*position(rows[limit - 1])) if len(rows) > limit else None


async def account_row(request: Request, account: str) -> Row:
    found = await runtime_of(request).store.admin.find_account(account)
    if found is None:
        raise AdminError(404, f"no account named {account[:100]!r} (an account's name or id)")
    return found


# --- shaping rows --------------------------------------------------------------------------------


def task_item(row: Row) -> schema.TaskItem:
    attempts = json.loads(row["backend_attempts"]) if row["backend_attempts"] else []
    return schema.TaskItem(
        task_id=row["id"], model=row["model"], state=row["state"], account=row["account"],
        account_id=row["account_id"], create_time=row["create_time"], update_time=row["update_time"],
        complete_time=row["complete_time"], fail_code=row["fail_code"], fail_msg=row["fail_msg"],
        backend=row["backend"], progress=row["progress"], credits_reserved=row["credits_reserved"],
        credits_consumed=row["credits_consumed"], call_back_url=row["callback_url"],
        backend_attempts=[schema.BackendAttempt.model_validate(attempt) for attempt in attempts])


def delivery_item(row: Row) -> schema.Delivery:
    return schema.Delivery(
        id=row["id"], task_id=row["task_id"], account=row["account"], url=row["url"], status=row["status"],
        attempts=row["attempts"], next_attempt_at=row["next_attempt_at"] if row["status"] == "pending" else None,
        last_error=row["last_error"], created_at=row["created_at"], delivered_at=row["delivered_at"],
        log=[schema.DeliveryAttempt(attempt=attempt["attempt"], at=attempt["at"], status_code=attempt["status_code"],
                                    latency_ms=attempt["latency_ms"], error=attempt["error"])
             for attempt in row["log"]])


def user_key_item(row: Row, usage: Mapping[str, int]) -> schema.UserKey:
    return schema.UserKey(
        id=row["id"], name=row["name"], prefix=row["prefix"], account=row["account"], account_id=row["account_id"],
        created_at=row["created_at"], revoked_at=row["revoked_at"],
        limits=schema.Caps(hour=row["limit_hour"], day=row["limit_day"], total=row["limit_total"]),
        allowed_ips=None if row["allowed_ips"] is None else json.loads(row["allowed_ips"]),
        usage=schema.Usage(**usage))


def admin_key_item(row: Row) -> schema.AdminKey:
    return schema.AdminKey(id=f"{ADMIN_KEY_ID}{row['id']}", name=row["name"], prefix=row["prefix"],
                           created_at=row["created_at"], revoked_at=row["revoked_at"])


async def user_key_items(request: Request, rows: Sequence[Row]) -> list[schema.UserKey]:
    usage = await runtime_of(request).store.accounts.key_usage([row["id"] for row in rows])
    return [user_key_item(row, usage[row["id"]]) for row in rows]


# --- read routes ---------------------------------------------------------------------------------


@router.get("/queue", summary="Tasks by state and model, live workers, the oldest waiting task, callbacks",
            response_model=schema.Reply[schema.Queue])
async def queue(request: Request, admin: AdminAuth) -> EnvelopeResponse:
    store = runtime_of(request).store
    by_state = await store.tasks.count_by_state()
    oldest = await store.admin.oldest_waiting()
    deliveries = await store.admin.count_deliveries_by_status()
    workers = await store.workers.live(int(LIVE_SECONDS * 1000))
    return ok(schema.Queue(
        states=schema.StateCounts(**{state: count for state, count in by_state.items() if state in set(TaskState)}),
        unfinished_by_model=[schema.ModelStateCount(model=model, state=state, count=count)  # type: ignore[arg-type]
                             for (model, state), count in sorted((await store.tasks.count_unfinished_by_model())
                                                                 .items())],
        oldest_waiting=None if oldest is None else schema.OldestWaiting(
            task_id=oldest["id"], model=oldest["model"], age_ms=max(0, now_ms() - oldest["create_time"])),
        workers=[schema.Worker(id=worker.id, host=worker.host, pid=worker.pid, models=worker.models,
                               in_flight=worker.in_flight, started_at=worker.started_at, last_seen=worker.last_seen,
                               breakers={name: schema.Breaker.model_validate(state)
                                         for name, state in worker.breakers.items()})
                 for worker in workers],
        callbacks=schema.CallbackCounts(pending=deliveries.get("pending", 0), failed=deliveries.get("failed", 0))))


@router.get("/tasks", summary="Tasks of every account, newest first, by state, model and account",
            response_model=schema.Reply[schema.Page[schema.TaskItem]], responses=NOT_FOUND)
async def list_tasks(request: Request, admin: AdminAuth,
                     state: Literal["waiting", "queuing", "generating", "success", "fail"] | None = None,
                     model: Annotated[str | None, Query(max_length=100)] = None,
                     account: Annotated[str | None, Query(max_length=100, description="name or id")] = None,
                     limit: int = LIMIT, cursor: str | None = CURSOR) -> EnvelopeResponse:
    position = decode_cursor(cursor, int, str)
    account_id = None if account is None else (await account_row(request, account))["id"]
    rows = await runtime_of(request).store.admin.tasks(
        limit=limit + 1, state=state, model=model, account_id=account_id,
        before=None if position is None else (position[0], position[1]))
    return ok(schema.Page[schema.TaskItem](
        items=[task_item(row) for row in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: (row["create_time"], row["id"]))))


@router.get("/tasks/{task_id}", summary="One task: the admin view, its record as its owner sees it, its callbacks",
            response_model=schema.Reply[schema.TaskDetail], responses=NOT_FOUND)
async def get_task(request: Request, admin: AdminAuth, task_id: str) -> EnvelopeResponse:
    store = runtime_of(request).store
    row = await store.admin.task(task_id[:64])
    full = await store.tasks.get(task_id[:64])
    if row is None or full is None:
        raise AdminError(404, f"no task {task_id[:64]!r}")
    callbacks = await store.admin.deliveries(limit=schema.MAX_PAGE, task_id=row["id"])
    return ok(schema.TaskDetail(task=task_item(row), record=await task_data(request, full),
                                callbacks=[delivery_item(delivery) for delivery in callbacks]))


@router.get("/callbacks", summary="Callback deliveries, newest first, with their attempt logs",
            response_model=schema.Reply[schema.Page[schema.Delivery]], responses=NOT_FOUND)
async def list_callbacks(request: Request, admin: AdminAuth,
                         status: Annotated[Literal["pending", "delivered", "failed"] | None,
                                           Query(description="failed = given up; none = all")] = None,
                         account: Annotated[str | None, Query(max_length=100, description="name or id")] = None,
                         limit: int = LIMIT, cursor: str | None = CURSOR) -> EnvelopeResponse:
    position = decode_cursor(cursor, int, str)
    account_id = None if account is None else (await account_row(request, account))["id"]
    rows = await runtime_of(request).store.admin.deliveries(
        limit=limit + 1, status=status, account_id=account_id,
        before=None if position is None else (position[0], position[1]))
    return ok(schema.Page[schema.Delivery](
        items=[delivery_item(row) for row in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: (row["created_at"], row["id"]))))


@router.get("/accounts", summary="Accounts with their balances, live keys and unfinished tasks",
            response_model=schema.Reply[schema.Page[schema.AccountItem]])
async def list_accounts(request: Request, admin: AdminAuth, limit: int = LIMIT,
                        cursor: str | None = CURSOR) -> EnvelopeResponse:
    position = decode_cursor(cursor, int)
    rows = await runtime_of(request).store.admin.accounts(limit=limit + 1,
                                                          after_id=None if position is None else position[0])
    return ok(schema.Page[schema.AccountItem](
        items=[schema.AccountItem.model_validate(row) for row in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: (row["id"],))))


@router.get("/ledger", summary="The credit ledger, newest first, by account, kind and task",
            response_model=schema.Reply[schema.Page[schema.LedgerItem]], responses=NOT_FOUND)
async def list_ledger(request: Request, admin: AdminAuth,
                      account: Annotated[str | None, Query(max_length=100, description="name or id")] = None,
                      kind: Literal["grant", "adjust", "reserve", "refund"] | None = None,
                      task: Annotated[str | None, Query(max_length=64, description="a task id")] = None,
                      limit: int = LIMIT, cursor: str | None = CURSOR) -> EnvelopeResponse:
    position = decode_cursor(cursor, int)
    account_id = None if account is None else (await account_row(request, account))["id"]
    rows = await runtime_of(request).store.admin.ledger(limit=limit + 1, account_id=account_id, kind=kind,
                                                        task_id=task,
                                                        before_id=None if position is None else position[0])
    return ok(schema.Page[schema.LedgerItem](
        items=[schema.LedgerItem.model_validate(row) for row in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: (row["id"],))))


@router.get("/keys", summary="User keys (with caps and usage), then admin keys",
            response_model=schema.Reply[schema.Page[schema.UserKey | schema.AdminKey]], responses=NOT_FOUND)
async def list_keys(request: Request, admin: AdminAuth,
                    account: Annotated[str | None, Query(max_length=100,
                                                         description="name or id: that account's keys only")] = None,
                    limit: int = LIMIT, cursor: str | None = CURSOR) -> EnvelopeResponse:
    store = runtime_of(request).store
    kind, after = decode_cursor(cursor, str, int) or ["user", 0]
    if kind not in ("user", "admin"):
        raise AdminError(400, "cursor is not one this server gave out; pass a page's nextCursor as it is")
    account_id = None if account is None else (await account_row(request, account))["id"]
    items: list[schema.UserKey | schema.AdminKey] = []
    following: str | None = None
    if kind == "user":
        users = await store.admin.user_keys(limit=limit + 1, account_id=account_id, after_id=after)
        items.extend(await user_key_items(request, users[:limit]))
        following = next_cursor(users, limit, lambda row: ("user", row["id"]))
        after = 0
    room = limit - len(items)
    if following is None and account_id is None:  # admin keys belong to no account
        admins = await store.admin.admin_keys(limit=room + 1, after_id=after)
        items.extend(admin_key_item(row) for row in admins[:room])
        if len(admins) > room:
            following = encode_cursor("admin", admins[room - 1]["id"] if room else after)
    return ok(schema.Page[schema.UserKey | schema.AdminKey](items=items, next_cursor=following))


@router.get("/server", summary="Version, maintenance, models enabled and their routes, backends",
            response_model=schema.Reply[schema.Server])
async def server(request: Request, admin: AdminAuth) -> EnvelopeResponse:
    runtime = runtime_of(request)
    routing = runtime.routing
    disabled = await runtime.store.state.disabled_models()
    used = routing.used_backends()
    return ok(schema.Server(
        version=__version__, maintenance=await runtime.store.state.maintenance(),
        sandbox=bool(used) and all(routing.backends[name].type == SANDBOX for name in used),
        models=[schema.ModelState(id=spec.id, title=spec.title, enabled=spec.id not in disabled,
                                  route=routing.route_for(spec.id)) for spec in MODELS.values()],
        pass_through=schema.PassThrough(route=routing.routes[ANY_MODEL]) if routing.passes_through else None,
        backends=[schema.BackendItem(name=name, type=config.type) for name, config in routing.backends.items()]))


@router.get("/audit", summary="The audit log: every change an admin made, newest first",
            response_model=schema.Reply[schema.Page[schema.AuditItem]])
async def list_audit(request: Request, admin: AdminAuth,
                     action: Annotated[str | None, Query(max_length=64, description="such as key.revoke")] = None,
                     limit: int = LIMIT, cursor: str | None = CURSOR) -> EnvelopeResponse:
    position = decode_cursor(cursor, int)
    rows = await runtime_of(request).store.audit.list(action=action, limit=limit + 1,
                                                      before_id=None if position is None else position[0])
    return ok(schema.Page[schema.AuditItem](
        items=[schema.AuditItem.model_validate(row) for row in rows[:limit]],
        next_cursor=next_cursor(rows, limit, lambda row: (row["id"],))))


# --- write routes --------------------------------------------------------------------------------


@router.post("/keys", summary="Create a user key (on an account, made if missing) or an admin key",
             response_model=schema.Reply[schema.CreatedKey])
async def create_key(request: Request, admin: AdminAuth, body: schema.CreateKeyBody) -> EnvelopeResponse:
    accounts = runtime_of(request).store.accounts
    if body.admin:
        if body.account is not None or body.credits:
            raise AdminError(400, "account and credits do not apply to an admin key: it has no account")
        made = await accounts.create_admin_key(body.name, actor=admin.actor)
        return ok(schema.CreatedKey(id=f"{ADMIN_KEY_ID}{made.key_id}", key=made.key, prefix=made.prefix,
                                    account=None, account_id=None, balance=None, admin=True))
    created = await accounts.create_key(body.name, account=body.account, credits=body.credits, actor=admin.actor)
    return ok(schema.CreatedKey(id=created.key_id, key=created.key, prefix=created.key[: len(KEY_PREFIX) + 6],
                                account=created.account_name, account_id=created.account_id,
                                balance=created.balance, admin=False))


def parse_key_id(key_id: str) -> tuple[bool, int]:
    """(is an admin key, its number) from "12" or "admin:3"."""
    number = key_id.removeprefix(ADMIN_KEY_ID)
    if not number.isdigit() or len(number) > 18:
        raise AdminError(400, f"id must be a user key's number or admin:<n>; got {key_id[:40]!r}")
    return key_id.startswith(ADMIN_KEY_ID), int(number)


async def key_object(request: Request, is_admin: bool, number: int, key_id: str) -> schema.UserKey | schema.AdminKey:
    admin_store = runtime_of(request).store.admin
    row = await (admin_store.admin_key(number) if is_admin else admin_store.user_key(number))
    if row is None:
        raise AdminError(404, f"no key with id {key_id[:40]!r}")
    return admin_key_item(row) if is_admin else (await user_key_items(request, [row]))[0]


@router.post("/keys/{key_id}/revoke", summary="Revoke a key (id: a number, or admin:<n>); idempotent",
             response_model=schema.Reply[schema.UserKey | schema.AdminKey], responses={**NOT_FOUND, **CONFLICT})
async def revoke_key(request: Request, admin: AdminAuth, key_id: str) -> EnvelopeResponse:
    is_admin, number = parse_key_id(key_id)
    current = await key_object(request, is_admin, number, key_id)
    if is_admin and number == admin.key_id:
        raise AdminError(409, "an admin cannot revoke the key it is using; revoke it with another admin key")
    if current.revoked_at is None:
        await runtime_of(request).store.accounts.revoke_key(f"{ADMIN_KEY_ID}{number}" if is_admin else str(number),
                                                            actor=admin.actor)
    return ok(await key_object(request, is_admin, number, key_id))


@router.put("/keys/{key_id}/limits", summary="Set a user key's credit caps and IP allow-list",
            response_model=schema.Reply[schema.UserKey], responses=NOT_FOUND)
async def set_key_limits(request: Request, admin: AdminAuth, key_id: str, body: schema.LimitsBody) -> EnvelopeResponse:
    is_admin, number = parse_key_id(key_id)
    if is_admin:
        raise AdminError(400, f"limits apply to user keys; {key_id[:40]} is an admin key")
    await key_object(request, False, number, key_id)
    try:
        await runtime_of(request).store.accounts.set_key_limits(
            number, KeyLimits(hour=body.hour, day=body.day, total=body.total), body.allowed_ips, actor=admin.actor)
    except NotFound:
        raise AdminError(404, f"no key with id {key_id[:40]!r}") from None
    except ValueError as exc:
        raise AdminError(400, str(exc)) from None
    return ok(await key_object(request, False, number, key_id))


@router.post("/accounts/{account}/credits", summary="Add credits to an account (a negative amount takes some away)",
             response_model=schema.Reply[schema.Balance], responses={**NOT_FOUND, **CONFLICT})
async def add_credits(request: Request, admin: AdminAuth, account: str, body: schema.CreditsBody) -> EnvelopeResponse:
    name = (await account_row(request, account))["name"]
    note = body.note or ("granted by an administrator" if body.amount > 0 else "taken away by an administrator")
    try:
        balance = await runtime_of(request).store.accounts.add_credits(name, body.amount, note, actor=admin.actor)
    except NotFound:
        raise AdminError(404, f"no account named {account[:100]!r}") from None
    except InsufficientCredits as exc:
        raise AdminError(409, f"amount: taking {-body.amount} credits would overdraw the account; its balance is "
                              f"{exc.balance}") from None
    return ok(schema.Balance(account=name, balance=balance))


@router.post("/accounts/{account}/webhook-secret", summary="Rotate an account's webhook secret (shown once)",
             response_model=schema.Reply[schema.WebhookSecret], responses=NOT_FOUND)
async def rotate_webhook_secret(request: Request, admin: AdminAuth, account: str) -> EnvelopeResponse:
    name = (await account_row(request, account))["name"]
    try:
        secret = await runtime_of(request).store.accounts.webhook_key(name, rotate=True, actor=admin.actor)
    except NotFound:
        raise AdminError(404, f"no account named {account[:100]!r}") from None
    return ok(schema.WebhookSecret(account=name, webhook_secret=secret))


@router.post("/callbacks/{delivery_id}/redeliver", summary="Send a finished task's callback once more",
             response_model=schema.Reply[schema.Delivery], responses={**NOT_FOUND, **CONFLICT})
async def redeliver(request: Request, admin: AdminAuth, delivery_id: str) -> EnvelopeResponse:
    store = runtime_of(request).store
    delivery = await store.admin.delivery(delivery_id[:40])
    if delivery is None:
        raise AdminError(404, f"no callback delivery {delivery_id[:40]!r}")
    task = await store.tasks.get(delivery["task_id"])
    if task is None or task["state"] not in TaskState.TERMINAL:
        state = "gone" if task is None else task["state"]
        raise AdminError(409, f"task {delivery['task_id']} is {state}; only a finished task's callback is redelivered")
    new_id = await store.callbacks.redeliver(delivery["task_id"], delivery["account_id"], actor=admin.actor,
                                             replaces=delivery["id"])
    created = None if new_id is None else await store.admin.delivery(new_id)
    if created is None:
        raise AdminError(409, f"task {delivery['task_id']} has no callBackUrl to deliver to")
    return ok(delivery_item(created))


@router.post("/tasks/{task_id}/cancel", summary="Cancel an unfinished task (fail 499, refunded, callback sent)",
             response_model=schema.Reply[schema.TaskItem], responses={**NOT_FOUND, **CONFLICT})
async def cancel_task(request: Request, admin: AdminAuth, task_id: str) -> EnvelopeResponse:
    store = runtime_of(request).store
    row = await store.admin.task(task_id[:64])
    if row is None:
        raise AdminError(404, f"no task {task_id[:64]!r}")
    try:
        await store.tasks.cancel(row["id"], row["account_id"], "cancelled by an administrator", actor=admin.actor)
    except TaskNotCancellable as exc:
        raise AdminError(409, f"task {row['id']} has already ended ({exc.state}); only a waiting, queuing or "
                              "generating task can be cancelled") from None
    ended = await store.admin.task(row["id"])
    assert ended is not None  # tasks are never deleted
    return ok(task_item(ended))


@router.post("/maintenance", summary="Turn maintenance mode on or off (createTask then answers code 455)",
             response_model=schema.Reply[schema.Maintenance])
async def set_maintenance(request: Request, admin: AdminAuth, body: schema.MaintenanceBody) -> EnvelopeResponse:
    await runtime_of(request).store.state.set_maintenance(body.on, actor=admin.actor)
    admission_of(request).forget_flags()  # this process at once; others within their flag cache's second
    return ok(schema.Maintenance(maintenance=body.on))


@router.post("/models", summary="Enable or disable a model (a disabled model's createTask answers code 505)",
             response_model=schema.Reply[schema.ModelEnabled], responses=NOT_FOUND)
async def set_model(request: Request, admin: AdminAuth, body: schema.ModelBody) -> EnvelopeResponse:
    if body.model not in MODELS:
        raise AdminError(404, f"model: no model {body.model[:100]!r} in the catalog; it has {', '.join(MODELS)}")
    await runtime_of(request).store.state.set_model_enabled(body.model, body.enabled, actor=admin.actor)
    admission_of(request).forget_flags()
    return ok(schema.ModelEnabled(id=body.model, enabled=body.enabled))
