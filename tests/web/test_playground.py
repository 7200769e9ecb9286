"""The playground (/) in a real Chromium, against a live server whose models all run on the sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from playwright.async_api import Page, expect

from safelight.runtime import Role
from tests.helpers import LiveServer
from tests.web.conftest import PHONE, NewPage, live_safelight

TASK_ID = re.compile(r"^[0-9a-f]{32}$")
# Records each value the progress bar shows, in order (installed before a task is created).
WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  const record = () => {
    const bar = document.querySelector('#task-progress');
    if (bar && window.progressSeen.at(-1) !== bar.value) window.progressSeen.push(bar.value);
  };
  new MutationObserver(record).observe(document.querySelector('#task-view'),
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""
IMAGES_LOADED = """() => {
  const images = [...document.querySelectorAll('.result-image')];
  return images.length > 0 && images.every((image) => image.complete && image.naturalWidth > 0);
}"""


def reference_png(tmp_path: Path, width: int = 640, height: int = 480) -> Path:
    path = tmp_path / f"reference-{width}x{height}.png"
    Image.new("RGB", (width, height), (30, 110, 190)).save(path)
    return path


async def open_playground(page: Page, server: LiveServer, *, key: bool = True) -> None:
    await page.goto(server.base_url + "/")
    await expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
    if key:
        await save_key(page, server.api_key)


async def save_key(page: Page, key: str) -> None:
    await page.get_by_label("API key", exact=True).fill(key)
    await page.get_by_role("button", name="Save key").click()
    await expect(page.locator("#key-saved")).to_be_visible()


async def choose_model(page: Page, model: str) -> None:
    await page.get_by_label("Model", exact=True).select_option(model)
    await expect(page.locator("#model-select")).to_have_value(model)


async def upload_reference(page: Page, field: str, path: Path) -> str:
    """Uploads through the field's file picker; the URL the server gave back, as the form shows it."""
    picker = page.locator(f"[data-field={field}] input[type=file]")
    await picker.set_input_files(path)
    item = page.locator(f"[data-field={field}] .url-item")
    await expect(item).to_have_count(1)
    await expect(page.locator(f"[data-field={field}] .upload-status")).to_contain_text("Uploaded")
    return await item.locator("a").get_attribute("href") or ""


async def task_id_shown(page: Page) -> str:
    await expect(page.locator(".task-id")).to_have_text(TASK_ID)
    return await page.locator(".task-id").inner_text()


def unsigned(url: str) -> str:
    return url.split("?", 1)[0]


async def record(server: LiveServer, task_id: str) -> dict[str, Any]:
    async with server.client() as client:
        body = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()
    assert body["code"] == 200, body
    data: dict[str, Any] = body["data"]
    return data


# Each first model: the form fields to set (label -> option or text) and what its result must be.
FIRST_MODELS = {
    "google/imagen4-fast": {"selects": {"Aspect Ratio": "9:16", "Num Images": "2"}, "images": 2, "size": (768, 1344)},
    "z-image": {"selects": {"Aspect Ratio": "16:9"}, "images": 1, "size": (1344, 768)},
    # auto follows the uploaded 640x480 reference: 4:3 at the 1K bucket.
    "flux-2/pro-image-to-image": {"selects": {"Aspect Ratio": "auto"}, "images": 1, "size": (1152, 896),
                                  "reference": "input_urls"},
    "ideogram/character": {"selects": {"Image Size": "landscape_16_9"}, "images": 1, "size": (1024, 576),
                           "reference": "reference_image_urls"},
}


@pytest.mark.parametrize("model", list(FIRST_MODELS))
async def test_generates_with_each_first_model(web_server, page, tmp_path, model):
    case = FIRST_MODELS[model]
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await open_playground(page, web_server)
    await choose_model(page, model)
    await page.get_by_label("Prompt", exact=True).fill(f"a lighthouse for {model}")
    for label, option in case["selects"].items():
        await page.get_by_label(label, exact=True).select_option(option)
    uploaded = None
    if "reference" in case:
        uploaded = await upload_reference(page, case["reference"], reference_png(tmp_path))
        assert uploaded.startswith(web_server.base_url + "/files/uploads/")
    await page.evaluate(WATCH_PROGRESS)
    await page.get_by_role("button", name="Generate").click()

    task_id = await task_id_shown(page)
    await expect(page.locator("#task-state")).to_have_text("success")
    await expect(page.locator("#task-progress")).to_have_js_property("value", 100)
    await expect(page.locator("#progress-value")).to_have_text("100 %")
    seen = await page.evaluate("window.progressSeen")
    assert seen == sorted(seen) and seen[-1] == 100, seen

    # What the page shows is the server's record: the images, their seeds, the request it sent.
    data = await record(web_server, task_id)
    assert data["state"] == "success" and data["model"] == model
    sent = json.loads(data["param"])["input"]
    assert sent["prompt"] == f"a lighthouse for {model}"
    if uploaded:
        assert sent[case["reference"]] == [uploaded]
    result = json.loads(data["resultJson"])
    await expect(page.locator(".result-image")).to_have_count(case["images"])
    assert len(result["resultUrls"]) == case["images"]
    # Links are signed when a record is read, so two reads differ in their signature, not their file.
    shown = await page.locator(".result-image").evaluate_all("images => images.map(i => i.src)")
    assert [unsigned(url) for url in shown] == [unsigned(url) for url in result["resultUrls"]]
    assert await page.locator(".seed").all_inner_texts() == [f"seed {seed}" for seed in result["seeds"]]
    await page.wait_for_function(IMAGES_LOADED)
    sizes = await page.locator(".result-image").evaluate_all(
        "images => images.map(i => [i.naturalWidth, i.naturalHeight])")
    assert sizes == [list(case["size"])] * case["images"]

    # The state was followed on the event stream, not by polling.
    assert any("/api/v1/jobs/stream?taskId=" + task_id in url for url in requests)
    assert not any("/api/v1/jobs/recordInfo" in url for url in requests)

    # Open a result full size, then close it with the keyboard.
    await page.locator(".result-open").first.click()
    viewer = page.locator("#viewer")
    await expect(viewer).to_be_visible()
    await page.wait_for_function("() => document.querySelector('#viewer-image').naturalWidth > 0")
    assert await page.locator("#viewer-download").get_attribute("href") == shown[0]
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()

    # Download the first image.
    async with page.expect_download() as download_info:
        await page.locator(".result a[download]").first.click()
    download = await download_info.value
    assert download.suggested_filename.startswith(task_id)
    saved = Path(await download.path())
    with Image.open(saved) as image:
        assert image.size == case["size"]


async def test_a_task_that_waits_can_be_cancelled(idle_server, page):
    await open_playground(page, idle_server)
    await choose_model(page, "google/imagen4-fast")
    await page.get_by_label("Prompt", exact=True).fill("never drawn")
    await page.get_by_role("button", name="Generate").click()
    task_id = await task_id_shown(page)
    await expect(page.locator("#task-state")).to_have_text("waiting")  # no worker runs on this server
    await expect(page.locator(".facts")).to_contain_text("Queue position")

    await page.get_by_role("button", name="Cancel task").click()
    await expect(page.locator("#task-state")).to_have_text("fail")
    await expect(page.locator("#task-fail")).to_contain_text("failCode 499")
    await expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    data = await record(idle_server, task_id)
    assert data["state"] == "fail" and data["failCode"] == "499"
    async with idle_server.client() as client:
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 1000  # refunded
    await expect(page.locator(f"[data-task='{task_id}'] .badge")).to_have_text("fail")  # history follows


async def test_a_failed_task_shows_its_fail_code_and_message(web_server, page, tmp_path):
    await open_playground(page, web_server)
    await choose_model(page, "flux-2/pro-image-to-image")
    await page.get_by_label("Prompt", exact=True).fill("edit a drawing")
    # A file that only looks like an image: the upload takes any file, the worker refuses it.
    notes = tmp_path / "notes.png"
    notes.write_text("these are notes, not pixels")
    await upload_reference(page, "input_urls", notes)
    await page.get_by_role("button", name="Generate").click()
    task_id = await task_id_shown(page)
    await expect(page.locator("#task-state")).to_have_text("fail")
    data = await record(web_server, task_id)
    assert data["failCode"] == "400" and "input.input_urls[0]" in data["failMsg"]
    await expect(page.locator("#task-fail")).to_have_text(f"failCode 400: {data['failMsg']}")
    await expect(page.locator(".gallery")).to_have_count(0)


async def test_the_stream_falling_back_to_polling(web_server, page):
    # A proxy that does not pass server-sent events through: the page asks recordInfo instead.
    await page.route("**/api/v1/jobs/stream?*", lambda route: route.fulfill(
        status=200, content_type="text/html", body="<html>streaming is not allowed here</html>"))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    await open_playground(page, web_server)
    await choose_model(page, "google/imagen4-fast")
    await page.get_by_label("Prompt", exact=True).fill("polled")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#task-state")).to_have_text("success")
    await expect(page.locator("#progress-value")).to_have_text("100 %")
    await page.wait_for_function(IMAGES_LOADED)
    assert any("/api/v1/jobs/recordInfo" in url for url in requests)


async def test_the_code_snippets_follow_the_form_and_work(web_server, page, tmp_path):
    await open_playground(page, web_server)
    await choose_model(page, "z-image")
    await page.get_by_label("Prompt", exact=True).fill("a lighthouse at dusk")
    curl = page.locator("#snippet-curl")
    await expect(curl).to_contain_text('"prompt": "a lighthouse at dusk"')
    await expect(curl).to_contain_text('"aspect_ratio": "1:1"')
    await page.get_by_label("Aspect Ratio", exact=True).select_option("16:9")
    await expect(curl).to_contain_text('"aspect_ratio": "16:9"')
    switch = page.get_by_role("switch", name="Nsfw Checker")
    await switch.focus()
    await page.keyboard.press("Space")
    await expect(curl).to_contain_text('"nsfw_checker": true')
    assert web_server.api_key not in await curl.inner_text()

    await page.get_by_role("tab", name="Python SDK").click()
    python = page.locator("#snippet-python")
    await expect(python).to_be_visible()
    await expect(python).to_contain_text('client.run("z-image", {')
    await expect(python).to_contain_text('"nsfw_checker": True')
    await expect(curl).to_be_hidden()

    # The snippets are real code: each creates the task the form describes.
    environment = {**os.environ, "SAFELIGHT_API_KEY": web_server.api_key}
    shell = await asyncio.create_subprocess_exec("bash", "-c", await curl.inner_text(), env=environment,
                                                 stdout=asyncio.subprocess.PIPE)
    out, _ = await shell.communicate()
    created = json.loads(out)
    assert created["code"] == 200, created
    done = await web_server.wait_terminal(created["data"]["taskId"])
    assert json.loads(done["param"])["input"] == {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9",
                                                  "nsfw_checker": True}
    script = tmp_path / "snippet.py"
    script.write_text(await python.inner_text())
    sdk = await asyncio.create_subprocess_exec(sys.executable, str(script), env=environment, cwd=tmp_path,
                                               stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await sdk.communicate()
    assert sdk.returncode == 0, err.decode()
    assert out.decode().startswith("success ")
    assert [path.suffix for path in (tmp_path / "out").iterdir()] == [".png"]


async def test_models_show_without_a_key_and_the_key_is_kept(web_server, page):
    await open_playground(page, web_server, key=False)
    assert await page.locator("#model-select option").count() >= 4
    await expect(page.locator("#history")).to_contain_text("Save your API key")
    await expect(page.locator("#key-note")).to_contain_text("local storage")
    await page.get_by_label("Prompt", exact=True).fill("no key yet")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.locator("#form-status")).to_contain_text("Save your API key")
    await expect(page.get_by_label("API key", exact=True)).to_be_focused()

    await save_key(page, web_server.api_key)
    await expect(page.locator("#key-prefix")).to_have_text(web_server.api_key[:8] + "…")
    await expect(page.locator("#key-credits")).to_have_text("1000 credits")
    assert await page.evaluate("localStorage.getItem('safelight.user.key')") == web_server.api_key
    await page.reload()
    await expect(page.locator("#key-saved")).to_be_visible()
    await expect(page.get_by_label("API key", exact=True)).to_be_hidden()
    await expect(page.locator("#history")).to_contain_text("No tasks from this browser yet")

    await page.get_by_role("button", name="Forget key").click()
    await expect(page.get_by_label("API key", exact=True)).to_be_focused()
    assert await page.evaluate("localStorage.getItem('safelight.user.key')") is None
    await page.reload()
    await expect(page.get_by_label("API key", exact=True)).to_be_visible()


async def test_history_lists_this_browsers_tasks_and_reopens_one(web_server, page):
    async with web_server.client() as client:  # a task of the same account from elsewhere
        other = (await client.post("/api/v1/jobs/createTask", json={
            "model": "z-image", "input": {"prompt": "from a script", "aspect_ratio": "1:1"}})).json()["data"]["taskId"]
    await open_playground(page, web_server)
    await choose_model(page, "google/imagen4-fast")
    await page.get_by_label("Prompt", exact=True).fill("the first")
    await page.get_by_role("button", name="Generate").click()
    first = await task_id_shown(page)
    await expect(page.locator("#task-state")).to_have_text("success")
    # Enter in a one-line field submits the form.
    await page.get_by_label("Prompt", exact=True).fill("the second")
    seed = page.get_by_label("Seed", exact=True)
    await seed.fill("42")
    await seed.press("Enter")
    await expect(page.locator(".task-id")).not_to_have_text(first)
    second = await task_id_shown(page)
    await expect(page.locator("#task-state")).to_have_text("success")
    await expect(page.locator(".seed")).to_have_text(["seed 42"])

    items = page.locator(".history-item")
    await expect(items).to_have_count(2)
    assert [await item.get_attribute("data-task") for item in await items.all()] == [second, first]
    await page.get_by_role("switch", name="All of this key's tasks").check()
    await expect(items).to_have_count(3)
    assert await items.nth(2).get_attribute("data-task") == other

    await page.locator(f".history-item[data-task='{first}']").click()
    await expect(page.locator(".task-id")).to_have_text(first)
    await expect(page.locator("#task-state")).to_have_text("success")
    await page.wait_for_function(IMAGES_LOADED)
    await page.get_by_role("button", name="Reuse settings").click()
    await expect(page.get_by_label("Prompt", exact=True)).to_have_value("the first")


async def test_every_models_form_is_labelled(web_server, page):
    await open_playground(page, web_server, key=False)
    models = await page.locator("#model-select option").evaluate_all("options => options.map(o => o.value)")
    assert "ideogram/character-remix" in models
    for model in models:
        await choose_model(page, model)
        unlabelled = await page.evaluate("""() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((control) => !(control.labels?.length || control.getAttribute('aria-label')
                                   || control.getAttribute('aria-labelledby') || control.textContent.trim()))
            .map((control) => control.outerHTML)""")
        assert unlabelled == [], (model, unlabelled)
        required = await page.locator("#fields [required]").evaluate_all("nodes => nodes.map(n => n.name)")
        schema_required = await page.evaluate(
            "(id) => fetch('/api/v1/models').then(r => r.json()).then(b => b.data.find(m => m.id === id))", model)
        url_lists = {name for name, prop in schema_required["inputSchema"]["properties"].items()
                     if prop.get("type") == "array"}
        assert set(required) == set(schema_required["inputSchema"].get("required", [])) - url_lists, model


async def test_the_sandbox_notice_follows_the_route(web_server, page, settings, tmp_path):
    await open_playground(page, web_server, key=False)
    notice = page.locator("#sandbox-notice")
    for model in FIRST_MODELS:
        await choose_model(page, model)
        await expect(notice).to_be_visible()
        await expect(notice).to_contain_text("previews")
        await expect(notice).to_contain_text("not generations")

    routing = tmp_path / "routing.toml"
    routing.write_text(textwrap.dedent("""
        [backends.bfl]
        type = "bfl"
        api_key_env = "BFL_API_KEY"

        [models."flux-2/pro-image-to-image"]
        route = ["bfl", "sandbox"]
    """))
    routed_settings = settings.model_copy(update={"routing_file": str(routing), "data_dir": tmp_path / "routed"})
    async with live_safelight(routed_settings, roles=[Role.DELIVERY]) as routed:
        await page.goto(routed.base_url + "/#model=" + "flux-2/pro-image-to-image")
        await expect(page.locator("#model-select")).to_have_value("flux-2/pro-image-to-image")
        await expect(page.get_by_label("Prompt", exact=True)).to_be_visible()
        await expect(notice).to_have_count(0)
        await choose_model(page, "z-image")
        await expect(notice).to_be_visible()
        await page.goto("about:blank")  # leave before the server stops


async def test_a_phone_sized_screen_by_keyboard(web_server, new_page: NewPage):
    page = await new_page(**PHONE)
    await open_playground(page, web_server)
    await choose_model(page, "z-image")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    prompt = page.get_by_label("Prompt", exact=True)
    await prompt.fill("small screen")
    await prompt.press("Control+Enter")
    await expect(page.locator("#task-state")).to_have_text("success")
    await page.wait_for_function(IMAGES_LOADED)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    # From the top, the first Tab reaches the skip link, and the next one after it the form's first field.
    await page.reload()
    await expect(prompt).to_be_visible()
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to the form")).to_be_focused()
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.closest('#fields') !== null")
