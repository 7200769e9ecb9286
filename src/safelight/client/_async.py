"""`AsyncClient`: the asyncio SDK on httpx; the same calls as `Client`, awaited."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx

from safelight.retrying import TryAgain

from . import _base as b
from .errors import APIConnectionError, AuthenticationError, SafelightError
from .task import Task


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
        try:
            async for attempt in self.retry.attempts():
                with attempt:
                    try:
                        try:
                            response = await self._http.request(method, url, headers=self._auth(), **kwargs)
                        except httpx.TransportError as exc:
                            raise b.connection_error(exc, idempotent, task_id) from exc
                        return b.parse_response(response, task_id)
                    except SafelightError as error:
                        if (again := b.try_again(error)) is None:
                            raise
                        raise again from error
        except TryAgain as spent:  # the retry budget is spent: raise the last error itself
            assert isinstance(spent.__cause__, SafelightError)
            raise spent.__cause__ from None
        raise AssertionError("unreachable: the retry loop returns or raises")

    # --- jobs -----------------------------------------------------------------------------------

    async def create_task(self, model: str, input: Any, callback_url: str | None = None) -> str:
        body = b.create_body(model, input, callback_url)
        data = await self._call("POST", self.base_url + b.CREATE_PATH, json=body, idempotent=False)
        task_id = b.task_id_from(data)
        self._created.add(task_id)
        return task_id

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
    ) -> Task:
        poller = b.Poller(
            task_id,
            timeout=timeout,
            poll=poll,
            max_poll=max_poll,
            factor=self.poll_factor,
            created_age=self._created.age(task_id),
            grace=self.not_found_grace,
        )
        while True:
            try:
                task = await self.get_task(task_id)
            except SafelightError as error:
                poller.absorb(error)
            else:
                if on_progress is not None:
                    outcome = on_progress(task)
                    if inspect.isawaitable(outcome):
                        await outcome
                if poller.result(task) is not None:
                    return task
            await asyncio.sleep(poller.sleep_time())

    async def run(
        self,
        model: str,
        input: Any,
        callback_url: str | None = None,
        *,
        timeout: float = 600.0,
        poll: float = 2.0,
        max_poll: float = 15.0,
        on_progress: Callable[[Task], Any] | None = None,
    ) -> Task:
        task_id = await self.create_task(model, input, callback_url)
        return await self.wait(task_id, timeout, poll, max_poll=max_poll, on_progress=on_progress)

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
