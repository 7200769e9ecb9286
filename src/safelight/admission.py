"""Admission: what every front door runs before a task exists.

createTask (and the other doors that create tasks) parse their request into a `CreateRequest`,
then `Admission.create` decides whether it may run here (maintenance, model, input schema,
route, safety checker, URL policy), prices it, and persists it with its credit reservation in
one store transaction. Nothing here knows HTTP: a refusal is a `KieError` with kie's code and a
message that names the field and the rule; each door renders it in its own format.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from safelight import tracing
from safelight.backends import backend_class
from safelight.catalog import MODELS, InvalidInputError, MissingPriceError, ModelSpec, resolve_model, validate_input
from safelight.config import Settings
from safelight.kie import Code, KieError, param_string
from safelight.net import FetchError, OutboundPolicy, UnsafeURLError, check_url
from safelight.routing import Routing
from safelight.storage import UrlSigner
from safelight.store import (
    AccountQueueFull,
    IdempotencyConflict,
    InsufficientCredits,
    KeyGrant,
    KeyLimitExceeded,
    KeyLimits,
    Store,
)
from safelight.ttl_cache import TtlCache

MAX_URL_LENGTH = 2048
# createTask vets callBackUrl and input URLs (DNS included) for at most this long; a check still
# running then is left to the worker and the delivery loop, which vet every request they make.
URL_CHECK_TIMEOUT_SECONDS = 3.0
# Maintenance, disabled models and the server-wide queue length are read from the store at most
# this often per process.
FLAGS_TTL_SECONDS = 1.0
# A full queue has no exact horizon: workers free slots at their own pace. Clients are asked to
# come back after this long (HTTP Retry-After).
QUEUE_FULL_RETRY_AFTER_SECONDS = 5.0


@dataclass(frozen=True)
class CreateRequest:
    """A request to create a task, as any front door received it."""

    model: str
    # The model's input exactly as sent: validated here, and kept verbatim in `param`.
    input: Any
    callback_url: str | None = None
    # Extensions (headers on createTask): the same key and request within 24 h give the same task;
    # a task not finished this long after its creation is cancelled.
    idempotency_key: str | None = None
    cancel_after_seconds: float | None = None

    def fingerprint(self) -> str:
        """What "the same request" means for an Idempotency-Key: model, callBackUrl and input."""
        canonical = json.dumps({"model": self.model, "callBackUrl": self.callback_url, "input": self.input},
                               sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CreateRequest:
        """createTask's JSON body `{model, callBackUrl, input}`; 422 naming the first bad field."""
        model = body.get("model")
        if model is None:
            raise KieError(Code.INVALID, "model is required")
        if not isinstance(model, str):
            raise KieError(Code.INVALID, "model must be a string")
        callback_url = body.get("callBackUrl")
        if callback_url == "":
            callback_url = None
        if callback_url is not None:
            if not isinstance(callback_url, str):
                raise KieError(Code.INVALID, "callBackUrl must be a string")
            if len(callback_url) > MAX_URL_LENGTH or not callback_url.lower().startswith(("http://", "https://")):
                raise KieError(Code.INVALID,
                               f"callBackUrl must be an http or https URL of at most {MAX_URL_LENGTH} characters")
        if "input" not in body:
            raise KieError(Code.INVALID, "input is required")
        return cls(model=model, input=body["input"], callback_url=callback_url)


MAX_IDEMPOTENCY_KEY = 255
MAX_CANCEL_AFTER_SECONDS = 7 * 24 * 3600
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([sm]?)\s*$")


def idempotency_key(value: str) -> str:
    """An Idempotency-Key header: 1-255 printable ASCII characters."""
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not all(" " <= ch <= "~" for ch in value):
        raise KieError(Code.INVALID, f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return value


def cancel_after_seconds(value: str) -> float:
    """A Cancel-After header: seconds, as `30`, `30s` or `2m`."""
    found = _DURATION.match(value)
    seconds = (float(found.group(1)) * (60 if found.group(2) == "m" else 1)) if found else 0.0
    if not 0 < seconds <= MAX_CANCEL_AFTER_SECONDS:
        raise KieError(Code.INVALID, f"Cancel-After must be a duration such as 30, 30s or 2m, more than 0 and at "
                                     f"most {MAX_CANCEL_AFTER_SECONDS // 86400} days; got {value[:40]!r}")
    return seconds


@dataclass(frozen=True)
class AdmittedTask:
    """A request that may run: priced, with what the store needs to create it."""

    model: str
    param: str
    callback_url: str | None
    num_images: int
    cost: int
    batch_key: str | None


class Admission:
    def __init__(self, *, settings: Settings, store: Store, routing: Routing, policy: OutboundPolicy,
                 signer: UrlSigner) -> None:
        self.settings = settings
        self.store = store
        self.routing = routing
        self.policy = policy
        self.signer = signer
        self._flags: TtlCache[str, Any] = TtlCache(FLAGS_TTL_SECONDS)
        # Accounts the store found at their cap on unfinished tasks, for a second: under overload the
        # excess is refused before any database write.
        self._full_accounts: TtlCache[int, bool] = TtlCache(FLAGS_TTL_SECONDS)
        self._recently_full: set[int] = set()
        # Models for which some backend of the route honours nsfw_checker (505 otherwise).
        self.safety_checked_models = {
            model for model, route in routing.routes.items()
            if any(backend_class(routing.backends[name].type).offers_safety_checker(routing.backends[name].options)
                   for name in route)}

    async def ensure_open(self) -> None:
        """455 while the server is in maintenance mode."""
        if await self.maintenance():
            raise KieError(Code.MAINTENANCE)

    async def create(self, account_id: int, request: CreateRequest, *, key: KeyGrant | None = None) -> str:
        """Admit the request and create the task, reserving its credits; returns the task id. `key` is
        the API key the request came with: the task counts against its credit caps (code 433 past one).

        With tracing on, this span starts the task's trace; its context is stored with the task."""
        with tracing.span("safelight.create_task", model=request.model, account=account_id):
            return await self._create(account_id, request, key)

    def refuse_if_full(self, account_id: int) -> None:
        """429 at once for an account found at its cap less than a second ago (no store access)."""
        if self._full_accounts.get(account_id):
            raise self._account_full()

    async def _create(self, account_id: int, request: CreateRequest, key: KeyGrant | None) -> str:
        probing = False
        if request.idempotency_key is None:
            # Found full less than a second ago: refuse without touching the store. (A repeat with an
            # Idempotency-Key still goes through: it may name a task that exists.) After that second,
            # one request asks the store again while the others are still refused, so a crowd of
            # clients does not pile onto the write path at once.
            if self._full_accounts.get(account_id):
                raise self._account_full()
            if account_id in self._recently_full:
                self._full_accounts.put(account_id, True)
                probing = True
        try:
            task_id = await self._create_admitted(account_id, request, key)
        except BaseException:
            if probing and not self._full_accounts.get(account_id):
                self._recently_full.discard(account_id)
            raise
        if probing:  # there was room: let the crowd in again
            self._full_accounts.put(account_id, False)
            self._recently_full.discard(account_id)
        return task_id

    async def _create_admitted(self, account_id: int, request: CreateRequest, key: KeyGrant | None) -> str:
        task = await self.admit(request, account_id)
        limit = self.settings.max_queued
        if await self.unfinished_tasks() >= limit:
            raise KieError(Code.RATE_LIMITED, f"Rate limit exceeded: the server's queue is full ({limit} unfinished "
                                              "tasks); nothing was created or charged",
                           retry_after=QUEUE_FULL_RETRY_AFTER_SECONDS)
        try:
            return await self.store.tasks.create(account_id=account_id, model=task.model, param=task.param,
                                                 callback_url=task.callback_url, num_images=task.num_images,
                                                 cost=task.cost, batch_key=task.batch_key,
                                                 max_unfinished=self.settings.max_queued_per_account,
                                                 trace_context=tracing.traceparent(),
                                                 cancel_after_ms=None if request.cancel_after_seconds is None
                                                 else int(request.cancel_after_seconds * 1000),
                                                 idempotency=(request.idempotency_key, request.fingerprint())
                                                 if request.idempotency_key else None,
                                                 api_key_id=None if key is None else key.key_id,
                                                 key_limits=KeyLimits() if key is None else key.limits)
        except KeyLimitExceeded as exc:
            raise KieError(Code.KEY_LIMIT_EXCEEDED, f"{exc}; nothing was created or charged") from None
        except InsufficientCredits as exc:
            raise KieError(Code.INSUFFICIENT_CREDITS, f"Credits insufficient: this task costs {exc.needed} "
                                                      f"credits, the balance is {exc.balance}") from None
        except IdempotencyConflict as exc:
            raise KieError(Code.INVALID, f"this Idempotency-Key was already used for a different request (task "
                                         f"{exc.task_id}); use a new key for a new request") from None
        except AccountQueueFull:
            self._full_accounts.put(account_id, True)
            self._recently_full.add(account_id)
            raise self._account_full() from None

    def _account_full(self) -> KieError:
        return KieError(Code.RATE_LIMITED, f"Rate limit exceeded: this account already has "
                                           f"{self.settings.max_queued_per_account} unfinished tasks "
                                           "(SAFELIGHT_MAX_QUEUED_PER_ACCOUNT); nothing was created or charged",
                        retry_after=QUEUE_FULL_RETRY_AFTER_SECONDS)

    async def admit(self, request: CreateRequest, account_id: int) -> AdmittedTask:
        spec = resolve_model(request.model, pass_through=self.routing.passes_through)
        if spec is None:
            if self.routing.passes_through:
                raise KieError(Code.INVALID, f"model {request.model[:100]!r} is not a valid model id: 1-128 "
                                             "characters, letters, digits and . _ / : + -, starting with a letter "
                                             "or digit")
            raise KieError(Code.INVALID, f"model {request.model[:100]!r} is not supported; "
                                         f"available: {', '.join(MODELS)}")
        if spec.id in await self.disabled_models():
            raise KieError(Code.FEATURE_DISABLED, f"model {spec.id} is disabled on this server")
        try:
            model_input = validate_input(spec, request.input)
        except InvalidInputError as exc:
            raise KieError(Code.INVALID, str(exc)) from None
        if not self.routing.route_for(spec.id):
            raise KieError(Code.FEATURE_DISABLED, f"model {spec.id} is not served on this server")
        params = spec.to_params(model_input)
        if params.nsfw_checker and spec.id not in self.safety_checked_models:
            raise KieError(Code.FEATURE_DISABLED, f"nsfw_checker is not available for {spec.id} on this server")
        input_urls = spec.input_urls(model_input)
        await self._check_own_files(account_id, input_urls)
        if request.callback_url is not None or input_urls:
            await self._check_urls(request.callback_url, input_urls)
        num_images = spec.image_count(model_input)
        try:
            price = spec.price_per_image(model_input, self.settings.prices)
        except MissingPriceError as exc:  # a pass-through model the operator has not priced
            raise KieError(Code.FEATURE_DISABLED, str(exc)) from None
        return AdmittedTask(model=spec.id, param=self._param(spec, request), callback_url=request.callback_url,
                            num_images=num_images, cost=price * num_images, batch_key=params.batch_key)

    @staticmethod
    def _param(spec: ModelSpec, request: CreateRequest) -> str:
        try:
            return param_string(spec.id, request.callback_url, request.input)
        except ValueError:  # NaN or Infinity: not JSON, so `param` could not be parsed by strict clients
            raise KieError(Code.INVALID, "input contains NaN or Infinity, which JSON does not allow") from None

    async def maintenance(self) -> bool:
        return bool(await self._cached("maintenance", self.store.state.maintenance))

    async def disabled_models(self) -> set[str]:
        return set(await self._cached("disabled", self.store.state.disabled_models))

    async def unfinished_tasks(self) -> int:
        return int(await self._cached("unfinished", self.store.tasks.count_unfinished))

    async def _cached(self, name: str, read: Callable[[], Awaitable[Any]]) -> Any:
        """A store fact read at most once per FLAGS_TTL_SECONDS in this process."""
        return await self._flags.get_or_load(name, read)

    def forget_flags(self) -> None:
        """Read maintenance, disabled models and full queues from the store on the next request."""
        self._flags.clear()
        self._full_accounts.clear()
        self._recently_full.clear()

    async def _check_own_files(self, account_id: int, input_urls: list[tuple[str, str]]) -> None:
        """422 for an input URL naming another account's file on this server (its upload, or a
        result of its task): download-url refuses those links, and so does createTask.

        Our files are recognised as the worker recognises them: a genuine link (Safelight's, whatever
        host it names, or the store's presigned URL)."""
        for field, url in input_urls:
            key = self.signer.key_from_url(url)
            if key is None:
                continue
            parts = key.split("/")
            if parts[0] == "uploads" and len(parts) >= 3:
                mine = parts[1] == str(account_id)
            elif parts[0] == "results" and len(parts) >= 3:
                mine = await self.store.tasks.get(parts[1][:64], account_id) is not None
            else:
                mine = False
            if not mine:
                raise KieError(Code.INVALID, f"{field} is a file of this server that belongs to another account")

    async def _check_urls(self, callback_url: str | None, input_urls: list[tuple[str, str]]) -> None:
        """422 naming the first field whose URL the outbound policy refuses, or (input URLs only) whose
        host does not resolve.

        Input URLs that are genuine links to our own files are read from storage, never over HTTP, so
        they are not checked; one that only looks like ours (a forged signature) is checked like any
        other. A callBackUrl always is (it is POSTed to through the outbound guard).
        """
        foreign = [("callBackUrl", callback_url)] if callback_url is not None else []
        foreign += [(field, url) for field, url in input_urls if self.signer.key_from_url(url) is None]
        if not foreign:
            return
        checks: dict[str, asyncio.Task[object]] = {}
        for _field, url in foreign:
            if url not in checks:
                checks[url] = asyncio.ensure_future(check_url(url, self.policy))
        try:
            await asyncio.wait(checks.values(), timeout=URL_CHECK_TIMEOUT_SECONDS,
                               return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for check in checks.values():
                check.cancel()  # no-op for finished checks
        # Read every finished check's outcome (so none is logged as "never retrieved"), then report in field order.
        outcomes = {url: check.exception() for url, check in checks.items() if check.done() and not check.cancelled()}
        for field, url in foreign:
            exc = outcomes.get(url)
            if isinstance(exc, UnsafeURLError):
                raise KieError(Code.INVALID, f"{field} is not allowed: {exc.reason}")
            if isinstance(exc, FetchError):
                if field == "callBackUrl":
                    # Refuse only what is refused for sure: a callback host may resolve by the time the
                    # task ends, and every delivery attempt is vetted again.
                    continue
                raise KieError(Code.INVALID, f"{field} could not be resolved: {exc.reason}")
            if exc is not None:
                raise exc
