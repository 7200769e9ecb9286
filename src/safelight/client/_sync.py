"""`Client`: the blocking SDK on httpx."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from safelight.retrying import TryAgain, backoff_delay

from . import _base as b
from .errors import (
    APIConnectionError,
    AuthenticationError,
    NotFoundError,
    RateLimitError,
    SafelightError,
    ServerError,
    TaskNotFoundError,
)
from .task import Task, TaskEvent


class Client:
    """A client for Safelight or kie.ai; only `base_url` differs.

    >>> client = Client()                          # SAFELIGHT_API_KEY / SAFELIGHT_BASE_URL / KIE_API_KEY
    >>> task = client.run("z-image", {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9"})
    >>> client.download(task, "out")
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        upload_base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        retry_backoff: float = 0.5,
        retry_max_backoff: float = 8.0,
        retry_budget: float = 30.0,
        poll_factor: float = 1.5,
        not_found_grace: float = 30.0,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.settings = b.resolve_settings(api_key, base_url, upload_base_url)
        self.retry = b.RetryPolicy(max_retries, retry_backoff, retry_max_backoff, retry_budget)
        self.poll_factor = poll_factor
        self.not_found_grace = not_found_grace
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            timeout=timeout, follow_redirects=True, headers={"User-Agent": b.USER_AGENT}
        )
        self._created = b.CreatedTasks()
        self._extensions = b.Extensions(self.settings.base_url)

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def upload_base_url(self) -> str:
        return self.settings.upload_base_url

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- transport ------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _call(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        task_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return self._exchange(method, url, idempotent=idempotent, task_id=task_id, **kwargs)[0]

    def _exchange(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        task_id: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, httpx.Headers]:
        """One call with retries: the envelope's `data` and the answer's headers."""
        try:
            for attempt in self.retry.attempts():
                with attempt:
                    try:
                        try:
                            response = self._http.request(method, url, headers=self._auth() | (headers or {}),
                                                          **kwargs)
                        except httpx.TransportError as exc:
                            raise b.connection_error(exc, idempotent, task_id) from exc
                        return b.parse_response(response, task_id), response.headers
                    except SafelightError as error:
                        if (again := b.try_again(error)) is None:
                            raise
                        raise again from error
        except TryAgain as spent:  # the retry budget is spent: raise the last error itself
            assert isinstance(spent.__cause__, SafelightError)
            raise spent.__cause__ from None
        raise AssertionError("unreachable: the retry loop returns or raises")

    # --- jobs -----------------------------------------------------------------------------------

    def create_task(
        self,
        model: str,
        input: Any,
        callback_url: str | None = None,
        *,
        idempotency_key: b.IdempotencyKey = b.AUTO_KEY,
        cancel_after: float | None = None,
    ) -> str:
        """Submit a task; returns its id. `input` is a dict or a typed input class (ZImageInput, ...).

        Every create carries an Idempotency-Key (a fresh uuid4 unless you give your own), so on
        Safelight a create whose connection broke after sending is retried safely: the server answers
        the same task. kie.ai ignores the key, so there (and with `idempotency_key=None`, which sends
        none) such a create is not retried. `cancel_after` (seconds) cancels the task on the server if
        it has not ended by then (Safelight only)."""
        return self._create(model, input, callback_url, idempotency_key, cancel_after, None)[0]

    def _create(
        self,
        model: str,
        input: Any,
        callback_url: str | None,
        idempotency_key: b.IdempotencyKey,
        cancel_after: float | None,
        hold: float | None,
    ) -> tuple[str, Task | None]:
        """createTask, held `hold` seconds with `Prefer: wait`: the id, and the Task if it already ended."""
        body = b.create_body(model, input, callback_url)
        key = b.idempotency_key(idempotency_key)
        data, headers = self._exchange(
            "POST", self.base_url + b.CREATE_PATH, json=body,
            idempotent=b.key_makes_create_safe(key, self._extensions),
            headers=b.create_headers(key, hold, cancel_after), timeout=b.held_timeout(self._http.timeout, hold),
        )
        task_id = b.task_id_from(data)
        self._created.add(task_id)
        return task_id, b.hold_outcome(self._extensions, hold, headers, data, task_id)

    def get_task(self, task_id: str) -> Task:
        data = self._call(
            "GET", self.base_url + b.RECORD_PATH, params={"taskId": task_id}, idempotent=True, task_id=task_id
        )
        return b.task_from(data, task_id)

    def wait(
        self,
        task_id: str,
        timeout: float = 600.0,
        poll: float = 2.0,
        *,
        max_poll: float = 15.0,
        on_progress: Callable[[Task], Any] | None = None,
        stream: bool = False,
    ) -> Task:
        """Poll until the task succeeds (returned), fails (GenerationFailedError) or `timeout` passes
        (WaitTimeoutError, a TimeoutError). Polls every `poll` s, growing ×1.5 up to `max_poll`.

        `stream=True` follows the server's event stream instead where it has one (Safelight), and
        polls where it has none (kie.ai); `on_progress` is then called on every change."""
        deadline = time.monotonic() + timeout
        if stream:
            return self._follow(task_id, timeout, deadline, poll, max_poll, on_progress)
        return self._poll(task_id, timeout, deadline, poll, max_poll, on_progress)

    def _poll(
        self,
        task_id: str,
        timeout: float,
        deadline: float,
        poll: float,
        max_poll: float,
        on_progress: Callable[[Task], Any] | None,
    ) -> Task:
        poller = b.Poller(
            task_id,
            timeout=timeout,
            poll=poll,
            max_poll=max_poll,
            factor=self.poll_factor,
            created_age=self._created.age(task_id),
            grace=self.not_found_grace,
            deadline=deadline,
        )
        while True:
            try:
                task = self.get_task(task_id)
            except SafelightError as error:
                poller.absorb(error)
            else:
                if on_progress is not None:
                    on_progress(task)
                if poller.result(task) is not None:
                    return task
            time.sleep(poller.sleep_time())

    def _follow(
        self,
        task_id: str,
        timeout: float,
        deadline: float,
        poll: float,
        max_poll: float,
        on_progress: Callable[[Task], Any] | None,
    ) -> Task:
        """The task's end through its event stream, or by polling where there is none."""
        if self._extensions.usable:
            tracker = b.EventTracker(task_id)
            try:
                with contextlib.closing(self._stream_events(tracker, timeout, deadline)) as events:
                    for event in events:
                        if on_progress is not None:
                            on_progress(event.task)
                        if event.kind == "done":
                            return b.finished(event.task)
            except b.StreamUnavailable:
                self._extensions.present = False
            except TaskNotFoundError:
                pass  # not visible yet? polling knows the grace this client's own tasks get
        return self._poll(task_id, timeout, deadline, poll, max_poll, on_progress)

    def run(
        self,
        model: str,
        input: Any,
        callback_url: str | None = None,
        *,
        timeout: float = 600.0,
        poll: float = b.FIRST_POLL,
        max_poll: float = 15.0,
        on_progress: Callable[[Task], Any] | None = None,
        idempotency_key: b.IdempotencyKey = b.AUTO_KEY,
        cancel_after: float | None = None,
        prefer_wait: float | None = None,
    ) -> Task:
        """Create a task and return it finished. Any error after creation carries the task id
        (`error.task_id`); GenerationFailedError if it failed, WaitTimeoutError after `timeout` s.

        On Safelight, createTask holds its answer until the task ends (`Prefer: wait`, `prefer_wait`
        seconds: 10 by default, 1 with `on_progress`), and a longer task is followed on its event
        stream: no polling. Elsewhere (kie.ai) it polls, first after `poll` s, then ×1.5 up to `max_poll`."""
        deadline = time.monotonic() + timeout
        hold = b.hold_seconds(self._extensions, prefer_wait, timeout, on_progress is not None)
        task_id, ended = self._create(model, input, callback_url, idempotency_key, cancel_after, hold)
        if ended is not None:
            if on_progress is not None:
                on_progress(ended)
            return b.finished(ended)
        return self._follow(task_id, timeout, deadline, poll, max_poll, on_progress)

    def cancel(self, task: Task | str) -> Task:
        """Cancel a task that has not ended (Safelight): it ends in `fail` with failCode "499", fully
        refunded, and the ended record is returned. A task that already ended: ValidationError
        (code 422) naming its state. kie.ai has no cancel: NotSupportedError."""
        task_id = b.task_id_of(task)
        if b.is_kie(self.base_url):
            raise b.kie_unsupported("cancel", task_id)
        try:
            data = self._call("POST", self.base_url + b.CANCEL_PATH, json={"taskId": task_id}, idempotent=True,
                              task_id=task_id)
        except NotFoundError as error:
            raise b.unsupported(error, "cancel", self.base_url) from None
        return b.task_from(data, task_id)

    def stream(
        self,
        task: Task | str,
        *,
        timeout: float | None = None,
        poll: float = b.FIRST_POLL,
        max_poll: float = 15.0,
    ) -> Generator[TaskEvent, None, None]:
        """The task's events as they happen: `state` (a Task) whenever its state changes, `progress`
        (an int) as it moves, and a last `done` (the final Task, success or fail); then it ends.

        On Safelight they come from the server's event stream (reopened if the connection breaks);
        elsewhere (kie.ai) they are made from polls, first after `poll` s, then ×1.5 up to `max_poll`.
        `timeout` (seconds, default none) raises WaitTimeoutError. A failed task is not an error
        here: its `done` event carries it."""
        task_id = b.task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = b.EventTracker(task_id)
        if self._extensions.usable:
            try:
                yield from self._stream_events(tracker, timeout or 0.0, deadline)
                return
            except b.StreamUnavailable:
                self._extensions.present = False
            except TaskNotFoundError:
                if tracker.task is not None or self._created.age(task_id) is None:
                    raise
                # this client's own task, not visible yet: polling gives it the grace window
        poller = b.Poller(task_id, timeout=timeout or 0.0, poll=poll, max_poll=max_poll, factor=self.poll_factor,
                          created_age=self._created.age(task_id), grace=self.not_found_grace,
                          deadline=deadline if deadline is not None else float("inf"))
        while True:
            try:
                current = self.get_task(task_id)
            except SafelightError as error:
                poller.absorb(error)
            else:
                poller.last = current
                if (polled := tracker.observe(current)) is not None:
                    yield polled
                    if polled.kind == "done":
                        return
            time.sleep(poller.sleep_time())

    def _stream_events(
        self, tracker: b.EventTracker, timeout: float, deadline: float | None
    ) -> Generator[TaskEvent, None, None]:
        """Follow GET /api/v1/jobs/stream until the `done` event. A broken connection is reopened
        (the server starts again with the current state, which the tracker does not repeat); too
        many failures in a row raise the last. StreamUnavailable when the server has no stream."""
        task_id = tracker.task_id
        failures = 0
        while True:
            left = b.remaining(deadline)
            if left is not None and left <= 0:
                raise tracker.timeout_error(timeout)
            try:
                with self._http.stream(
                    "GET", self.base_url + b.EVENTS_PATH, params={"taskId": task_id},
                    headers=self._auth() | {"Accept": "text/event-stream"},
                    timeout=b.stream_timeout(self._http.timeout),
                ) as response:
                    if not b.is_event_stream(response):
                        response.read()
                        raise b.stream_refusal(response, task_id)
                    with _Watchdog(response, left):
                        decoder = b.SSEDecoder()
                        for line in response.iter_lines():
                            if (message := decoder.line(line)) is None:
                                continue
                            if (event := tracker.message(*message)) is None:
                                continue
                            failures = 0
                            yield event
                            if event.kind == "done":
                                return
                error: SafelightError = APIConnectionError(None, "the event stream ended before the task did",
                                                           task_id)
            except httpx.TransportError as exc:
                error = b.connection_error(exc, True, task_id)
            except (RateLimitError, ServerError) as exc:
                error = exc
            left = b.remaining(deadline)
            if left is not None and left <= 0:
                raise tracker.timeout_error(timeout) from error
            failures += 1
            if failures > self.retry.max_retries:
                raise error
            delay = backoff_delay(failures - 1, self.retry.backoff, self.retry.max_backoff)
            time.sleep(delay if left is None else min(delay, left))

    def list_tasks(
        self,
        *,
        state: str | None = None,
        model: str | None = None,
        since: int | datetime | None = None,
        limit: int | None = None,
        page_size: int = b.MAX_PAGE,
    ) -> Generator[Task, None, None]:
        """The account's tasks, newest first, fetched page by page (Safelight's GET /api/v1/jobs/list,
        following `nextCursor`). `state` and `model` filter; `since` (a datetime, or epoch milliseconds
        as in createTime) keeps tasks created since then; `limit` stops after that many tasks.
        kie.ai has no task list: NotSupportedError."""
        if b.is_kie(self.base_url):
            raise b.kie_unsupported("task list")
        params = b.list_params(state, model, since)
        cursor: str | None = None
        left = limit
        while left is None or left > 0:
            size = max(1, min(page_size, b.MAX_PAGE, left if left is not None else b.MAX_PAGE))
            query = params | {"limit": size} | ({"cursor": cursor} if cursor else {})
            try:
                data = self._call("GET", self.base_url + b.LIST_PATH, params=query, idempotent=True)
            except NotFoundError as error:
                raise b.unsupported(error, "task list", self.base_url) from None
            tasks, cursor = b.list_page(data)
            yield from tasks[:left]
            if left is not None:
                left -= min(len(tasks), left)
            if cursor is None or not tasks:
                return

    # --- files ----------------------------------------------------------------------------------

    def download(self, task: Task | str, directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Save every result of a finished task into `directory`, streamed. File names come from the
        URL path; an existing file is never replaced unless `overwrite` (name-1.png etc. instead)."""
        if isinstance(task, str):
            task = self.get_task(task)
        urls = b.results_or_raise(task)
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        taken: set[Path] = set()
        return [self._download_one(url, i, task.task_id, target, overwrite, taken) for i, url in enumerate(urls)]

    def _download_one(
        self, url: str, index: int, task_id: str, directory: Path, overwrite: bool, taken: set[Path]
    ) -> Path:
        # Only our own hosts see the API key; result URLs may live on a CDN.
        headers = self._auth() if b.same_origin(url, self.base_url, self.upload_base_url) else {}
        try:
            with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    b.parse_response(response, task_id)
                name = b.result_file_name(url, index, task_id, response.headers.get("content-type"))
                return _write_new(directory, name, response.iter_bytes(), overwrite, taken)
        except httpx.TransportError as exc:
            raise b.connection_error(exc, True, task_id) from exc

    def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        upload_path: str = b.DEFAULT_UPLOAD_PATH,
        file_name: str | None = None,
    ) -> str:
        """Upload a local file, raw bytes, or (server-side fetch) an http(s) URL; returns its URL."""
        upload_path = b.clean_upload_path(upload_path)
        if b.is_url(source):
            body = {"fileUrl": source, "uploadPath": upload_path}
            if file_name:
                body["fileName"] = file_name
            data = self._call("POST", self.upload_base_url + b.URL_UPLOAD_PATH, json=body, idempotent=False)
            return b.download_url(data)
        if isinstance(source, bytes | bytearray | memoryview):
            content = bytes(source)
            name = b.upload_name(content, file_name)
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            content = path.read_bytes()
            name = b.upload_name(path, file_name)
        data = self._call(
            "POST",
            self.upload_base_url + b.STREAM_UPLOAD_PATH,
            files={"file": (name, content, b.content_type(name))},
            data={"uploadPath": upload_path, "fileName": name},
            idempotent=False,
        )
        return b.download_url(data)

    # --- account --------------------------------------------------------------------------------

    def credits(self) -> int:
        data = self._call("GET", self.base_url + b.CREDIT_PATH, idempotent=True)
        return int(data)

    def models(self) -> list[dict[str, Any]]:
        """Models with their input schemas and prices, from GET /api/v1/models (a Safelight extension);
        on a server without it (kie.ai) the built-in catalog, each entry marked `"builtin": True`."""
        try:
            data = self._call("GET", self.base_url + b.MODELS_PATH, idempotent=True)
        except (AuthenticationError, APIConnectionError):
            raise
        except SafelightError:
            return b.builtin_models()
        return b.server_models(data)


class _Watchdog:
    """Ends a blocking read of the event stream at the caller's deadline: a read timeout alone
    restarts with every keep-alive comment. It shuts the socket down (which wakes the read) unless
    disarmed first, under a lock, so a connection handed back to the pool is never touched."""

    def __init__(self, response: httpx.Response, delay: float | None) -> None:
        stream = response.extensions.get("network_stream")
        self._socket = stream.get_extra_info("socket") if stream is not None and delay is not None else None
        self._lock = threading.Lock()
        self._armed = self._socket is not None
        self._timer = threading.Timer(max(delay or 0.0, 0.0), self._fire) if self._armed else None

    def __enter__(self) -> _Watchdog:
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        with self._lock:
            if self._armed and isinstance(self._socket, socket.socket):
                try:
                    self._socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def _write_new(directory: Path, name: str, chunks: Iterator[bytes], overwrite: bool, taken: set[Path]) -> Path:
    """Write `chunks` to a new file (exclusive create, so a concurrent writer is never clobbered) or,
    with `overwrite`, via a temporary file renamed into place. A failed write leaves nothing behind."""
    for path in b.candidate_paths(directory, name):
        if path in taken:
            continue
        temp = path.with_name(f".{path.name}.part") if overwrite else path
        try:
            handle = open(temp, "wb" if overwrite else "xb")
        except FileExistsError:
            continue
        try:
            with handle:
                for chunk in chunks:
                    handle.write(chunk)
            if overwrite:
                os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        taken.add(path)
        return path
    raise AssertionError("unreachable")
