"""`Client`: the blocking SDK on httpx."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from safelight.retrying import TryAgain

from . import _base as b
from .errors import APIConnectionError, AuthenticationError, SafelightError
from .task import Task


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
        try:
            for attempt in self.retry.attempts():
                with attempt:
                    try:
                        try:
                            response = self._http.request(method, url, headers=self._auth(), **kwargs)
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

    def create_task(self, model: str, input: Any, callback_url: str | None = None) -> str:
        """Submit a task; returns its id. `input` is a dict or a typed input class (ZImageInput, ...)."""
        body = b.create_body(model, input, callback_url)
        data = self._call("POST", self.base_url + b.CREATE_PATH, json=body, idempotent=False)
        task_id = b.task_id_from(data)
        self._created.add(task_id)
        return task_id

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
    ) -> Task:
        """Poll until the task succeeds (returned), fails (GenerationFailedError) or `timeout` passes
        (WaitTimeoutError, a TimeoutError). Polls every `poll` s, growing ×1.5 up to `max_poll`."""
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
                task = self.get_task(task_id)
            except SafelightError as error:
                poller.absorb(error)
            else:
                if on_progress is not None:
                    on_progress(task)
                if poller.result(task) is not None:
                    return task
            time.sleep(poller.sleep_time())

    def run(
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
        """create_task + wait. Any error after creation carries the task id (`error.task_id`)."""
        task_id = self.create_task(model, input, callback_url)
        return self.wait(task_id, timeout, poll, max_poll=max_poll, on_progress=on_progress)

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
