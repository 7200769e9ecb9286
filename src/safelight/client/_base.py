"""What the sync and async clients share: configuration, envelope parsing, retry and poll policy.

The two clients only differ in how they wait and do I/O; every decision lives here once.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
import json
import mimetypes
import os
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import httpx

from safelight import __version__
from safelight.kie import TaskState
from safelight.retrying import Attempts, TryAgain, retry_after_seconds, retry_context

from .errors import (
    APIConnectionError,
    GenerationFailedError,
    NotFoundError,
    NotSupportedError,
    RateLimitError,
    SafelightError,
    ServerError,
    TaskNotFoundError,
    WaitTimeoutError,
    error_for_code,
)
from .models import CATALOG, InputModel
from .task import Task, TaskEvent

SAFELIGHT_DEFAULT_URL = "http://127.0.0.1:8000"
KIE_BASE_URL = "https://api.kie.ai"
KIE_UPLOAD_URL = "https://kieai.redpandaai.co"
DEFAULT_UPLOAD_PATH = "safelight/uploads"
USER_AGENT = f"safelight-python/{__version__}"

CREATE_PATH = "/api/v1/jobs/createTask"
RECORD_PATH = "/api/v1/jobs/recordInfo"
CREDIT_PATH = "/api/v1/chat/credit"
MODELS_PATH = "/api/v1/models"
STREAM_UPLOAD_PATH = "/api/file-stream-upload"
URL_UPLOAD_PATH = "/api/file-url-upload"
# Safelight's extensions (kie.ai has none of them).
EVENTS_PATH = "/api/v1/jobs/stream"
CANCEL_PATH = "/api/v1/jobs/cancel"
LIST_PATH = "/api/v1/jobs/list"

# run(): how long createTask may hold its answer (`Prefer: wait`) before the SDK follows the event
# stream instead; shorter with on_progress, so that progress shows from the start. The server
# holds at least 1 s and at most 60 s. Short enough that no proxy's idle timeout cuts it.
DEFAULT_HOLD = 10.0
PROGRESS_HOLD = 1.0
MAX_HOLD = 60.0
# run() and stream() where there is no event stream (kie.ai): the first poll, then x poll_factor.
FIRST_POLL = 0.25
# The stream sends a comment every 15 s; a connection silent this long is dead and is reopened.
STREAM_IDLE = 45.0
MAX_PAGE = 100


@dataclass(frozen=True)
class Settings:
    api_key: str | None
    base_url: str
    upload_base_url: str


def resolve_settings(api_key: str | None, base_url: str | None, upload_base_url: str | None) -> Settings:
    """Arguments first, then SAFELIGHT_* variables, then kie's KIE_API_KEY.

    A key taken from KIE_API_KEY, with no base URL given anywhere, means kie.ai itself; otherwise
    the default is a local Safelight. Uploads go to kie's separate upload host when the base URL is
    kie.ai, and to the base URL otherwise (Safelight serves both).
    """
    env = os.environ
    key_from_kie = False
    if api_key is None:
        api_key = env.get("SAFELIGHT_API_KEY") or None
        if api_key is None and env.get("KIE_API_KEY"):
            api_key, key_from_kie = env["KIE_API_KEY"], True
    if base_url is None:
        base_url = env.get("SAFELIGHT_BASE_URL") or (KIE_BASE_URL if key_from_kie else SAFELIGHT_DEFAULT_URL)
    base_url = base_url.rstrip("/")
    if upload_base_url is None:
        upload_base_url = env.get("SAFELIGHT_UPLOAD_BASE_URL") or (
            KIE_UPLOAD_URL if urlsplit(base_url).hostname == "api.kie.ai" else base_url
        )
    return Settings(api_key, base_url, upload_base_url.rstrip("/"))


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for 429, 5xx and connection failures (safelight.retrying, on stamina): exponential
    backoff with equal jitter, capped at `max_backoff`; a server's Retry-After is honoured as it
    is. `max_retries` bounds the attempts and `budget` the total seconds slept for one call."""

    max_retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 8.0
    budget: float = 30.0

    def attempts(self) -> Attempts:
        return retry_context(retries=self.max_retries, backoff_seconds=self.backoff,
                             max_backoff_seconds=self.max_backoff, max_wait_seconds=self.budget,
                             budget_seconds=self.budget)


def is_kie(base_url: str) -> bool:
    return urlsplit(base_url).hostname == "api.kie.ai"


class Extensions:
    """What a client learned about the server's extensions (`Prefer: wait`, the event stream).

    Unknown until the first answer tells; kie.ai (by its host name) never has them. A createTask
    held with `Prefer: wait` and answered without `Preference-Applied`, or an event stream route
    that is missing, marks them absent for the rest of the client's life.
    """

    def __init__(self, base_url: str) -> None:
        self.present: bool | None = False if is_kie(base_url) else None

    @property
    def usable(self) -> bool:
        return self.present is not False


class StreamUnavailable(Exception):
    """The server has no event stream (HTTP 404 on the route, or not an event stream at all)."""


class _Auto(enum.Enum):
    """`idempotency_key`'s default: a fresh key (uuid4) for every create."""

    KEY = "auto"

    def __repr__(self) -> str:
        return "<a fresh uuid4>"


AUTO_KEY = _Auto.KEY
IdempotencyKey = str | None | Literal[_Auto.KEY]


def idempotency_key(value: IdempotencyKey) -> str | None:
    """The Idempotency-Key to send: a fresh uuid4 by default, the caller's own, or none (None)."""
    if value is AUTO_KEY:
        return str(uuid.uuid4())
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or not all(" " <= ch <= "~" for ch in value):
        raise ValueError("idempotency_key must be 1-255 printable ASCII characters")
    return value


def key_makes_create_safe(key: str | None, extensions: Extensions) -> bool:
    """Whether a create whose connection broke after sending may be sent again: only with a key, and
    only to a server that honours it. kie.ai ignores the header (a second attempt could create a
    second paid task), and so does a server found without Safelight's extensions."""
    return key is not None and extensions.usable


def create_headers(key: str | None, hold: float | None, cancel_after: float | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    if hold is not None:
        headers["Prefer"] = f"wait={hold:g}"
    if cancel_after is not None:
        if not cancel_after > 0:
            raise ValueError("cancel_after must be a number of seconds above 0")
        headers["Cancel-After"] = f"{cancel_after:.3f}".rstrip("0").rstrip(".") + "s"
    return headers


def hold_seconds(extensions: Extensions, prefer_wait: float | None, timeout: float,
                 with_progress: bool) -> float | None:
    """How long run() asks createTask to hold its answer; None: no `Prefer: wait` at all."""
    if not extensions.usable:
        return None
    hold = prefer_wait if prefer_wait is not None else PROGRESS_HOLD if with_progress else DEFAULT_HOLD
    hold = min(hold, timeout, MAX_HOLD)
    return hold if hold >= 1 else None  # the server holds at least 1 s: less is no hold at all


def held_timeout(timeout: httpx.Timeout, hold: float | None) -> httpx.Timeout:
    """The client's timeouts, with the read timeout stretched by the time the server may hold."""
    if hold is None or timeout.read is None:
        return timeout
    return httpx.Timeout(connect=timeout.connect, read=timeout.read + hold, write=timeout.write, pool=timeout.pool)


def stream_timeout(timeout: httpx.Timeout) -> httpx.Timeout:
    """The client's timeouts, with a read timeout that outlasts the stream's 15 s keep-alive comments."""
    read = None if timeout.read is None else max(timeout.read, STREAM_IDLE)
    return httpx.Timeout(connect=timeout.connect, read=read, write=timeout.write, pool=timeout.pool)


def hold_outcome(extensions: Extensions, hold: float | None, headers: httpx.Headers, data: Any,
                 task_id: str) -> Task | None:
    """After a createTask sent with `Prefer: wait`: learn whether the server honours it, and return
    the finished Task when it answered with the whole record."""
    if hold is None:
        return None
    extensions.present = "preference-applied" in headers
    if extensions.present and isinstance(data, dict) and data.get("state"):
        task = task_from(data, task_id)
        return task if task.done else None
    return None


def task_id_of(task: Task | str) -> str:
    if isinstance(task, Task):
        return task.task_id
    if isinstance(task, str) and task:
        return task
    raise TypeError(f"expected a Task or a task id, not {task!r}")


def finished(task: Task) -> Task:
    """A task that ended: returned on success, GenerationFailedError on fail."""
    if task.state == TaskState.FAIL:
        raise failed_error(task)
    return task


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def unsupported(error: NotFoundError, what: str, base_url: str) -> SafelightError:
    """A 404 from an extension's route means the server lacks the extension; "recordInfo is null" does not."""
    if isinstance(error, TaskNotFoundError):
        return error
    return NotSupportedError(404, f"{base_url} has no {what} (a Safelight extension)", error.task_id,
                             http_status=error.http_status, body=error.body)


def kie_unsupported(what: str, task_id: str | None = None) -> NotSupportedError:
    return NotSupportedError(404, f"kie.ai has no {what}; it is a Safelight extension", task_id)


# --- the event stream ---------------------------------------------------------------------------


class SSEDecoder:
    """Server-sent events, line by line (the subset Safelight sends: `event:`, `data:`, comments)."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def line(self, line: str) -> tuple[str, str] | None:
        """Feed one line; an (event, data) pair when a blank line completes one."""
        if not line:
            event, data = self.event or "message", self.data
            self.event, self.data = "", []
            return (event, "\n".join(data)) if data else None
        if line.startswith(":"):
            return None  # a comment: the keep-alive ping
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


class EventTracker:
    """Turns what the server says into TaskEvents: `state` when the state changes, `progress` when
    only the progress moves, and one `done` at the end. It reads the stream's events and successive
    polls alike; a reopened stream's first event repeats the state, and is not passed on twice."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.task: Task | None = None

    def message(self, event: str, data: str) -> TaskEvent | None:
        try:
            payload = json.loads(data)
        except ValueError:
            return None
        if event == "progress":
            value = payload.get("progress") if isinstance(payload, dict) else None
            return self.progress(value) if isinstance(value, int) and not isinstance(value, bool) else None
        if event in ("state", "done") and isinstance(payload, dict):
            return self.observe(task_from(payload, self.task_id), done=event == "done")
        return None  # an event this SDK does not know

    def observe(self, task: Task, *, done: bool = False) -> TaskEvent | None:
        previous, self.task = self.task, task
        if done or task.done:
            return TaskEvent("done", task, task)
        if previous is None or task.state != previous.state:
            return TaskEvent("state", task, task)
        if task.progress is not None and task.progress != previous.progress:
            return TaskEvent("progress", task.progress, task)
        return None

    def progress(self, value: int) -> TaskEvent | None:
        if self.task is None or self.task.progress == value:
            return None
        self.task = replace(self.task, progress=value, raw={**self.task.raw, "progress": value})
        return TaskEvent("progress", value, self.task)

    def timeout_error(self, timeout: float) -> WaitTimeoutError:
        return WaitTimeoutError(self.task_id, timeout, self.task)


def stream_refusal(response: httpx.Response, task_id: str) -> Exception:
    """Why a (fully read) answer to the stream route is not an event stream: the typed error in its
    envelope (an unknown task, a bad key, 429, 5xx), or StreamUnavailable for a missing route."""
    if response.status_code in (404, 405):
        return StreamUnavailable(f"HTTP {response.status_code}")
    try:
        parse_response(response, task_id)
    except NotFoundError as error:
        return error if isinstance(error, TaskNotFoundError) else StreamUnavailable(str(error))
    except SafelightError as error:
        return error
    return StreamUnavailable(f"not an event stream: {response.headers.get('content-type')!r}")


def is_event_stream(response: httpx.Response) -> bool:
    return response.status_code == 200 and response.headers.get("content-type", "").startswith("text/event-stream")


# --- the task list ------------------------------------------------------------------------------


def list_params(state: str | None, model: str | None, since: int | dt.datetime | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if state is not None:
        params["state"] = str(state)
    if model is not None:
        params["model"] = model
    if since is not None:
        params["since"] = int(since.timestamp() * 1000) if isinstance(since, dt.datetime) else int(since)
    return params


def list_page(data: Any) -> tuple[list[Task], str | None]:
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise SafelightError(None, f"the task list answered without items: {data!r}"[:300])
    tasks = [task_from(item, "") for item in data["items"] if isinstance(item, dict)]
    cursor = data.get("nextCursor")
    return tasks, cursor if isinstance(cursor, str) and cursor else None


def try_again(error: SafelightError) -> TryAgain | None:
    """`error` as a TryAgain for the retry loop when it is worth another attempt, else None."""
    if not retryable(error):
        return None
    retry_after: float | None = getattr(error, "retry_after", None)
    return TryAgain(str(error), retry_after)


def retryable(error: SafelightError) -> bool:
    if isinstance(error, APIConnectionError):
        return error.retry_safe
    return isinstance(error, RateLimitError | ServerError)


def connection_error(exc: httpx.TransportError, idempotent: bool, task_id: str | None) -> APIConnectionError:
    error = APIConnectionError(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, task_id)
    # A request that never connected cannot have created anything; after that, only reads are safe.
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    error.retry_safe = never_sent or idempotent
    return error


def parse_response(response: httpx.Response, task_id: str | None = None) -> Any:
    """The `data` of a kie envelope, or the typed error for its body code (or else its HTTP status)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    code: int | None = None
    msg = ""
    if isinstance(body, dict):
        raw_code = body.get("code")
        try:
            code = int(raw_code) if raw_code is not None and not isinstance(raw_code, bool) else None
        except (TypeError, ValueError):
            code = None
        msg = str(body.get("msg") or body.get("message") or "")
        if body.get("success") is False and (code is None or code == 200):
            code = status if status >= 400 else 500
    if code is None or code == 200:
        code = status if status >= 400 else 200
    if code == 200:
        return body.get("data") if isinstance(body, dict) and "data" in body else body
    if not msg:
        msg = response.reason_phrase or f"HTTP {status}"
        if body is None and response.text:
            msg = f"{msg}: {response.text[:200]}"
    raise error_for_code(code, msg, task_id, http_status=status, body=body, retry_after=_retry_after(response))


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get("retry-after"))


def input_payload(model: str, task_input: Any) -> dict[str, Any]:
    if isinstance(task_input, InputModel):
        if task_input.model_id != model:
            raise ValueError(f"{type(task_input).__name__} is the input of {task_input.model_id!r}, not {model!r}")
        return task_input.to_input()
    if isinstance(task_input, dict):
        return task_input
    raise TypeError(f"input must be a dict or a typed input class, not {type(task_input).__name__}")


def create_body(model: str, task_input: Any, callback_url: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "input": input_payload(model, task_input)}
    if callback_url:
        body["callBackUrl"] = callback_url
    return body


def task_id_from(data: Any) -> str:
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if not task_id:
        raise SafelightError(None, f"createTask answered without a taskId: {data!r}")
    return str(task_id)


def task_from(data: Any, task_id: str) -> Task:
    if not isinstance(data, dict):
        raise TaskNotFoundError(422, "recordInfo is null", task_id)
    task = Task.from_record(data)
    task.task_id = task.task_id or task_id
    return task


class CreatedTasks:
    """When this client created each recent task, for the "recordInfo is null" grace window."""

    def __init__(self, limit: int = 1024) -> None:
        self._times: OrderedDict[str, float] = OrderedDict()
        self._limit = limit

    def add(self, task_id: str) -> None:
        self._times[task_id] = time.monotonic()
        while len(self._times) > self._limit:
            self._times.popitem(last=False)

    def age(self, task_id: str) -> float | None:
        created = self._times.get(task_id)
        return None if created is None else time.monotonic() - created


class Poller:
    """The poll loop of `wait()`: backoff, the not-yet-visible grace window, and the deadline."""

    def __init__(
        self,
        task_id: str,
        *,
        timeout: float,
        poll: float,
        max_poll: float,
        factor: float,
        created_age: float | None,
        grace: float,
        deadline: float | None = None,
    ) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if deadline is None else deadline
        self.interval = poll
        self.max_poll = max(max_poll, poll)
        self.factor = factor
        # kie can answer "recordInfo is null" for a task it has just created; only a task this client
        # created, and only for `grace` seconds after, is given that benefit of the doubt.
        self.grace_until = None if created_age is None else time.monotonic() + grace - created_age
        self.last: Task | None = None

    def absorb(self, error: SafelightError) -> None:
        """Swallow a transient poll error, or re-raise it with the task id attached."""
        error.task_id = error.task_id or self.task_id
        in_grace = self.grace_until is not None and time.monotonic() < self.grace_until
        if isinstance(error, TaskNotFoundError) and in_grace:
            return
        raise error

    def result(self, task: Task) -> Task | None:
        """The finished task, None to keep polling; raises GenerationFailedError on `fail`."""
        self.last = task
        if task.state == TaskState.SUCCESS:
            return task
        if task.state == TaskState.FAIL:
            raise failed_error(task)
        return None

    def sleep_time(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(self.task_id, self.timeout, self.last)
        delay = min(self.interval, remaining)
        self.interval = min(self.interval * self.factor, self.max_poll)
        return delay


def failed_error(task: Task) -> GenerationFailedError:
    msg = task.fail_msg or "generation failed"
    return GenerationFailedError(
        501, msg, task.task_id, fail_code=task.fail_code, fail_msg=task.fail_msg, task=task, body=task.raw
    )


def server_models(data: Any) -> list[dict[str, Any]]:
    """Entries of GET /api/v1/models, extra keys kept; `inputSchema` is also offered as `input_schema`."""
    if not isinstance(data, list):
        return builtin_models()
    models = []
    for entry in data:
        if isinstance(entry, dict) and entry.get("id"):
            entry = dict(entry)
            if "input_schema" not in entry and isinstance(entry.get("inputSchema"), dict):
                entry["input_schema"] = entry["inputSchema"]
            models.append(entry)
    return models


def builtin_models() -> list[dict[str, Any]]:
    return [dict(copy.deepcopy(entry), builtin=True) for entry in CATALOG]


# --- uploads and downloads ----------------------------------------------------------------------


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


_MAGIC = ((b"\x89PNG\r\n\x1a\n", ".png"), (b"\xff\xd8\xff", ".jpg"), (b"GIF8", ".gif"))


def sniff_extension(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((ext for magic, ext in _MAGIC if data.startswith(magic)), ".bin")


def upload_name(source: Path | bytes, file_name: str | None, head: bytes = b"") -> str:
    """A file name that will not collide: kie overwrites an existing name in the same uploadPath."""
    if file_name:
        return file_name
    tag = uuid.uuid4().hex[:8]
    if isinstance(source, Path):
        return f"{safe_name(source.stem) or 'upload'}-{tag}{source.suffix.lower()}"
    return f"upload-{tag}{sniff_extension(head or source)}"


def content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def clean_upload_path(upload_path: str) -> str:
    return upload_path.strip("/") or DEFAULT_UPLOAD_PATH  # kie: no leading or trailing slashes


def download_url(data: Any) -> str:
    if isinstance(data, dict):
        for key in ("downloadUrl", "fileUrl", "url"):
            if data.get(key):
                return str(data[key])
    raise SafelightError(None, f"upload answered without a downloadUrl: {data!r}")


def safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return name[:120]


def result_file_name(url: str, index: int, task_id: str, mime: str | None) -> str:
    """The URL's file name; prefixed with the task id when it lacks it (Safelight's `.../<id>/0.png`),
    so results of different tasks in one directory keep telling apart."""
    name = safe_name(PurePosixPath(unquote(urlsplit(url).path)).name) or str(index)
    if task_id and task_id not in name:
        name = f"{safe_name(task_id)}-{name}"
    if not PurePosixPath(name).suffix and mime:
        name += mimetypes.guess_extension(mime.split(";")[0].strip()) or ""
    return name


def candidate_paths(directory: Path, name: str) -> Iterator[Path]:
    """name.png, name-1.png, name-2.png, ...: the first that does not exist is taken, never replaced."""
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    yield directory / name
    n = 1
    while True:
        yield directory / f"{stem}-{n}{suffix}"
        n += 1


def same_origin(url: str, *bases: str) -> bool:
    target = urlsplit(url)
    return any(
        (target.scheme, target.hostname, target.port) == (b.scheme, b.hostname, b.port)
        for b in (urlsplit(base) for base in bases)
    )


def results_or_raise(task: Task) -> list[str]:
    if not task.succeeded:
        raise SafelightError(None, f"task has no results (state {task.state!r})", task.task_id)
    return task.result_urls
