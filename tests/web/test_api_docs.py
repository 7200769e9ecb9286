"""The API docs (/docs, /redoc) in Chromium, against a live Safelight on loopback.

The pages must work on a host without internet: every request they make goes to the server itself
(any other is aborted and fails the test). Swagger UI shows every documented operation, "Authorize"
takes a key and "Try it out" then sends it; the key survives a reload (persistAuthorization). ReDoc
renders the reference, createTask's body offering one schema per model. No console errors
(tests/web/conftest.py fails a test that leaves any).
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import httpx
from playwright.async_api import Page, Route, expect

from safelight.api.openapi import component_name
from tests.helpers import LiveServer

METHODS = {"get", "put", "post", "delete", "patch"}


async def only_this_server(page: Page, server: LiveServer) -> list[str]:
    """Abort, and list, every request the page makes to another origin."""
    own = urlsplit(server.base_url).netloc
    elsewhere: list[str] = []

    async def guard(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != own:
            elsewhere.append(url)
            await route.abort()
        else:
            await route.continue_()

    await page.context.route("**/*", guard)
    return elsewhere


async def test_swagger_ui_works_offline_and_authorize_sends_the_key(web_server, page):
    elsewhere = await only_this_server(page, web_server)
    async with httpx.AsyncClient(base_url=web_server.base_url) as client:
        document = (await client.get("/openapi.json")).json()
    operation_count = sum(method in METHODS for item in document["paths"].values() for method in item)

    await page.goto(f"{web_server.base_url}/docs")
    await expect(page.locator(".opblock")).to_have_count(operation_count)

    await page.locator("button.authorize").first.click()
    dialog = page.locator(".dialog-ux")
    # Two kinds of key, each asked for on its own: user keys, and admin keys for /api/admin.
    await expect(dialog.get_by_text("adminKey (http, Bearer)")).to_be_visible()
    user_key = dialog.locator(".auth-container").filter(has_text="bearer (http, Bearer)")
    await user_key.locator("input").fill(web_server.api_key)
    await user_key.locator("button.authorize").click()  # its accessible name: "Apply credentials"
    await expect(user_key.get_by_text("Authorized")).to_be_visible()
    await dialog.locator("button.btn-done").first.click()

    async def balance_through_try_it_out() -> dict[str, object]:
        credit = page.locator("#operations-account-credit_api_v1_chat_credit_get")
        await credit.locator(".opblock-summary").click()
        await credit.get_by_role("button", name="Try it out").click()
        await credit.get_by_role("button", name="Execute").click()
        body = credit.locator(".responses-wrapper .live-responses-table .microlight").first
        await expect(body).to_contain_text('"code": 200')
        reply: dict[str, object] = json.loads(await body.inner_text())
        return reply

    assert await balance_through_try_it_out() == {"code": 200, "msg": "success", "data": 1000}
    await page.goto(f"{web_server.base_url}/docs")  # a new visit: persistAuthorization kept the key
    await expect(page.locator(".opblock")).to_have_count(operation_count)
    assert (await balance_through_try_it_out())["data"] == 1000
    assert elsewhere == [], f"/docs reached beyond this server: {elsewhere}"


async def test_redoc_works_offline_and_shows_a_schema_per_model(web_server, page):
    elsewhere = await only_this_server(page, web_server)
    await page.goto(f"{web_server.base_url}/redoc")
    create = page.locator("[data-section-id='tag/jobs/operation/create_task_api_v1_jobs_createTask_post']")
    await expect(create.get_by_role("heading", name="Create a generation task")).to_be_visible()
    # The body's discriminator: choosing a model shows that model's input schema.
    for model_id in ["z-image", "flux-2/pro-image-to-image", "ideogram/character"]:
        await create.get_by_role("combobox").first.select_option(model_id)
        await expect(create.get_by_role("row", name=re.compile(r"^expand input"))).to_contain_text(
            f"Input_{component_name(model_id)}")
    assert elsewhere == [], f"/redoc reached beyond this server: {elsewhere}"
