"""What every provider backend shares: the options every provider takes, the client lifecycle, an
HTTP client with a retry budget, status tables that map provider answers onto failCodes, safe
downloads of result URLs, and secret redaction.

Provider API hosts come from the operator's routing file, so API calls use a plain httpx client.
Result URLs come from provider responses, so they are downloaded through `safelight.net`, with its
address checks, byte limit and deadline, like any other URL we did not write ourselves.

A request whose connection failed before its body was fully written never reached the provider,
and is retried. A submit (a POST) whose body was written and whose answer was lost (a read
timeout, a reset, a dropped connection) may have been accepted, and billed: it is re-sent only
where the provider deduplicates it. What each provider offers, from its documentation:

- kie.ai: createTask takes `model`, `input` and `callBackUrl` only; no idempotency key, and tasks
  are found by their `taskId` alone (docs.kie.ai Market OpenAPI, mirrored in monet88/artio
  docs/kie-api/). Another Safelight honours `Idempotency-Key` on createTask: the `kie` backend's
  `idempotency_key = true` sends one, and only then is a lost createTask answer re-sent.
- Black Forest Labs: `POST /v1/{model}` documents no idempotency key or request id, and a job is
  found only by the `id` its answer carries (`GET /v1/get_result?id=`); there is no listing
  (docs.bfl.ai, black-forest-labs/skills skills/bfl-api/references/endpoints.md).
- Ideogram: `POST /v1/ideogram-v3/generate` (and edit, remix, reframe) is synchronous, documents
  the `Api-Key` header only and returns no job id (developer.ideogram.ai/api-reference).
- Google: Vertex `:predict` and `:generateContent` take no request id; Google's own client
  libraries mark Predict non-idempotent and do not retry it (googleapis/google-cloud-cpp,
  google/cloud/aiplatform/v1/prediction_connection_idempotency_policy.cc).

So a lost submit is never re-sent to BFL, Ideogram or Google, nor to kie.ai: the backend attempt
fails as transient, the route moves on, and the task's attempt log says why.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from safelight.backends.base import (
    Backend,
    BackendContext,
    BackendError,
    GeneratedImage,
    note,
)
from safelight.kie import FailCode
from safelight.net import FetchError, ImageError, OutboundPolicy, UnsafeURLError, fetch, sniff_image_type
from safelight.retrying import Attempts, TryAgain, retry_after_seconds, retry_context

log = logging.getLogger("safelight.backends.upstream")

T = TypeVar("T")

PROVIDER_UNAVAILABLE = "provider unavailable; credits refunded"
MALFORMED = "the provider returned a malformed response; credits refunded"
NO_ANSWER = "the provider did not answer in time; credits refunded"
# HTTP statuses worth another try of the same request, within the retry budget.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


# --- status tables -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """What one provider answer means for the task.

    `message` is what the user reads; a `{reason}` in it stands for the provider's own words
    (scrubbed), and when the provider gave none, `bare` is shown instead (by default the message
    without its `: {reason}`). `hint` is added to the operator's log detail only.
    """

    fail_code: FailCode
    transient: bool
    message: str
    hint: str = ""
    bare: str = ""

    def user_message(self, reason: str = "") -> str:
        if "{reason}" not in self.message:
            return self.message
        if reason:
            return self.message.replace("{reason}", reason)
        return self.bare or self.message.replace(": {reason}", "").replace("{reason}", "")

    def detail(self, detail: str) -> str:
        return f"{detail} ({self.hint})" if self.hint else detail


@dataclass(frozen=True)
class StatusTable:
    """A provider's statuses (HTTP statuses, or codes in its response envelope) and what they mean;
    a status without a row gets `default`."""

    rules: Mapping[int, Rule]
    default: Rule

    def rule(self, status: int) -> Rule:
        return self.rules.get(status, self.default)


OPERATOR = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE, hint="check the API key and the account's credit")
# Statuses every provider answers alike: the operator's key or account is the problem, not the
# task. The user sees "provider unavailable", the log has the detail, and the route moves on.
OPERATOR_STATUSES: Mapping[int, Rule] = {401: OPERATOR, 402: OPERATOR, 403: OPERATOR}
# A provider refusing what the user asked for (bfl, ideogram): its own words, when it gives some.
REJECTED = Rule(FailCode.INPUT, False, "the provider rejected the request: {reason}",
                bare="the provider rejected the request; check the prompt and reference images")
# A wrong base_url or endpoint: the operator's problem.
NO_SUCH_ENDPOINT = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE,
                        hint="check the backend's base_url and endpoint options")


# --- options -------------------------------------------------------------------------------------


class ProviderOptions(BaseModel):
    """The options every provider type takes, one name per setting. A type overrides a field to
    change its default, and lists options it renamed in `renamed` (old name -> new name)."""

    model_config = ConfigDict(extra="forbid")

    # Old option names of this type; a routing file still using one fails with a message naming the new one.
    renamed: ClassVar[Mapping[str, str]] = {}

    timeout_seconds: float = Field(60.0, gt=0, le=3600, description="per HTTP request to the API")
    retries: int = Field(3, ge=0, le=10, description="extra attempts on 429, 5xx, timeouts and connection errors")
    backoff_seconds: float = Field(1.0, ge=0, le=60, description="first retry delay (doubles) when the provider "
                                   "names none")
    max_wait_seconds: float = Field(30.0, ge=0, le=600, description="cap on one wait, Retry-After included")

    @classmethod
    def renamed_option(cls, data: Mapping[str, Any]) -> str | None:
        """'OLD was renamed to NEW' for the first old name in `data`, else None."""
        for old, new in cls.renamed.items():
            if old in data:
                return f"{old} was renamed to {new}"
        return None

    @model_validator(mode="before")
    @classmethod
    def _no_old_names(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (problem := cls.renamed_option(data)):
            raise PydanticCustomError("renamed_option", problem)
        return data

    def retrying(self) -> Attempts:
        """The retry budget these options describe (see safelight.retrying)."""
        return retry_context(retries=self.retries, backoff_seconds=self.backoff_seconds,
                             max_wait_seconds=self.max_wait_seconds)


class PollingOptions(ProviderOptions):
    """Options of providers that answer with a job id and are polled until the job ends."""

    poll_interval_seconds: float = Field(1.0, gt=0, description="first wait before a poll; grows x1.5 per poll")
    max_poll_interval_seconds: float = Field(10.0, gt=0, description="cap on the wait between polls")
    deadline_seconds: float = Field(600.0, gt=0, description="give up on a job after this long (failCode 504)")


# --- backends ------------------------------------------------------------------------------------


class Closeable(Protocol):
    async def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=Closeable)


class ProviderBackend(Backend, Generic[ClientT]):
    """An upstream provider: one API client, opened at start() and closed with the backend.

    The worker calls start() before any generate(); generate() takes the client with `started()`,
    which fails loudly if nobody did. Providers moderate every request, so `nsfw_checker` is
    always honoured.
    """

    Options: ClassVar[type[BaseModel]] = ProviderOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: ClientT | None = None

    @classmethod
    def parse_options(cls, name: str, options: Mapping[str, Any]) -> BaseModel:
        # An old option name gets one message naming the new one, rather than "extra inputs".
        if issubclass(cls.Options, ProviderOptions) and (problem := cls.Options.renamed_option(options)):
            raise ValueError(f"backends.{name}.{problem}")
        return super().parse_options(name, options)

    @classmethod
    def offers_safety_checker(cls, options: Mapping[str, Any]) -> bool:
        return True

    async def open_client(self) -> ClientT:
        """The provider's client (credentials read here, so a missing key fails the start)."""
        raise NotImplementedError

    def started(self) -> ClientT:
        """The client start() opened; an internal error if the backend was never started."""
        if self.client is None:
            raise RuntimeError(f"backend {self.name} was not started (the worker calls start() before generate())")
        return self.client

    async def start(self) -> None:
        if self.client is None:
            self.client = await self.open_client()

    async def close(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()


# --- the HTTP client -----------------------------------------------------------------------------


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text`; provider error bodies sometimes echo request headers."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def retry_after_of(response: httpx.Response) -> float | None:
    """Seconds a response asks us to wait: its Retry-After header, or a JSON `retry_after` (BFL, kie)."""
    seconds = retry_after_seconds(response.headers.get("retry-after"))
    if seconds is not None:
        return seconds
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("retry_after") if isinstance(body, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
        return max(0.0, float(value))
    return None


# Looks at a response the HTTP status let through; names the problem if it is worth another try.
Classifier = Callable[[httpx.Response], str | None]

# Methods whose repetition has the effect of one request (RFC 9110 §9.2.2): safe to re-send.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# Set on a request's extensions once its body is fully written (see `track_sending`).
BODY_SENT = "safelight.body_sent"


async def track_sending(request: httpx.Request) -> None:
    """An httpx request hook: mark the request once httpcore has written its whole body.

    httpcore reports each step of a request to a `trace` extension; this one notes
    `send_request_body.complete`. An error before it means the provider never got the request;
    after it, the provider may have acted on it. (An event hook, not a transport, so proxies from
    the environment keep working.)"""
    outer = request.extensions.get("trace")

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_body.complete"):
            request.extensions[BODY_SENT] = True
        if outer is not None:
            await outer(event, info)

    request.extensions["trace"] = trace


def request_sent(exc: httpx.TransportError) -> bool:
    """Whether the request that failed with `exc` had been sent whole (its answer is what was lost).
    Only for clients with the `track_sending` hook."""
    try:
        request = exc.request
    except RuntimeError:  # raised before a request existed
        return False
    return bool(request.extensions.get(BODY_SENT))


def answer_lost(what: str, exc: httpx.TransportError) -> str:
    """How the log and the attempt record name a lost answer."""
    return f"{what} answer lost after sending ({type(exc).__name__})"


def lost_code(exc: httpx.TransportError) -> tuple[FailCode, str]:
    """The failCode and user message of a submit whose answer was lost."""
    if isinstance(exc, httpx.TimeoutException):
        return FailCode.TIMEOUT, NO_ANSWER
    return FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE


class ProviderClient:
    """One provider's API: base URL, auth headers, and a bounded retry budget for overload.

    `request` retries connection errors, timeouts, 429 and 5xx (and whatever `retry_on` says is
    worth another try) up to `retries` times, honouring Retry-After (capped at `max_wait_seconds`).
    When the budget is spent it raises a transient BackendError, so the worker can move on to the
    next backend of the route. 401/402/403 are the operator's problem (OPERATOR_STATUSES). Any
    other answer is returned for the backend to interpret.

    A POST (a submit) whose answer was lost after it was sent is not retried: it fails at once,
    transient, saying so (the provider may have accepted and billed it). With `idempotency_header`
    (the provider deduplicates by that header) every POST carries a key, the same for all the
    tries of one `request`, and a lost answer is re-sent with it.
    """

    def __init__(self, backend: str, base_url: str, *, headers: Mapping[str, str], secrets: Iterable[str],
                 options: ProviderOptions, idempotency_header: str | None = None) -> None:
        self.backend = backend
        self.secrets = [s for s in secrets if s]
        self.options = options
        self.idempotency_header = idempotency_header
        # follow_redirects=False: a provider redirect could point the key-bearing headers elsewhere.
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=dict(headers),
                                      timeout=httpx.Timeout(options.timeout_seconds, connect=10.0),
                                      follow_redirects=False, event_hooks={"request": [track_sending]})

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def fail(self, code: FailCode, message: str, detail: str, *, transient: bool) -> BackendError:
        detail = self.redact(f"backend {self.backend}: {detail}")
        log.warning("%s", detail)
        return BackendError(code, self.redact(message), transient=transient, detail=detail)

    def fail_by(self, rule: Rule, detail: str, reason: str = "") -> BackendError:
        """The BackendError a status table's rule describes; `reason` is the provider's own words."""
        return self.fail(rule.fail_code, rule.user_message(reason), rule.detail(detail), transient=rule.transient)

    async def request(self, method: str, url: str, *, retry_on: Classifier | None = None,
                      **kwargs: Any) -> httpx.Response:
        method = method.upper()
        resend = method in IDEMPOTENT_METHODS
        if not resend and self.idempotency_header:
            key = f"safelight-{uuid.uuid4().hex}"  # one key for every try of this submit
            kwargs["headers"] = {**(kwargs.get("headers") or {}), self.idempotency_header: key}
            resend = True
        attempts = 0
        try:
            async for attempt in self.options.retrying():
                with attempt:
                    attempts = attempt.num
                    return await self._attempt(method, url, retry_on, resend, **kwargs)
        except TryAgain as exc:
            raise self.fail(FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE,
                            f"{exc.problem}; gave up after {attempts} attempts", transient=True) from None
        raise AssertionError("unreachable: the retry context returns or raises")

    async def _attempt(self, method: str, url: str, retry_on: Classifier | None, resend: bool,
                       **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            if request_sent(exc) and method not in IDEMPOTENT_METHODS:
                lost = answer_lost(f"{method} {url}", exc)
                if not resend:
                    code, message = lost_code(exc)
                    raise self.fail(code, message, f"{lost}; not retried (the provider may have billed it)",
                                    transient=True) from None
                note(f"backend {self.backend}: {lost}; re-sent with the same {self.idempotency_header}")
                raise self._try_again(lost) from None
            if isinstance(exc, httpx.TimeoutException):
                raise self._try_again(f"{method} {url} timed out ({type(exc).__name__})") from None
            failed = "lost its answer" if request_sent(exc) else "could not connect"
            raise self._try_again(f"{method} {url} {failed}: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status in OPERATOR_STATUSES:
            raise self.fail_by(OPERATOR_STATUSES[status], f"{method} {url} answered HTTP {status}: "
                               f"{response.text[:300]}")
        if status in RETRYABLE_STATUSES:
            problem: str | None = f"{method} {url} answered HTTP {status}: {response.text[:200]}"
        else:
            problem = retry_on(response) if retry_on is not None else None
        if problem is None:
            return response
        raise self._try_again(problem, retry_after_of(response))

    def _try_again(self, problem: str, retry_after: float | None = None) -> TryAgain:
        problem = self.redact(problem)
        log.info("backend %s: %s", self.backend, problem)
        return TryAgain(problem, retry_after)

    def json_of(self, response: httpx.Response, what: str) -> Any:
        """The JSON body, or a transient failure naming what was expected (a malformed response)."""
        try:
            return response.json()
        except ValueError:
            raise self.fail(FailCode.GENERATION, MALFORMED, f"{what}: HTTP {response.status_code}, body is not "
                            f"JSON: {response.text[:200]!r}", transient=True) from None

    async def close(self) -> None:
        await self.http.aclose()


# --- results -------------------------------------------------------------------------------------


async def download_result(context: BackendContext, backend: str, url: str, *, timeout: float = 60.0,
                          headers: Mapping[str, str] | None = None) -> tuple[bytes, str]:
    """Download a provider's result image at once (BFL samples expire in 10 minutes).

    Returns (bytes, mime type by content). Failures are transient: the next backend may succeed.
    """
    try:
        result = await fetch(url, policy=context.policy or OutboundPolicy(), max_bytes=context.max_download_bytes,
                             headers=headers, timeout=timeout)
    except (UnsafeURLError, FetchError) as exc:
        detail = f"backend {backend}: could not download result {url.split('?')[0]}: {exc}"
        log.warning("%s", detail)
        raise BackendError(FailCode.GENERATION, "the provider's result could not be downloaded; credits refunded",
                           transient=True, detail=detail) from None
    mime = sniff_image_type(result.content)
    if mime is None:
        detail = f"backend {backend}: result {url.split('?')[0]} is not a PNG, JPEG or WebP image"
        log.warning("%s", detail)
        raise BackendError(FailCode.GENERATION, "the provider returned something that is not an image; credits "
                           "refunded", transient=True, detail=detail) from ImageError(detail)
    return result.content, mime


EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def generated(data: bytes, mime: str, seed: int | None) -> GeneratedImage:
    return GeneratedImage(data=data, seed=seed, content_type=mime, extension=EXTENSIONS.get(mime, "png"))


def malformed(client: ProviderClient, detail: str) -> BackendError:
    return client.fail(FailCode.GENERATION, MALFORMED, detail, transient=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def rejection_reason(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """The provider's own words for a 400/422 (fit for the user: trimmed, one line, no secrets), or ""."""
    reason = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        found = body.get("detail") or body.get("message") or body.get("error")
        if isinstance(found, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
            parts = []
            for item in found[:3]:
                if isinstance(item, dict) and isinstance(item.get("msg"), str):
                    loc = [str(p) for p in item.get("loc") or [] if p != "body"]
                    parts.append(f"{'.'.join(loc)}: {item['msg']}" if loc else item["msg"])
            reason = "; ".join(parts)
        elif isinstance(found, str):
            reason = found
    reason = " ".join(_CONTROL.sub(" ", redact(reason)).split())
    return reason if len(reason) <= 200 else reason[:197] + "..."


async def gather_or_cancel(coros: list[Awaitable[T]]) -> list[T]:
    """Run the coroutines together; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
