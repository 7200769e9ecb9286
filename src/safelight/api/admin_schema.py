"""The admin API's request and response shapes (`/api/admin/...`), as pydantic models.

The routes build their answers from these models, so the OpenAPI document describes exactly what is
sent. Fields are snake_case here and camelCase on the wire (`task_id` -> `taskId`), as in kie's records.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# Lists answer at most this many items a page.
MAX_PAGE = 200
DEFAULT_PAGE = 50
# An IP allow-list holds at most this many addresses or networks.
MAX_ALLOWED_IPS = 100

T = TypeVar("T")


class Wire(BaseModel):
    """A response object: camelCase on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class Body(BaseModel):
    """A request body: strict JSON types, unknown fields refused (camelCase names are spelled out as aliases)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Reply(Wire, Generic[T]):
    """Safelight's envelope. On the admin API `code` equals the HTTP status."""

    code: int = Field(200, examples=[200])
    msg: str = Field("success", examples=["success"])
    data: T


class ErrorReply(Wire):
    """A refusal: `code` is the HTTP status (400, 401, 403, 404, 409); `msg` names the field and the rule."""

    code: int = Field(examples=[400])
    msg: str = Field(examples=["limit must be at most 200; got 500"])
    data: None = None


class Page(Wire, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


# --- the queue ----------------------------------------------------------------------------------


class StateCounts(Wire):
    waiting: int = 0
    queuing: int = 0
    generating: int = 0
    success: int = 0
    fail: int = 0


class ModelStateCount(Wire):
    model: str
    state: Literal["waiting", "queuing", "generating"]
    count: int


class OldestWaiting(Wire):
    task_id: str
    model: str
    age_ms: int


class Breaker(Wire):
    state: str = Field(description="closed, open or half-open")
    failures: int = Field(description="transient failures in a row")
    reason: str = ""
    retry_at: int | None = Field(None, description="when an open breaker lets a trial call through")


class Worker(Wire):
    id: str
    host: str
    pid: int
    models: list[str]
    in_flight: int
    started_at: int
    last_seen: int
    breakers: dict[str, Breaker]


class CallbackCounts(Wire):
    pending: int
    failed: int = Field(description="deliveries given up after their retries")


class Queue(Wire):
    states: StateCounts
    unfinished_by_model: list[ModelStateCount]
    oldest_waiting: OldestWaiting | None
    workers: list[Worker]
    callbacks: CallbackCounts


# --- tasks and callbacks ------------------------------------------------------------------------


class BackendAttempt(Wire):
    backend: str
    outcome: str = Field(description="success, fallback, fail or skipped")
    fail_code: str = ""
    detail: str = ""
    at: int | None = None


class TaskItem(Wire):
    task_id: str
    model: str
    state: str
    account: str
    account_id: int
    create_time: int
    update_time: int
    complete_time: int | None
    fail_code: str
    fail_msg: str
    backend: str | None
    progress: int | None
    credits_reserved: int
    credits_consumed: int
    backend_attempts: list[BackendAttempt]
    call_back_url: str | None = Field(alias="callBackUrl")


class DeliveryAttempt(Wire):
    attempt: int
    at: int
    status_code: int | None
    latency_ms: int
    error: str


class Delivery(Wire):
    id: str = Field(description="also the Standard Webhooks webhook-id")
    task_id: str
    account: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: int | None = Field(description="null unless pending")
    last_error: str
    created_at: int
    delivered_at: int | None
    log: list[DeliveryAttempt]


class TaskDetail(Wire):
    task: TaskItem
    record: dict[str, Any] = Field(description="recordInfo's data for the task, exactly as its owner sees it")
    callbacks: list[Delivery]


# --- accounts, ledger, keys ---------------------------------------------------------------------


class AccountItem(Wire):
    id: int
    name: str
    balance: int
    created_at: int
    keys: int = Field(description="live (not revoked) user keys")
    unfinished: int = Field(description="tasks waiting, queuing or generating")


class LedgerItem(Wire):
    id: int
    account: str
    account_id: int
    task_id: str | None
    kind: Literal["grant", "adjust", "reserve", "refund"]
    amount: int
    balance_after: int
    note: str
    created_at: int


class Caps(Wire):
    hour: int | None = Field(description="credits per rolling hour; null = no cap")
    day: int | None = Field(description="credits per rolling day; null = no cap")
    total: int | None = Field(description="credits in all; null = no cap")


class Usage(Wire):
    hour: int
    day: int
    total: int


class UserKey(Wire):
    id: int
    name: str
    prefix: str
    account: str
    account_id: int
    admin: Literal[False] = False
    created_at: int
    revoked_at: int | None
    limits: Caps
    allowed_ips: list[str] | None
    usage: Usage


class AdminKey(Wire):
    id: str = Field(description='"admin:<n>"')
    name: str
    prefix: str
    admin: Literal[True] = True
    created_at: int
    revoked_at: int | None


class CreatedKey(Wire):
    id: int | str = Field(description='a user key\'s id, or "admin:<n>"')
    key: str = Field(description="the key itself, shown this once")
    prefix: str
    account: str | None
    account_id: int | None
    balance: int | None
    admin: bool


# --- the server and the audit log ---------------------------------------------------------------


class ModelState(Wire):
    id: str
    title: str
    enabled: bool
    route: list[str] = Field(description="backend names, tried in order")


class PassThrough(Wire):
    route: list[str]


class BackendItem(Wire):
    name: str
    type: str


class Server(Wire):
    version: str
    maintenance: bool
    sandbox: bool = Field(description="every route is the sandbox: images are previews, not generations")
    models: list[ModelState]
    pass_through: PassThrough | None
    backends: list[BackendItem]


class AuditItem(Wire):
    id: int
    at: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]


class Balance(Wire):
    account: str
    balance: int


class WebhookSecret(Wire):
    account: str
    webhook_secret: str


class Maintenance(Wire):
    maintenance: bool


class ModelEnabled(Wire):
    id: str
    enabled: bool


# --- request bodies -----------------------------------------------------------------------------


class CreateKeyBody(Body):
    name: str = Field(min_length=1, max_length=100)
    account: str | None = Field(None, min_length=1, max_length=100,
                                description="the account to add the key to (made if missing); default: name")
    credits: int = Field(0, ge=0, description="granted to the account with the key")
    admin: bool = Field(False, description="an admin key (no account) instead of a user key")


class LimitsBody(Body):
    hour: int | None = Field(ge=1)
    day: int | None = Field(ge=1)
    total: int | None = Field(ge=1)
    allowed_ips: list[str] | None = Field(
        alias="allowedIps", min_length=1, max_length=MAX_ALLOWED_IPS,
        description="addresses or CIDR networks (IPv4 or IPv6) the key may be used from; null = anywhere")

    @field_validator("allowed_ips")
    @classmethod
    def _networks(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [canonical_network(entry, index) for index, entry in enumerate(value)]


class CreditsBody(Body):
    amount: int = Field(description="credits to add; negative to take away (never below zero)")
    note: str = Field("", max_length=200)

    @field_validator("amount")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must not be 0")
        return value


class MaintenanceBody(Body):
    on: bool


class ModelBody(Body):
    model: str = Field(min_length=1, max_length=100)
    enabled: bool


def canonical_network(entry: str, index: int) -> str:
    """`10.0.0.0/8` for "10.0.0.0/8", `192.0.2.7/32` for "192.0.2.7"; ValueError naming the entry."""
    try:
        return str(ipaddress.ip_network(entry.strip(), strict=True))
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            raise ValueError(f"[{index}] {entry[:60]!r} is not an IPv4 or IPv6 address or CIDR network") from exc
        raise ValueError(f"[{index}] {entry[:60]!r} has host bits set; the network is {loose}") from exc
