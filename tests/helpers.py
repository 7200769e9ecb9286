"""Helpers shared by the tests: loopback ports and servers, fresh databases, test images, task polling.

Tests import these from here (`from tests.helpers import ...`); fixtures live in conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from safelight.api.app import create_app
from safelight.config import Settings
from safelight.kie import TaskState
from safelight.runtime import SERVE_ROLES, Role, Runtime

PG_ADMIN_URL = os.environ.get("SAFELIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
# A body any model route accepts (imagen4-fast needs only a prompt).
BODY = {"model": "google/imagen4-fast", "input": {"prompt": "worker test"}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def pg_available() -> bool:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_URL), 3)
        await conn.close()
        return True
    except Exception:
        return False


@contextlib.asynccontextmanager
async def fresh_database(kind: str, tmp_path) -> AsyncIterator[str]:
    """A new, empty SQLite file or PostgreSQL database, dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    if not await pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL not reachable")
    import asyncpg

    name = f"safelight_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def serve_app(app, port: int, *, lifespan: str = "on") -> tuple[uvicorn.Server, asyncio.Task]:
    """Run an ASGI app with uvicorn on 127.0.0.1:port inside the test's event loop."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan=lifespan)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes no started event
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return server, task


async def start_server(settings: Settings, roles: Iterable[Role] = SERVE_ROLES) -> tuple[uvicorn.Server, asyncio.Task]:
    """A whole Safelight on settings.port: the API and the given roles (by default all of `serve`)."""
    return await serve_app(create_app(settings, roles=roles), settings.port)


@dataclass
class LiveServer:
    base_url: str
    runtime: Runtime
    api_key: str
    account_id: int
    app: Any = None

    def client(self, key: str | None = None, **kw) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key or self.api_key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10, **kw)

    async def wait_terminal(self, task_id: str, timeout: float = 10.0) -> dict:
        """Poll recordInfo, as a client would, until the task ends."""
        async with self.client() as client:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                body = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()
                if body["data"] and body["data"]["state"] in TaskState.TERMINAL:
                    return body["data"]
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"task {task_id} did not finish: {body}")
                await asyncio.sleep(0.02)


async def create_task(runtime: Runtime, body=BODY, cost: int = 4, account_id: int | None = None) -> str:
    """A waiting task straight in the store (no HTTP), charged `cost` credits."""
    return await runtime.store.tasks.create(account_id=account_id or runtime.test_account, model=body["model"],
                                            param=json.dumps(body), callback_url=None, num_images=1, cost=cost)


async def wait_state(runtime: Runtime, task_id: str, states=TaskState.TERMINAL, timeout: float = 5.0):
    """Poll the store until the task reaches one of `states`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await runtime.store.tasks.get(task_id)
        if row["state"] in states:
            return row
        await asyncio.sleep(0.005)
    raise AssertionError(f"{task_id} stuck in {row['state']}")


class DropAfterRequest:
    """A loopback TCP server that reads each HTTP request whole (headers, then a Content-Length body)
    and closes the connection without a word: the request was sent, and its answer is lost, as when
    a provider's load balancer resets the connection. `requests` holds what it read."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.base_url = ""

    async def __aenter__(self) -> DropAfterRequest:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.base_url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            self.requests.append(head + await reader.readexactly(length))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
