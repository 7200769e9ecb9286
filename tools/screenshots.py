"""Screenshots of the pages for the README and docs/, taken in Debian's Chromium.

    .venv/bin/python -m tools.screenshots            # every page
    .venv/bin/python -m tools.screenshots playground # only the named ones

It starts a Safelight with every model on the sandbox (a temporary data directory, a free loopback
port), makes an account with a key, and lets each shot drive the pages as a person would. Adding a
page is one async function `shot(browser, server, docs)` in SHOTS. Run by hand after changing a
page; the PNGs are committed. A developer tool: it is not part of the wheel.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect

from safelight.api.app import create_app
from safelight.config import Settings
from safelight.runtime import Runtime
from safelight.store.accounts import KeyLimits

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
DESKTOP = {"viewport": {"width": 1280, "height": 900}}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@dataclass
class Server:
    base_url: str
    runtime: Runtime
    api_key: str


Shot = Callable[[Browser, Server, Path], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def sandbox_server() -> AsyncIterator[Server]:
    with tempfile.TemporaryDirectory(prefix="safelight-shots-") as data_dir:
        port = free_port()
        settings = Settings(data_dir=Path(data_dir), port=port, public_url=f"http://127.0.0.1:{port}",
                            bootstrap_demo_key=False, outbound_allow="127.0.0.1/32")
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                               log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn exposes no started event
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        runtime: Runtime = server.config.app.state.runtime
        created = await runtime.store.accounts.create_key("demo", credits=1000)
        try:
            yield Server(settings.public_url, runtime, created.key)
        finally:
            server.should_exit = True
            await task


async def generate(page: Page, model: str, prompt: str, **selects: str) -> None:
    await page.get_by_label("Model", exact=True).select_option(model)
    await page.get_by_label("Prompt", exact=True).fill(prompt)
    for label, option in selects.items():
        await page.get_by_label(label.replace("_", " "), exact=True).select_option(option)
    shown = page.locator(".task-id")
    before = await shown.text_content() if await shown.count() else None
    await page.get_by_role("button", name="Generate").click()
    # The panel still shows the previous task until the new one opens: wait for the new one first.
    await page.wait_for_function("(before) => document.querySelector('.task-id')?.textContent !== before", arg=before)
    await expect(page.locator("#task-state")).to_have_text("success", timeout=20_000)
    await page.wait_for_function("""() => {
        const images = [...document.querySelectorAll('.result-image')];
        return images.length > 0 && images.every((image) => image.complete && image.naturalWidth > 0);
    }""")


async def playground(browser: Browser, server: Server, docs: Path) -> None:
    """docs/playground.png (desktop, after two generations) and docs/playground-phone.png (a result)."""
    context = await browser.new_context(**DESKTOP)
    page = await context.new_page()
    await page.goto(server.base_url + "/")
    await page.get_by_label("API key", exact=True).fill(server.api_key)
    await page.get_by_role("button", name="Save key").click()
    await generate(page, "z-image", "a lighthouse at dusk, long exposure", Aspect_Ratio="16:9")
    await generate(page, "google/imagen4-fast", "a red fox asleep in fresh snow", Aspect_Ratio="1:1",
                   Num_Images="2")
    await page.screenshot(path=docs / "playground.png", full_page=True)
    await context.close()

    context = await browser.new_context(**PHONE)
    page = await context.new_page()
    await page.goto(server.base_url + "/")
    await page.get_by_label("API key", exact=True).fill(server.api_key)
    await page.get_by_role("button", name="Save key").click()
    await generate(page, "z-image", "a lighthouse at dusk, long exposure", Aspect_Ratio="1:1")
    await page.evaluate("window.scrollTo(0, document.querySelector('.task-panel').offsetTop - 12)")
    await page.screenshot(path=docs / "playground-phone.png")
    await context.close()


async def console(browser: Browser, server: Server, docs: Path) -> None:
    """docs/console.png (the queue) and docs/console-keys.png (accounts and keys), signed in with an admin key
    after some traffic: tasks on two accounts, one failing on an input that is not an image, one whose
    callback receiver is down, a key with caps."""
    import httpx

    store = server.runtime.store
    admin = await store.accounts.create_admin_key("ops")
    studio = await store.accounts.create_key("studio", credits=400)
    await store.accounts.set_key_limits(studio.key_id, KeyLimits(hour=100, day=300), ["203.0.113.0/24"],
                                        actor="cli (ops@studio)")
    bodies = [
        (server.api_key, {"model": "z-image", "input": {"prompt": "a lighthouse", "aspect_ratio": "16:9"}}),
        (server.api_key, {"model": "google/imagen4-fast", "input": {"prompt": "a red fox", "num_images": "2"}}),
        # Nothing listens on port 9 (discard): the input cannot be fetched, the callback waits to be retried.
        (server.api_key, {"model": "flux-2/pro-image-to-image",
                          "input": {"prompt": "make it snow", "input_urls": ["http://127.0.0.1:9/photo.png"],
                                    "aspect_ratio": "1:1", "resolution": "1K"}}),
        (server.api_key, {"model": "z-image", "input": {"prompt": "a kite", "aspect_ratio": "1:1"},
                          "callBackUrl": "http://127.0.0.1:9/hook"}),
    ]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        for key, body in bodies:
            answer = (await client.post("/api/v1/jobs/createTask", json=body,
                                        headers={"Authorization": f"Bearer {key}"})).json()
            assert answer["code"] == 200, answer

    context = await browser.new_context(**DESKTOP)
    page = await context.new_page()
    await page.goto(server.base_url + "/admin")
    await page.get_by_role("textbox", name="Admin key").fill(admin.key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator('#queue-states [data-state="fail"] dd')).to_have_text("1")
    await expect(page.locator("#queue-callbacks")).to_contain_text("1 pending")
    await expect(page.locator("#queue-workers tbody tr")).to_have_count(1)
    await page.screenshot(path=docs / "console.png", full_page=True)
    await page.get_by_role("tab", name="Accounts & keys").click()
    await expect(page.locator('#keys-table tr[data-key-name="studio"] td.caps')).to_contain_text("hour ≤ 100")
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=docs / "console-keys.png", full_page=True)
    await context.close()


SHOTS: dict[str, Shot] = {"playground": playground, "console": console}


async def main(names: list[str]) -> None:
    unknown = set(names) - set(SHOTS)
    if unknown:
        raise SystemExit(f"unknown shot {', '.join(sorted(unknown))}; known: {', '.join(SHOTS)}")
    async with sandbox_server() as server, async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for name in names or list(SHOTS):
                await SHOTS[name](browser, server, DOCS)
                print(f"{name}: saved in {DOCS}")
        finally:
            await browser.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
