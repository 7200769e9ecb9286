"""Shared fixtures: real SQLite files, a real PostgreSQL database, a real server on loopback.

Helpers (free_port, serve_app, png_bytes, ...) live in tests/helpers.py; import them from there.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from safelight.config import Settings
from safelight.runtime import Role, Runtime
from tests.helpers import LiveServer, free_port, fresh_database, png_bytes, serve_app, start_server

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


@pytest.fixture
async def runtime(settings) -> AsyncIterator[Runtime]:
    """A started runtime without a worker (tests build one), and an account with 1000 credits."""
    runtime = await Runtime.open(settings.model_copy(update={"lease_seconds": 60}),
                                 roles=[Role.DELIVERY, Role.RETENTION])
    created = await runtime.store.accounts.create_key("worker", credits=1000)
    runtime.test_account = created.account_id  # type: ignore[attr-defined]
    try:
        yield runtime
    finally:
        await runtime.close()


@pytest.fixture
async def live_server(settings) -> AsyncIterator[LiveServer]:
    port = free_port()
    settings = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    app = server.config.app
    runtime: Runtime = app.state.runtime
    created = await runtime.store.accounts.create_key("tester", credits=1000)
    try:
        yield LiveServer(settings.public_url, runtime, created.key, created.account_id, app)
    finally:
        server.should_exit = True
        await task


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
