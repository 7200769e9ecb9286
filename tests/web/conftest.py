"""Browser tests: Playwright (async API) drives Debian's Chromium through the pages of a live Safelight
on loopback.

Playwright's own browser download is not used (nor reachable here): the browser is the system's
Chromium, /usr/bin/chromium (`make test` installs it; SAFELIGHT_TEST_CHROMIUM names another). Every
test in tests/web/ runs in one session-wide event loop, so the whole directory shares one browser
launch; each test gets fresh browser contexts (empty localStorage), so tests never see each other's
keys or history.

Fixtures:
- `browser`: the shared Chromium.
- `web_server`: a whole Safelight (API, worker, delivery, retention) with an account of 1000 credits;
  every model on the sandbox. `idle_server`: the same without a worker, so its tasks stay waiting.
  Both are `tests.helpers.LiveServer`s. Request the server before the page (`async def test_x(web_server,
  page)`), so the page closes first and its open requests never hit a stopped server.
- `new_page(**context_options)`: a page in a fresh context (viewport, is_mobile...), recording its errors.
  `page`: one such page at a desktop size.
- `page_errors`: what the pages logged with console.error, and the exceptions they left uncaught. Each
  test fails at teardown when it is not empty: the pages must raise no console errors.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Error, Page, async_playwright, expect

from safelight.config import Settings
from safelight.runtime import SERVE_ROLES, Role, Runtime
from tests.helpers import LiveServer, free_port, start_server

CHROMIUM = os.environ.get("SAFELIGHT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_INSTALLED = Path(CHROMIUM).exists()
WEB_TESTS = Path(__file__).resolve().parent
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
# Actions and assertions wait at most this long (the sandbox answers in well under a second).
TIMEOUT_MS = 10_000
expect.set_options(timeout=TIMEOUT_MS)

NewPage = Callable[..., Awaitable[Page]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run every test of tests/web/ in the session's event loop, the one the shared browser lives in."""
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if pytest_asyncio.is_async_test(item) and WEB_TESTS in Path(str(item.path)).resolve().parents:
            item.add_marker(session_loop, append=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM_INSTALLED:
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium, or `make test`)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def live_safelight(settings: Settings, roles: Iterable[Role] = SERVE_ROLES,
                         credits: int = 1000) -> AsyncIterator[LiveServer]:
    """A Safelight on a free loopback port running `roles`, with an account of `credits` credits."""
    port = free_port()
    settings = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings, roles)
    app = server.config.app
    runtime: Runtime = app.state.runtime
    created = await runtime.store.accounts.create_key("browser", credits=credits)
    try:
        yield LiveServer(settings.public_url, runtime, created.key, created.account_id, app)
    finally:
        server.should_exit = True
        await task


@pytest_asyncio.fixture(loop_scope="session")
async def web_server(settings: Settings) -> AsyncIterator[LiveServer]:
    async with live_safelight(settings) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def idle_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """No worker role: createTask accepts tasks and they wait (cancellable) for a worker that never comes."""
    async with live_safelight(settings, roles=[Role.DELIVERY, Role.RETENTION]) as server:
        yield server


@pytest.fixture
def page_errors() -> list[str]:
    return []


@pytest_asyncio.fixture(loop_scope="session")
async def new_page(browser: Browser, page_errors: list[str]) -> AsyncIterator[NewPage]:
    contexts: list[BrowserContext] = []

    async def open_page(**context_options: Any) -> Page:
        options = {"viewport": DESKTOP, **context_options}
        context = await browser.new_context(**options)
        contexts.append(context)
        context.set_default_timeout(TIMEOUT_MS)
        page = await context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                location = message.location
                page_errors.append(f"console.error at {location.get('url')}:{location.get('lineNumber')}: "
                                   f"{message.text}")

        def on_page_error(error: Error) -> None:
            page_errors.append(f"uncaught {error.name}: {error.message}\n{error.stack}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        return page

    yield open_page
    for context in contexts:
        await context.close()
    assert not page_errors, "the pages logged errors:\n" + "\n".join(page_errors)


@pytest_asyncio.fixture(loop_scope="session")
async def page(new_page: NewPage) -> Page:
    return await new_page()
