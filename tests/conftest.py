"""Shared fixtures: real SQLite files, a real PostgreSQL database, a real server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from safelight.api.app import create_app
from safelight.api.runtime import Runtime
from safelight.config import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PG_ADMIN_URL = os.environ.get("SAFELIGHT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _pg_available() -> bool:
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(PG_ADMIN_URL), 3)
        await conn.close()
        return True
    except Exception:
        return False


@contextlib.asynccontextmanager
async def fresh_database(kind: str, tmp_path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
        return
    if not await _pg_available():
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


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request, tmp_path) -> AsyncIterator[str]:
    """A fresh, empty database on each engine the store supports."""
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
async def postgres_url(tmp_path) -> AsyncIterator[str]:
    async with fresh_database("postgresql", tmp_path) as url:
        yield url


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data", outbound_allow="127.0.0.1/32,::1/128", lease_seconds=5,
                    bootstrap_demo_key=False)


@dataclass
class LiveServer:
    base_url: str
    runtime: Runtime
    api_key: str
    account_id: int

    def client(self, key: str | None = None, **kw) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key or self.api_key}"}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10, **kw)

    async def wait_terminal(self, task_id: str, timeout: float = 10.0) -> dict:
        """Poll recordInfo, as a client would, until the task ends."""
        async with self.client() as client:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                body = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()
                if body["data"] and body["data"]["state"] in ("success", "fail"):
                    return body["data"]
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"task {task_id} did not finish: {body}")
                await asyncio.sleep(0.02)


@pytest.fixture
async def runtime(settings):
    """A started runtime without its own worker (tests build one), and an account with 1000 credits."""
    runtime = Runtime(settings.model_copy(update={"run_worker": False, "lease_seconds": 60}))
    await runtime.start()
    created = await runtime.store.accounts.create_key("worker", credits=1000)
    runtime.test_account = created.account_id
    try:
        yield runtime
    finally:
        await runtime.stop()


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


async def start_server(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task]:
    return await serve_app(create_app(settings), settings.port)


@pytest.fixture
async def live_server(settings) -> AsyncIterator[LiveServer]:
    port = free_port()
    settings = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime: Runtime = server.config.app.state.runtime
    created = await runtime.store.accounts.create_key("tester", credits=1000)
    try:
        yield LiveServer(settings.public_url, runtime, created.key, created.account_id)
    finally:
        server.should_exit = True
        await task


def png_bytes(width: int, height: int, colour=(200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
async def image_server() -> AsyncIterator[str]:
    """A loopback HTTP server with test images: /img/WxH.png, /text.png (not an image), /missing."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def image(request):
        width, height = (int(v) for v in request.path_params["size"].split("x"))
        return Response(png_bytes(width, height), media_type="image/png")

    async def text(_request):
        return PlainTextResponse("this is not an image")

    app = Starlette(routes=[Route("/img/{size}.png", image), Route("/text.png", text)])
    port = free_port()
    server, task = await serve_app(app, port, lifespan="off")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
