"""`AsyncClient`: the asyncio SDK on httpx; the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
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


class AsyncClient:
    """The asyncio twin of `Client`. `on_progress` in wait/run may be a plain or an async function."""

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
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.settings = b.resolve_settings(api_key, base_url, upload_base_url)
        self.retry = b.RetryPolicy(max_retries, retry_backoff, retry_max_backoff, retry_budget)
        self.poll_factor = poll_factor
        self.not_found_grace = not_found_grace
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
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

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # --- transport ------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def _call(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        task_id: str | None = None,
        **kwargs: Any,
    ) -> Any:
        return (await self._exchange(method, url, idempotent=idempotent, task_id=task_id, **kwargs))[0]

    async def _exchange(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        task_id: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, httpx.Headers]:
        try:
            async for attempt in self.retry.attempts():
                with attempt:
                    try:
                        try:
                            response = await self._http.request(method, url, headers=self._auth() | (headers or {}),
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

    async def create_task(
        self,
        model: str,
        input: Any,
        callback_url: str | None = None,
        *,
        idempotency_key: b.IdempotencyKey = b.AUTO_KEY,
        cancel_after: float | None = None,
    ) -> str:
        return (await self._create(model, input, callback_url, idempotency_key, cancel_after, None))[0]

    async def _create(
        self,
        model: str,
        input: Any,
        callback_url: str | None,
        idempotency_key: b.IdempotencyKey,
        cancel_after: float | None,
        hold: float | None,
    ) -> tuple[str, Task | None]:
        body = b.create_body(model, input, callback_url)
        key = b.idempotency_key(idempotency_key)
        data, headers = await self._exchange(
            "POST", self.base_url + b.CREATE_PATH, json=body,
            idempotent=b.key_makes_create_safe(key, self._extensions),
            headers=b.create_headers(key, hold, cancel_after), timeout=b.held_timeout(self._http.timeout, hold),
        )
        task_id = b.task_id_from(data)
        self._created.add(task_id)
        return task_id, b.hold_outcome(self._extensions, hold, headers, data, task_id)

    async def get_task(self, task_id: str) -> Task:
        data = await self._call(
            "GET", self.base_url + b.RECORD_PATH, params={"taskId": task_id}, idempotent=True, task_id=task_id
        )
        return b.task_from(data, task_id)

    async def wait(
        self,
        task_id: str,
        timeout: float = 600.0,
        poll: float = 2.0,
        *,
        max_poll: float = 15.0,
        on_progress: Callable[[Task], Any] | None = None,
        stream: bool = False,
    ) -> Task:
        deadline = time.monotonic() + timeout
        if stream:
            return await self._follow(task_id, timeout, deadline, poll, max_poll, on_progress)
        return await self._poll(task_id, timeout, deadline, poll, max_poll, on_progress)

    async def _poll(
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
                task = await self.get_task(task_id)
            except SafelightError as error:
                poller.absorb(error)
            else:
                await _report(on_progress, task)
                if poller.result(task) is not None:
                    return task
            await asyncio.sleep(poller.sleep_time())

    async def _follow(
        self,
        task_id: str,
        timeout: float,
        deadline: float,
        poll: float,
        max_poll: float,
        on_progress: Callable[[Task], Any] | None,
    ) -> Task:
        if self._extensions.usable:
            tracker = b.EventTracker(task_id)
            try:
                async with contextlib.aclosing(self._stream_events(tracker, timeout, deadline)) as events:
                    async for event in events:
                        await _report(on_progress, event.task)
                        if event.kind == "done":
                            return b.finished(event.task)
            except b.StreamUnavailable:
                self._extensions.present = False
            except TaskNotFoundError:
                pass  # not visible yet? polling knows the grace this client's own tasks get
        return await self._poll(task_id, timeout, deadline, poll, max_poll, on_progress)

    async def run(
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
        deadline = time.monotonic() + timeout
        hold = b.hold_seconds(self._extensions, prefer_wait, timeout, on_progress is not None)
        task_id, ended = await self._create(model, input, callback_url, idempotency_key, cancel_after, hold)
        if ended is not None:
            await _report(on_progress, ended)
            return b.finished(ended)
        return await self._follow(task_id, timeout, deadline, poll, max_poll, on_progress)

    async def cancel(self, task: Task | str) -> Task:
        task_id = b.task_id_of(task)
        if b.is_kie(self.base_url):
            raise b.kie_unsupported("cancel", task_id)
        try:
            data = await self._call("POST", self.base_url + b.CANCEL_PATH, json={"taskId": task_id},
                                    idempotent=True, task_id=task_id)
        except NotFoundError as error:
            raise b.unsupported(error, "cancel", self.base_url) from None
        return b.task_from(data, task_id)

    async def stream(
        self,
        task: Task | str,
        *,
        timeout: float | None = None,
        poll: float = b.FIRST_POLL,
        max_poll: float = 15.0,
    ) -> AsyncGenerator[TaskEvent, None]:
        """`async for event in client.stream(task)`: the same events as `Client.stream`."""
        task_id = b.task_id_of(task)
        deadline = None if timeout is None else time.monotonic() + timeout
        tracker = b.EventTracker(task_id)
        if self._extensions.usable:
            try:
                async with contextlib.aclosing(self._stream_events(tracker, timeout or 0.0, deadline)) as events:
                    async for event in events:
                        yield event
                return
            except b.StreamUnavailable:
                self._extensions.present = False
            except TaskNotFoundError:
                if tracker.task is not None or self._created.age(task_id) is None:
                    raise
        poller = b.Poller(task_id, timeout=timeout or 0.0, poll=poll, max_poll=max_poll, factor=self.poll_factor,
                          created_age=self._created.age(task_id), grace=self.not_found_grace,
                          deadline=deadline if deadline is not None else float("inf"))
        while True:
            try:
                current = await self.get_task(task_id)
            except SafelightError as error:
                poller.absorb(error)
            else:
                poller.last = current
                if (polled := tracker.observe(current)) is not None:
                    yield polled
                    if polled.kind == "done":
                        return
            await asyncio.sleep(poller.sleep_time())

    async def _stream_events(
        self, tracker: b.EventTracker, timeout: float, deadline: float | None
    ) -> AsyncGenerator[TaskEvent, None]:
        """The async twin of `Client._stream_events`; the deadline bounds each read exactly."""
        task_id = tracker.task_id
        failures = 0
        while True:
            left = b.remaining(deadline)
            if left is not None and left <= 0:
                raise tracker.timeout_error(timeout)
            try:
                async with self._http.stream(
                    "GET", self.base_url + b.EVENTS_PATH, params={"taskId": task_id},
                    headers=self._auth() | {"Accept": "text/event-stream"},
                    timeout=b.stream_timeout(self._http.timeout),
                ) as response:
                    if not b.is_event_stream(response):
                        await response.aread()
                        raise b.stream_refusal(response, task_id)
                    decoder = b.SSEDecoder()
                    lines = response.aiter_lines()
                    while True:
                        try:
                            with anyio.fail_after(b.remaining(deadline)):
                                line = await anext(lines)
                        except StopAsyncIteration:
                            break
                        except TimeoutError:
                            raise tracker.timeout_error(timeout) from None
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
            await asyncio.sleep(delay if left is None else min(delay, left))

    async def list_tasks(
        self,
        *,
        state: str | None = None,
        model: str | None = None,
        since: int | datetime | None = None,
        limit: int | None = None,
        page_size: int = b.MAX_PAGE,
    ) -> AsyncGenerator[Task, None]:
        """`async for task in client.list_tasks(...)`: the same as `Client.list_tasks`."""
        if b.is_kie(self.base_url):
            raise b.kie_unsupported("task list")
        params = b.list_params(state, model, since)
        cursor: str | None = None
        left = limit
        while left is None or left > 0:
            size = max(1, min(page_size, b.MAX_PAGE, left if left is not None else b.MAX_PAGE))
            query = params | {"limit": size} | ({"cursor": cursor} if cursor else {})
            try:
                data = await self._call("GET", self.base_url + b.LIST_PATH, params=query, idempotent=True)
            except NotFoundError as error:
                raise b.unsupported(error, "task list", self.base_url) from None
            tasks, cursor = b.list_page(data)
            for item in tasks[:left]:
                yield item
            if left is not None:
                left -= min(len(tasks), left)
            if cursor is None or not tasks:
                return

    # --- files ----------------------------------------------------------------------------------

    async def download(
        self, task: Task | str, directory: str | os.PathLike[str], *, overwrite: bool = False
    ) -> list[Path]:
        if isinstance(task, str):
            task = await self.get_task(task)
        urls = b.results_or_raise(task)
        target = anyio.Path(directory)
        await target.mkdir(parents=True, exist_ok=True)
        taken: set[Path] = set()
        return [
            await self._download_one(url, i, task.task_id, Path(directory), overwrite, taken)
            for i, url in enumerate(urls)
        ]

    async def _download_one(
        self, url: str, index: int, task_id: str, directory: Path, overwrite: bool, taken: set[Path]
    ) -> Path:
        headers = self._auth() if b.same_origin(url, self.base_url, self.upload_base_url) else {}
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    await response.aread()
                    b.parse_response(response, task_id)
                name = b.result_file_name(url, index, task_id, response.headers.get("content-type"))
                return await _write_new(directory, name, response.aiter_bytes(), overwrite, taken)
        except httpx.TransportError as exc:
            raise b.connection_error(exc, True, task_id) from exc

    async def upload(
        self,
        source: str | os.PathLike[str] | bytes,
        upload_path: str = b.DEFAULT_UPLOAD_PATH,
        file_name: str | None = None,
    ) -> str:
        upload_path = b.clean_upload_path(upload_path)
        if b.is_url(source):
            body = {"fileUrl": source, "uploadPath": upload_path}
            if file_name:
                body["fileName"] = file_name
            data = await self._call("POST", self.upload_base_url + b.URL_UPLOAD_PATH, json=body, idempotent=False)
            return b.download_url(data)
        if isinstance(source, bytes | bytearray | memoryview):
            content = bytes(source)
            name = b.upload_name(content, file_name)
        else:
            path = anyio.Path(source)
            if not await path.is_file():
                raise FileNotFoundError(f"no such file: {source}")
            content = await path.read_bytes()
            name = b.upload_name(Path(source), file_name)
        data = await self._call(
            "POST",
            self.upload_base_url + b.STREAM_UPLOAD_PATH,
            files={"file": (name, content, b.content_type(name))},
            data={"uploadPath": upload_path, "fileName": name},
            idempotent=False,
        )
        return b.download_url(data)

    # --- account --------------------------------------------------------------------------------

    async def credits(self) -> int:
        data = await self._call("GET", self.base_url + b.CREDIT_PATH, idempotent=True)
        return int(data)

    async def models(self) -> list[dict[str, Any]]:
        try:
            data = await self._call("GET", self.base_url + b.MODELS_PATH, idempotent=True)
        except (AuthenticationError, APIConnectionError):
            raise
        except SafelightError:
            return b.builtin_models()
        return b.server_models(data)


async def _report(on_progress: Callable[[Task], Any] | None, task: Task) -> None:
    if on_progress is not None:
        outcome = on_progress(task)
        if inspect.isawaitable(outcome):
            await outcome


async def _write_new(
    directory: Path, name: str, chunks: AsyncIterator[bytes], overwrite: bool, taken: set[Path]
) -> Path:
    """The async twin of `_sync._write_new`: exclusive create, or temp file + rename with `overwrite`."""
    for path in b.candidate_paths(directory, name):
        if path in taken:
            continue
        temp = path.with_name(f".{path.name}.part") if overwrite else path
        try:
            handle = await anyio.open_file(temp, "wb" if overwrite else "xb")
        except FileExistsError:
            continue
        try:
            async with handle:
                async for chunk in chunks:
                    await handle.write(chunk)
            if overwrite:
                await anyio.Path(temp).replace(path)
        except BaseException:
            await anyio.Path(temp).unlink(missing_ok=True)
            raise
        taken.add(path)
        return path
    raise AssertionError("unreachable")
