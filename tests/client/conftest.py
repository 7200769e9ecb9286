"""Fixtures for the SDK tests: the fake kie.ai of tests/fake_kie.py in a thread, and a second one as a CDN;
a real Safelight in a thread (for the blocking client against the extensions).

`API_KEY`, `FakeKie` and `ServerThread` are re-exported for tests/test_packaging.py; tests import them
from `tests.fake_kie`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from safelight.backends import Backend, GeneratedImage, Job
from safelight.catalog import MODELS
from safelight.config import Settings
from safelight.runtime import SERVE_NO_WORKER_ROLES, SERVE_ROLES, Role, Runtime
from tests.fake_kie import API_KEY, FakeKie, ServerThread
from tests.helpers import free_port, png_bytes, start_server

__all__ = ["API_KEY", "FakeKie", "ServerThread"]

# Tiny retry settings, so the retry and backoff paths run in milliseconds.
FAST = {"retry_backoff": 0.01, "retry_max_backoff": 0.05, "retry_budget": 5.0}


@pytest.fixture(scope="session")
def _kie_servers() -> Iterator[tuple[FakeKie, FakeKie]]:
    with FakeKie() as main, FakeKie() as cdn:
        yield main, cdn


@pytest.fixture
def kie(_kie_servers: tuple[FakeKie, FakeKie], monkeypatch: pytest.MonkeyPatch) -> FakeKie:
    """The fake kie.ai, reset; the SDK's environment variables cleared so tests pass settings explicitly."""
    for name in ("SAFELIGHT_API_KEY", "SAFELIGHT_BASE_URL", "SAFELIGHT_UPLOAD_BASE_URL", "KIE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    fake = _kie_servers[0]
    fake.reset()
    return fake


@pytest.fixture
def cdn(_kie_servers: tuple[FakeKie, FakeKie]) -> FakeKie:
    """A second fake server on another port, standing in for a result CDN."""
    fake = _kie_servers[1]
    fake.reset()
    return fake


@pytest.fixture
def client_kwargs(kie: FakeKie) -> dict[str, Any]:
    return {"api_key": API_KEY, "base_url": kie.base_url, **FAST}


# --- a real Safelight in a thread, for the blocking client ----------------------------------------


class PacedBackend(Backend):
    """Takes `seconds` per task, reporting progress three times on the way (the sandbox is instant)."""

    type_name = "paced"

    def __init__(self, seconds: float = 1.5) -> None:
        super().__init__("paced")
        self.seconds = seconds

    async def generate(self, job: Job) -> list[GeneratedImage]:
        for step in range(1, 4):
            await asyncio.sleep(self.seconds / 3)
            job.report_progress(33 * step)
        return [GeneratedImage(png_bytes(8, 8), seed) for seed in job.seeds]


@dataclass
class ThreadedSafelight:
    """A whole Safelight (API and the given roles) in its own thread and event loop, with an account of
    1000 credits; `call(coroutine)` runs a coroutine there (the store belongs to that loop)."""

    base_url: str
    api_key: str
    account_id: int
    runtime: Runtime
    loop: asyncio.AbstractEventLoop

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def balance(self) -> int:
        return int(self.call(self.runtime.store.accounts.balance(self.account_id)))

    def task_count(self) -> int:
        return sum(self.call(self.runtime.store.tasks.count_by_state()).values())


@contextlib.contextmanager
def threaded_safelight(settings: Settings, roles: Iterable[Role] = SERVE_ROLES,
                       backend: Backend | None = None) -> Iterator[ThreadedSafelight]:
    """Serve Safelight in a thread. With `backend`, a worker runs every model on it (give roles
    without Role.WORKER then); with no worker at all, tasks stay `waiting`."""
    port = free_port()
    settings = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    ready: queue.Queue[ThreadedSafelight | BaseException] = queue.Queue()
    stop: list[asyncio.Event] = []

    async def serve() -> None:
        try:
            server, serving = await start_server(settings, roles=roles)
            runtime: Runtime = server.config.app.state.runtime
            created = await runtime.store.accounts.create_key("sdk", credits=1000)
            worker = None
            if backend is not None:
                worker = runtime.build_worker({backend.name: backend})
                worker.routes = {model: [backend.name] for model in MODELS}
                await worker.start()
            stop.append(asyncio.Event())
            ready.put(ThreadedSafelight(settings.public_url, created.key, created.account_id, runtime,
                                        asyncio.get_running_loop()))
        except BaseException as exc:
            ready.put(exc)
            raise
        try:
            await stop[0].wait()
        finally:
            if worker is not None:
                await worker.stop()
            server.should_exit = True
            await serving

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    started = ready.get(timeout=30)
    if isinstance(started, BaseException):
        raise started
    try:
        yield started
    finally:
        started.loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)


@pytest.fixture
def safelight(settings: Settings) -> Iterator[ThreadedSafelight]:
    """Safelight as `safelight serve` runs it: the sandbox backend, every task done in milliseconds."""
    with threaded_safelight(settings) as server:
        yield server


@pytest.fixture
def paced_safelight(settings: Settings) -> Iterator[ThreadedSafelight]:
    """Safelight whose tasks take 1.5 s each, with progress on the way."""
    with threaded_safelight(settings, SERVE_NO_WORKER_ROLES, PacedBackend(1.5)) as server:
        yield server


@pytest.fixture
def idle_safelight(settings: Settings) -> Iterator[ThreadedSafelight]:
    """Safelight without a worker: tasks stay `waiting` (to cancel, list, and time out)."""
    with threaded_safelight(settings, SERVE_NO_WORKER_ROLES - {Role.DELIVERY}) as server:
        yield server
