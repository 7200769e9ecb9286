"""The operator console (/admin) in Chromium, against a live Safelight on loopback.

Each test signs in with an admin key made in the store (as `safelight keys create --admin` does), works
the page as an operator would, and checks the effect where it matters: over HTTP on the kie routes
(a revoked key gets code 401, a capped key 433, maintenance 455), at a loopback callback receiver (a
redelivered callback arrives twice), and in the audit log. The pages must log no console errors
(tests/web/conftest.py fails a test that leaves any).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from playwright.async_api import Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from tests.helpers import LiveServer, free_port, serve_app
from tests.web.conftest import PHONE, NewPage

CREATE = "/api/v1/jobs/createTask"
# imagen4-fast costs 4 credits a task.
IMAGEN = {"model": "google/imagen4-fast", "input": {"prompt": "a lighthouse at dusk"}}
Z_IMAGE = {"model": "z-image", "input": {"prompt": "a red kite", "aspect_ratio": "1:1"}}


async def admin_key(server: LiveServer, name: str = "ops") -> str:
    created = await server.runtime.store.accounts.create_admin_key(name)
    return created.key


async def sign_in(page: Page, server: LiveServer, key: str | None = None) -> str:
    """Open /admin and sign in through the form; returns the admin key used."""
    key = key or await admin_key(server)
    await page.goto(f"{server.base_url}/admin")
    await page.get_by_role("textbox", name="Admin key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#console")).to_be_visible()
    return key


async def open_tab(page: Page, name: str) -> None:
    await page.get_by_role("tab", name=name).click()
    await expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")


async def confirm(page: Page, button: str) -> None:
    """Answer the console's confirmation dialog with its confirming button."""
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("button", name=button).click()
    await expect(dialog).to_be_hidden()


async def announced(page: Page, text: str) -> None:
    await expect(page.locator("#announce")).to_contain_text(text)


def expected_refusal(page_errors: list[str], status: int) -> None:
    """Chromium logs every refused fetch as a console error; take away the one refusal a test asked for."""
    refused = [error for error in page_errors if f"status of {status}" in error]
    assert len(refused) == 1, page_errors
    page_errors.remove(refused[0])


async def create_task(server: LiveServer, body: dict[str, Any] = IMAGEN, key: str | None = None) -> dict[str, Any]:
    """createTask over HTTP; returns kie's envelope."""
    async with server.client(key) as client:
        answer: dict[str, Any] = (await client.post(CREATE, json=body)).json()
        return answer


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 5.0) -> None:
    """Poll `check` until it holds (caches of keys and flags expire within 2 s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.1)


async def code_becomes(server: LiveServer, code: int, body: dict[str, Any] = IMAGEN, key: str | None = None) -> None:
    async def answered() -> bool:
        answer = await create_task(server, body, key)
        return bool(answer["code"] == code)

    await eventually(answered, f"createTask answering code {code}")


@contextlib.asynccontextmanager
async def loopback_app(*routes: Route) -> AsyncIterator[str]:
    """A small HTTP server on 127.0.0.1 (a callback receiver, an image host); yields its base URL."""
    port = free_port()
    server, task = await serve_app(Starlette(routes=list(routes)), port, lifespan="off")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_sign_in_shows_the_queue_and_cancels_a_waiting_task(idle_server: LiveServer, page: Page) -> None:
    # No worker on this server: the tasks wait.
    task_ids = [(await create_task(idle_server))["data"]["taskId"] for _ in range(2)]
    assert (await create_task(idle_server, Z_IMAGE))["code"] == 200

    key = await sign_in(page, idle_server)
    await expect(page.get_by_role("tab", name="Queue")).to_have_attribute("aria-selected", "true")
    await expect(page.locator('#queue-states [data-state="waiting"] dd')).to_have_text("3")
    await expect(page.locator('#queue-states [data-state="success"] dd')).to_have_text("0")
    models = page.locator("#queue-models tbody")
    await expect(models.locator("tr", has_text="google/imagen4-fast")).to_contain_text("2")
    await expect(models.locator("tr", has_text="z-image")).to_contain_text("1")
    await expect(page.locator("#queue-oldest")).to_contain_text(task_ids[0])
    await expect(page.locator("#queue-workers")).to_contain_text("No live workers")
    # The key is kept in this browser's local storage, under its own name.
    assert await page.evaluate("localStorage.getItem('safelight.admin.key')") == key

    # The queue refreshes by itself.
    await create_task(idle_server)
    await expect(page.locator('#queue-states [data-state="waiting"] dd')).to_have_text("4", timeout=8000)

    # Cancel one from the Tasks tab (after confirming); it fails with 499 and is refunded.
    await open_tab(page, "Tasks")
    row = page.locator(f'#tasks-table tr[data-task-id="{task_ids[1]}"]')
    await row.get_by_role("button", name="Cancel").click()
    await confirm(page, "Cancel task")
    await announced(page, f"Task {task_ids[1]} cancelled.")
    await expect(row).to_contain_text("fail")
    async with idle_server.client() as client:
        record = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_ids[1]})).json()["data"]
    assert (record["state"], record["failCode"]) == ("fail", "499")

    # Signed in again after a reload, out after signing out (and the key is gone from the browser).
    await page.reload()
    await expect(page.locator("#console")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("#sign-in")).to_be_visible()
    assert await page.evaluate("localStorage.getItem('safelight.admin.key')") is None


async def test_a_user_key_is_told_it_cannot_administer(web_server: LiveServer, page: Page,
                                                       page_errors: list[str]) -> None:
    await page.goto(f"{web_server.base_url}/admin")
    await page.get_by_role("textbox", name="Admin key").fill(web_server.api_key)
    await page.get_by_role("button", name="Sign in").click()
    problem = page.locator("#sign-in-error")
    await expect(problem).to_contain_text("That is a user key, not an admin key")
    await expect(problem).to_contain_text("user keys cannot administer the server")
    await expect(page.locator("#console")).to_be_hidden()
    assert await page.evaluate("localStorage.getItem('safelight.admin.key')") is None
    expected_refusal(page_errors, 403)


async def test_a_failed_task_shows_with_its_attempts_and_its_record_opens(web_server: LiveServer,
                                                                          page: Page) -> None:
    async def not_an_image(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("this is not an image")

    async with loopback_app(Route("/text.png", not_an_image)) as images:
        body = {"model": "flux-2/pro-image-to-image",
                "input": {"input_urls": [f"{images}/text.png"], "prompt": "edit it", "aspect_ratio": "1:1",
                          "resolution": "1K"}}
        created = await create_task(web_server, body)
        assert created["code"] == 200, created
        task_id = created["data"]["taskId"]
        record = await web_server.wait_terminal(task_id)
    assert record["state"] == "fail"

    await sign_in(page, web_server)
    # The worker of this server is live, with its models.
    workers = page.locator("#queue-workers tbody tr")
    await expect(workers).to_have_count(1)
    await expect(workers).to_contain_text("flux-2/pro-image-to-image")

    await open_tab(page, "Failures")
    row = page.locator(f'#failures-table tr[data-task-id="{task_id}"]')
    await expect(row).to_contain_text(record["failCode"])
    await expect(row).to_contain_text(record["failMsg"][:40])
    await row.get_by_role("button", name=f"Open task {task_id}").click()
    dialog = page.locator("#record-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#record-fail-msg")).to_have_text(record["failMsg"])
    await expect(dialog).to_contain_text("flux-2/pro-image-to-image")
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_be_hidden()


async def test_revoke_create_a_key_and_set_its_limits(web_server: LiveServer, page: Page,
                                                      page_errors: list[str]) -> None:
    victim = await web_server.runtime.store.accounts.create_key("victim", credits=100)
    assert (await create_task(web_server, key=victim.key))["code"] == 200
    await sign_in(page, web_server)
    await open_tab(page, "Accounts & keys")

    # Revoke: asks first, then the key gets kie's code 401 on createTask.
    victim_row = page.locator('#keys-table tr[data-key-name="victim"]')
    await victim_row.get_by_role("button", name="Revoke").click()
    await confirm(page, "Revoke key")
    await announced(page, "revoked")
    await expect(victim_row.locator("td.status")).to_contain_text("revoked")
    await code_becomes(web_server, 401, key=victim.key)

    # Create: the key shows once (it works with its credits: below).
    form = page.locator("#create-key")
    await form.get_by_label("Name").fill("newbie")
    await form.get_by_label("Credits").fill("50")
    await form.get_by_role("button", name="Create key").click()
    key_dialog = page.locator("#key-dialog")
    await expect(key_dialog).to_be_visible()
    new_key = await key_dialog.get_by_label("Key").input_value()
    assert new_key.startswith("sl_")
    await key_dialog.get_by_role("button", name="Done").click()
    await expect(key_dialog).to_be_hidden()
    await expect(page.locator('#accounts-table tr[data-account="newbie"] .balance')).to_have_text("50")

    # Limits: 5 credits an hour from 127.0.0.1 admits one 4-credit task and refuses the next with 433.
    newbie_row = page.locator('#keys-table tr[data-key-name="newbie"]')
    await newbie_row.get_by_role("button", name="Limits").click()
    limits = page.locator("#limits-dialog")
    await limits.get_by_label("Per rolling hour").fill("5")
    await limits.get_by_label("IP allow-list").fill("127.0.0.1")
    await limits.get_by_role("button", name="Save limits").click()
    await expect(limits).to_be_hidden()
    await expect(newbie_row.locator("td.caps")).to_have_text("hour ≤ 5")
    await expect(newbie_row.locator("td.ips")).to_contain_text("127.0.0.1")
    # (The key is used only now: a key's grant is cached for 2 s, so a cap, like a revocation, takes
    # up to 2 s to reach a key in use.)
    async with web_server.client(new_key) as client:
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 50
    assert (await create_task(web_server, key=new_key))["code"] == 200
    refused = await create_task(web_server, key=new_key)
    assert refused["code"] == 433, refused
    assert "at most 5 credits per hour" in refused["msg"], refused

    # A cap the API refuses leaves the dialog open with the API's message.
    await newbie_row.get_by_role("button", name="Limits").click()
    await limits.get_by_label("IP allow-list").fill("not-an-address")
    await limits.get_by_role("button", name="Save limits").click()
    await expect(limits.locator("#limits-error")).to_contain_text("not-an-address")
    expected_refusal(page_errors, 400)
    await limits.get_by_role("button", name="Cancel").click()
    await expect(limits).to_be_hidden()

    # Credits: the balance moves and the ledger shows the grant.
    await page.locator('#accounts-table tr[data-account="newbie"]').get_by_role("button", name="Add credits").click()
    credits = page.locator("#credits-dialog")
    await credits.get_by_label("Amount").fill("25")
    await credits.get_by_label("Note").fill("goodwill")
    await credits.get_by_role("button", name="Add credits").click()
    await expect(credits).to_be_hidden()
    await announced(page, "newbie: the balance is now")
    await expect(page.locator("#ledger-table")).to_contain_text("goodwill")

    # Every change is in the audit log, by this admin key.
    await open_tab(page, "Audit")
    audit = page.locator("#audit-table tbody")
    for action in ("key.revoke", "key.create", "key.limits", "credits.add"):
        await expect(audit.locator(f'tr[data-action="{action}"]').first).to_contain_text("admin key ops")


async def test_redeliver_a_callback(web_server: LiveServer, page: Page) -> None:
    received: list[dict[str, Any]] = []

    async def receive(request: Request) -> JSONResponse:
        received.append(json.loads(await request.body()))
        return JSONResponse({"ok": True})

    async with loopback_app(Route("/hook", receive, methods=["POST"])) as receiver:
        body = {**IMAGEN, "callBackUrl": f"{receiver}/hook"}
        task_id = (await create_task(web_server, body))["data"]["taskId"]

        async def delivered(count: int) -> bool:
            return len(received) >= count

        await eventually(lambda: delivered(1), "the first callback")
        await sign_in(page, web_server)
        await open_tab(page, "Callbacks")
        # The default view holds what needs attention: this one was delivered.
        await expect(page.locator("#callbacks-table tbody")).to_contain_text("No callback is pending or given up")
        await page.locator("#callbacks-filter").get_by_label("Status").select_option("delivered")
        await page.locator("#callbacks-filter").get_by_role("button", name="Show").click()
        row = page.locator(f'#callbacks-table tr[data-task-id="{task_id}"]')
        await expect(row).to_contain_text("delivered")
        await row.locator("summary").click()
        await expect(row).to_contain_text("HTTP 200")
        await row.get_by_role("button", name="Redeliver").click()
        await announced(page, f"The callback of task {task_id} is queued again")
        await eventually(lambda: delivered(2), "the redelivered callback")
    assert [callback["data"]["taskId"] for callback in received] == [task_id, task_id]
    await page.locator("#callbacks-filter").get_by_role("button", name="Show").click()
    await expect(page.locator(f'#callbacks-table tr[data-task-id="{task_id}"]')).to_have_count(2)

    await open_tab(page, "Audit")
    await expect(page.locator('#audit-table tr[data-action="callback.redeliver"]')).to_contain_text(task_id)


async def test_maintenance_and_models_from_the_server_tab(web_server: LiveServer, page: Page) -> None:
    await sign_in(page, web_server)
    await open_tab(page, "Server")
    await expect(page.locator("#banner-sandbox")).to_be_visible()
    await expect(page.locator('#models-table tr[data-model="z-image"]')).to_contain_text("sandbox")

    switch = page.get_by_role("switch", name="Maintenance mode")
    # Declining the confirmation changes nothing.
    await switch.click()
    await page.locator("#confirm-dialog").get_by_role("button", name="Cancel").click()
    await expect(switch).not_to_be_checked()
    await switch.click()
    await confirm(page, "Turn maintenance on")
    await expect(page.locator("#banner-maintenance")).to_be_visible()
    await expect(switch).to_be_checked()
    await code_becomes(web_server, 455)
    await switch.click()  # off needs no confirmation
    await expect(page.locator("#banner-maintenance")).to_be_hidden()
    await code_becomes(web_server, 200)

    model_switch = page.get_by_role("switch", name="z-image enabled")
    await model_switch.click()
    await confirm(page, "Disable model")
    await expect(page.get_by_role("switch", name="z-image disabled")).not_to_be_checked()
    await code_becomes(web_server, 505, Z_IMAGE)

    await open_tab(page, "Audit")
    audit = page.locator("#audit-table tbody")
    for action in ("maintenance.on", "maintenance.off", "model.disable"):
        await expect(audit.locator(f'tr[data-action="{action}"]')).to_have_count(1)


async def test_phone_sized_and_keyboard_only(web_server: LiveServer, new_page: NewPage) -> None:
    key = await admin_key(web_server)
    page = await new_page(**PHONE)
    await page.goto(f"{web_server.base_url}/admin")
    # The key field has the focus; Enter signs in.
    await expect(page.get_by_role("textbox", name="Admin key")).to_be_focused()
    await page.keyboard.type(key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#console")).to_be_visible()
    # Arrow keys move between the tabs.
    await page.get_by_role("tab", name="Queue").focus()
    await page.keyboard.press("ArrowRight")
    await expect(page.get_by_role("tab", name="Failures")).to_be_focused()
    await expect(page.locator("#panel-failures")).to_be_visible()
    await page.keyboard.press("End")
    await expect(page.get_by_role("tab", name="Audit")).to_have_attribute("aria-selected", "true")
    # Nothing is wider than the phone: wide tables scroll inside their own box.
    for tab in ("Queue", "Accounts & keys", "Server"):
        await open_tab(page, tab)
        await page.wait_for_load_state("networkidle")
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), tab
