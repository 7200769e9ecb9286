"""What every provider backend shares: an HTTP client with a retry budget, the mapping of
provider HTTP statuses onto failCodes, safe downloads of result URLs, and secret redaction.

Provider API hosts come from the operator's routing file, so API calls use a plain httpx client.
Result URLs come from provider responses, so they are downloaded through `safelight.net`, with its
address checks, byte limit and deadline, like any other URL we did not write ourselves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from safelight.backends.base import (
    FAIL_GENERATION,
    FAIL_UNAVAILABLE,
    Backend,
    BackendContext,
    BackendError,
    GeneratedImage,
)
from safelight.net import FetchError, ImageError, OutboundPolicy, UnsafeURLError, fetch, sniff_image_type

log = logging.getLogger("safelight.backends.upstream")

T = TypeVar("T")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
OPERATOR_STATUSES = frozenset({401, 402, 403})
PROVIDER_UNAVAILABLE = "provider unavailable; credits refunded"


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in `text`; provider error bodies sometimes echo request headers."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def retry_after_seconds(response: httpx.Response, default: float) -> float:
    """Seconds a 429/503 asks us to wait: the Retry-After header, or a JSON `retry_after`."""
    header = response.headers.get("retry-after")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                import datetime as dt

                return max(0.0, (parsedate_to_datetime(header) - dt.datetime.now(dt.UTC)).total_seconds())
            except (TypeError, ValueError):
                pass
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("retry_after"), int | float):
            return max(0.0, float(body["retry_after"]))
    except ValueError:
        pass
    return default


class ProviderBackend(Backend):
    """An upstream provider: one API client, opened at start() and closed with the backend.

    Providers moderate every request, so `nsfw_checker` is always honoured.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client: Any = None

    @classmethod
    def offers_safety_checker(cls, options) -> bool:
        return True

    async def open_client(self) -> Any:
        """The provider's client (credentials read here, so a missing key fails the start)."""
        raise NotImplementedError

    async def start(self) -> None:
        if self.client is None:
            self.client = await self.open_client()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


class ProviderClient:
    """One provider's API: base URL, auth headers, and a bounded retry budget for overload.

    `request` retries connection errors, timeouts, 429 and 5xx up to `retries` times, honouring
    Retry-After (capped at `max_wait`). When the budget is spent it raises a transient
    BackendError, so the worker can move on to the next backend of the route. 401/402/403 are the
    operator's problem (a bad key, no credit): the user sees "provider unavailable", the log has
    the detail. Any other status is returned for the backend to interpret.
    """

    def __init__(self, backend: str, base_url: str, *, headers: Mapping[str, str], secrets: Iterable[str],
                 timeout: float = 60.0, retries: int = 3, backoff_seconds: float = 1.0,
                 max_wait: float = 30.0) -> None:
        self.backend = backend
        self.secrets = [s for s in secrets if s]
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.max_wait = max_wait
        # follow_redirects=False: a provider redirect could point the key-bearing headers elsewhere.
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=dict(headers),
                                      timeout=httpx.Timeout(timeout, connect=10.0), follow_redirects=False)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def fail(self, code: str, message: str, detail: str, *, transient: bool) -> BackendError:
        detail = self.redact(f"backend {self.backend}: {detail}")
        log.warning("%s", detail)
        return BackendError(code, message, transient=transient, detail=detail)

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.http.request(method, url, **kwargs)
            except httpx.TimeoutException as exc:
                problem, wait = f"{method} {url} timed out ({type(exc).__name__})", None
            except httpx.TransportError as exc:
                problem, wait = f"{method} {url} could not connect: {type(exc).__name__}: {exc}", None
            else:
                status = response.status_code
                if status in OPERATOR_STATUSES:
                    raise self.fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE,
                                    f"{method} {url} answered HTTP {status} (check the API key and the "
                                    f"account's credit): {response.text[:300]}", transient=True)
                if status not in RETRYABLE_STATUSES:
                    return response
                problem = f"{method} {url} answered HTTP {status}: {response.text[:200]}"
                wait = retry_after_seconds(response, 0.0) if status in (429, 503) else None
            if attempt > self.retries:
                raise self.fail(FAIL_UNAVAILABLE, PROVIDER_UNAVAILABLE,
                                f"{problem}; gave up after {attempt} attempts", transient=True)
            delay = wait if wait else self.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            log.info("%s", self.redact(f"backend {self.backend}: {problem}; retrying in {delay:.1f} s"))
            await asyncio.sleep(min(delay, self.max_wait))

    def json_of(self, response: httpx.Response, what: str) -> Any:
        """The JSON body, or a transient failure naming what was expected (a malformed response)."""
        try:
            return response.json()
        except ValueError:
            raise self.fail(FAIL_GENERATION, "the provider returned a malformed response; credits refunded",
                            f"{what}: HTTP {response.status_code}, body is not JSON: {response.text[:200]!r}",
                            transient=True) from None

    async def close(self) -> None:
        await self.http.aclose()


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
        raise BackendError(FAIL_GENERATION, "the provider's result could not be downloaded; credits refunded",
                           transient=True, detail=detail) from None
    mime = sniff_image_type(result.content)
    if mime is None:
        detail = f"backend {backend}: result {url.split('?')[0]} is not a PNG, JPEG or WebP image"
        log.warning("%s", detail)
        raise BackendError(FAIL_GENERATION, "the provider returned something that is not an image; credits refunded",
                           transient=True, detail=detail) from ImageError(detail)
    return result.content, mime


EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def generated(data: bytes, mime: str, seed: int | None) -> GeneratedImage:
    return GeneratedImage(data=data, seed=seed, content_type=mime, extension=EXTENSIONS.get(mime, "png"))


def malformed(client: ProviderClient, detail: str) -> BackendError:
    return client.fail(FAIL_GENERATION, "the provider returned a malformed response; credits refunded", detail,
                       transient=True)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def rejection_message(response: httpx.Response, redact: Callable[[str], str]) -> str:
    """A user-facing message for a provider's 400/422: its own words, trimmed and without secrets."""
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
    if len(reason) > 200:
        reason = reason[:197] + "..."
    if reason:
        return f"the provider rejected the request: {reason}"
    return f"the provider rejected the request (HTTP {response.status_code}); check the prompt and reference images"


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
