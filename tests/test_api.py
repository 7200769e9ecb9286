"""The kie wire contract end to end: a real server on loopback, the sandbox backend, real result files."""

import asyncio
import io
import json
import re

import httpx
import pytest
from PIL import Image

from safelight.storage import LocalStorage, StorageKeyError

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"


async def create(client, body):
    return (await client.post(CREATE, json=body)).json()


async def test_create_and_poll_z_image_to_success_with_a_real_png(live_server, image_server):
    async with live_server.client() as client:
        # A loopback receiver: createTask resolves callBackUrl, and example.com does not resolve offline.
        body = {"model": "z-image", "callBackUrl": f"{image_server}/cb",
                "input": {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9"}}
        response = await client.post(CREATE, json=body)
        assert response.status_code == 200
        created = response.json()
        assert created["code"] == 200 and created["msg"] == "success"
        task_id = created["data"]["taskId"]
        assert re.fullmatch(r"[0-9a-f]{32}", task_id)

        record = await live_server.wait_terminal(task_id)
        assert record["state"] == "success"
        assert json.loads(record["param"]) == body  # the whole original request, as a JSON string
        assert record["failCode"] == "" and record["failMsg"] == ""
        assert record["creditsConsumed"] == 1
        assert isinstance(record["costTime"], int) and record["costTime"] >= 0
        assert record["createTime"] <= record["completeTime"] and record["updateTime"] >= record["createTime"]
        result = json.loads(record["resultJson"])
        assert len(result["resultUrls"]) == 1 and len(result["seeds"]) == 1

        image_response = await client.get(result["resultUrls"][0])
        assert image_response.status_code == 200
        assert image_response.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(image_response.content)).size == (1344, 768)


async def test_imagen_num_images_seed_and_charges(live_server):
    async with live_server.client() as client:
        created = await create(client, {"model": "google/imagen4-fast",
                                        "input": {"prompt": "two foxes", "num_images": "3", "seed": 7,
                                                  "aspect_ratio": "3:4"}})
        record = await live_server.wait_terminal(created["data"]["taskId"])
        result = json.loads(record["resultJson"])
        assert result["seeds"] == [7, 8, 9]
        assert record["creditsConsumed"] == 12
        sizes = [Image.open(io.BytesIO((await client.get(url)).content)).size for url in result["resultUrls"]]
        assert sizes == [(896, 1152)] * 3
        assert (await client.get("/api/v1/chat/credit")).json() == {"code": 200, "msg": "success", "data": 988}


async def test_same_seed_gives_the_same_sandbox_image(live_server):
    async with live_server.client() as client:
        bodies = []
        for _ in range(2):
            created = await create(client, {"model": "google/imagen4-fast", "input": {"prompt": "p", "seed": 99}})
            record = await live_server.wait_terminal(created["data"]["taskId"])
            bodies.append((await client.get(json.loads(record["resultJson"])["resultUrls"][0])).content)
        assert bodies[0] == bodies[1]


async def test_image_input_models_fetch_references(live_server, image_server):
    async with live_server.client() as client:
        flux = await create(client, {"model": "flux-2/pro-image-to-image", "input": {
            "input_urls": [f"{image_server}/img/640x480.png", f"{image_server}/img/100x100.png",
                           f"{image_server}/img/300x600.png"],
            "prompt": "combine them", "aspect_ratio": "auto", "resolution": "1K"}})
        ideogram = await create(client, {"model": "ideogram/character", "input": {
            "prompt": "the character reads", "reference_image_urls": [f"{image_server}/img/512x512.png"],
            "image_size": "landscape_16_9", "num_images": "2", "rendering_speed": "TURBO"}})
        flux_record = await live_server.wait_terminal(flux["data"]["taskId"])
        ideogram_record = await live_server.wait_terminal(ideogram["data"]["taskId"])
        assert flux_record["state"] == "success", flux_record["failMsg"]
        flux_image = (await client.get(json.loads(flux_record["resultJson"])["resultUrls"][0])).content
        # auto follows the first reference (4:3) at the 1K bucket
        assert Image.open(io.BytesIO(flux_image)).size == (1152, 896)
        assert ideogram_record["state"] == "success" and ideogram_record["creditsConsumed"] == 24
        urls = json.loads(ideogram_record["resultJson"])["resultUrls"]
        assert [Image.open(io.BytesIO((await client.get(u)).content)).size for u in urls] == [(1024, 576)] * 2


async def test_a_reference_that_is_not_an_image_fails_the_task_and_refunds(live_server, image_server):
    async with live_server.client() as client:
        before = (await client.get("/api/v1/chat/credit")).json()["data"]
        created = await create(client, {"model": "flux-2/pro-image-to-image", "input": {
            "input_urls": [f"{image_server}/text.png"], "prompt": "edit it", "aspect_ratio": "1:1",
            "resolution": "2K"}})
        record = await live_server.wait_terminal(created["data"]["taskId"])
        assert record["state"] == "fail"
        assert record["failCode"] == "400" and "input.input_urls[0]" in record["failMsg"]
        assert record["resultJson"] is None and record["creditsConsumed"] == 0
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == before


@pytest.mark.parametrize(("raw", "expected"), [
    (b"{not json", "request body is not valid JSON"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b"", "request body is empty"),
    (b'{"input": {}}', "model is required"),
    (b'{"model": 5, "input": {}}', "model must be a string"),
    (b'{"model": "dall-e-3", "input": {}}', "model 'dall-e-3' is not supported; available: z-image"),
    (b'{"model": "z-image"}', "input is required"),
    (b'{"model": "z-image", "input": "a cat"}', "input must be an object"),
    (b'{"model": "z-image", "input": {"prompt": "a", "aspect_ratio": "2:1"}}',
     "input.aspect_ratio must be one of 1:1, 4:3, 3:4, 16:9, 9:16; got '2:1'"),
    (b'{"model": "z-image", "callBackUrl": "javascript:alert(1)", "input": {"prompt": "a", "aspect_ratio": "1:1"}}',
     "callBackUrl must be an http or https URL"),
    (b'{"model": "z-image", "callBackUrl": 7, "input": {"prompt": "a", "aspect_ratio": "1:1"}}',
     "callBackUrl must be a string"),
])
async def test_bad_requests_get_422_with_a_clear_message_and_nothing_is_written(live_server, raw, expected):
    async with live_server.client() as client:
        response = await client.post(CREATE, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 200
        body = response.json()
        assert body["code"] == 422 and body["data"] is None
        assert expected in body["msg"]
        assert "Traceback" not in response.text
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 1000
    assert await live_server.runtime.store.tasks.count_by_state() == {}


async def test_oversize_body_is_refused(live_server):
    async with live_server.client() as client:
        raw = json.dumps({"model": "z-image", "input": {"prompt": "x" * 2_000_000, "aspect_ratio": "1:1"}})
        body = (await client.post(CREATE, content=raw)).json()
        assert body["code"] == 422 and "larger than" in body["msg"]


async def test_authentication(live_server):
    body = {"model": "z-image", "input": {"prompt": "a", "aspect_ratio": "1:1"}}
    async with httpx.AsyncClient(base_url=live_server.base_url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
            for method, path in (("POST", CREATE), ("GET", RECORD + "?taskId=x"), ("GET", "/api/v1/chat/credit")):
                response = await anonymous.request(method, path, json=body, headers=headers)
                assert response.status_code == 200 and response.json()["code"] == 401
    created = await live_server.runtime.store.accounts.create_key("temp", credits=5)
    async with live_server.client(created.key) as client:
        assert (await create(client, body))["code"] == 200
        await live_server.runtime.store.accounts.revoke_key(str(created.key_id))
        live_server.app.state.api_keys.cache.clear()
        assert (await create(client, body))["code"] == 401


async def test_other_accounts_tasks_are_invisible(live_server):
    other = await live_server.runtime.store.accounts.create_key("other", credits=10)
    async with live_server.client() as mine, live_server.client(other.key) as theirs:
        task_id = (await create(mine, {"model": "google/imagen4-fast", "input": {"prompt": "mine"}}))["data"]["taskId"]
        assert (await theirs.get(RECORD, params={"taskId": task_id})).json() == {
            "code": 422, "msg": "recordInfo is null", "data": None}
        assert (await mine.get(RECORD, params={"taskId": "0" * 32})).json()["msg"] == "recordInfo is null"
        assert (await mine.get(RECORD)).json()["code"] == 422


async def test_insufficient_credits_is_402_and_nothing_is_created(live_server):
    poor = await live_server.runtime.store.accounts.create_key("poor", credits=5)
    async with live_server.client(poor.key) as client:
        body = {"model": "google/imagen4-fast", "input": {"prompt": "x", "num_images": "2"}}
        response = await create(client, body)
        assert response["code"] == 402 and "costs 8 credits, the balance is 5" in response["msg"]
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 5


async def test_concurrent_creates_accept_exactly_what_the_balance_covers(live_server):
    account = await live_server.runtime.store.accounts.create_key("exact", credits=40)
    async with live_server.client(account.key) as client:
        body = {"model": "google/imagen4-fast", "input": {"prompt": "race"}}  # 4 credits each
        responses = await asyncio.gather(*(create(client, body) for _ in range(25)))
    codes = sorted(r["code"] for r in responses)
    assert codes.count(200) == 10 and codes.count(402) == 15
    assert await live_server.runtime.store.accounts.balance(account.account_id) == 0
    assert await live_server.runtime.store.accounts.ledger_sum(account.account_id) == 0


async def test_maintenance_and_disabled_models(live_server):
    state = live_server.runtime.store.state
    body = {"model": "z-image", "input": {"prompt": "a", "aspect_ratio": "1:1"}}
    async with live_server.client() as client:
        task_id = (await create(client, body))["data"]["taskId"]
        await state.set_maintenance(True)
        live_server.app.state.admission.forget_flags()
        assert (await create(client, body))["code"] == 455
        # polling keeps working during maintenance
        assert (await client.get(RECORD, params={"taskId": task_id})).json()["code"] == 200
        await state.set_maintenance(False)
        await state.set_model_enabled("z-image", False)
        live_server.app.state.admission.forget_flags()
        response = await create(client, body)
        assert response["code"] == 505 and "z-image" in response["msg"]
        models = (await client.get("/api/v1/models")).json()["data"]
        assert {m["id"]: m["enabled"] for m in models}["z-image"] is False
        await state.set_model_enabled("z-image", True)
        live_server.app.state.admission.forget_flags()
        assert (await create(client, body))["code"] == 200


async def test_rate_limit_per_key(settings):
    from tests.helpers import free_port, start_server

    port = free_port()
    limited = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}",
                                          "rate_limit_per_key": 3, "rate_limit_window_seconds": 60})
    server, task = await start_server(limited)
    try:
        created = await server.config.app.state.runtime.store.accounts.create_key("rl", credits=100)
        headers = {"Authorization": f"Bearer {created.key}"}
        async with httpx.AsyncClient(base_url=limited.public_url, headers=headers) as client:
            body = {"model": "z-image", "input": {"prompt": "a", "aspect_ratio": "1:1"}}
            codes = [(await create(client, body))["code"] for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
    finally:
        server.should_exit = True
        await task


async def test_models_endpoint_and_openapi(live_server):
    async with live_server.client() as client:
        models = (await client.get("/api/v1/models")).json()["data"]
        by_id = {m["id"]: m for m in models}
        assert by_id["flux-2/pro-image-to-image"]["prices"] == {"1K": 5, "2K": 7}
        schema = by_id["z-image"]["inputSchema"]
        assert schema["required"] == ["prompt", "aspect_ratio"]
        assert schema["properties"]["aspect_ratio"]["enum"] == ["1:1", "4:3", "3:4", "16:9", "9:16"]
        openapi = (await client.get("/openapi.json")).json()
        assert "/api/v1/jobs/createTask" in openapi["paths"]
        assert (await client.get("/docs")).status_code == 200


async def test_result_urls_are_signed_and_expire(live_server):
    async with live_server.client() as client:
        created = await create(client, {"model": "google/imagen4-fast", "input": {"prompt": "signed"}})
        record = await live_server.wait_terminal(created["data"]["taskId"])
        url = json.loads(record["resultJson"])["resultUrls"][0]
        assert (await client.get(url)).status_code == 200
        tampered = url.replace("0.png", "1.png")
        assert (await client.get(tampered)).status_code == 403
        bad_signature = url[:-4] + ("0000" if not url.endswith("0000") else "1111")
        assert (await client.get(bad_signature)).status_code == 403
        key = url.split("/files/")[1].split("?")[0]
        expired = live_server.runtime.signer.url(key, -1)
        response = await client.get(expired)
        assert response.status_code == 403 and response.json()["code"] == 403


def test_local_storage_refuses_keys_that_leave_its_root(tmp_path):
    storage = LocalStorage(tmp_path / "files")
    for key in ("../x", "a/../../x", "/etc/passwd", "results/../../safelight.db", ""):
        with pytest.raises(StorageKeyError):
            storage.path(key)
    assert storage.path("results/abc/0.png") == (tmp_path / "files" / "results" / "abc" / "0.png").resolve()


async def test_a_validly_signed_traversal_key_is_refused(live_server):
    # `%2e%2e` reaches the server undecoded (a client does not normalise it away), the route decodes it to
    # `..`, and the signature is genuine: only the storage key check stands between it and the database.
    key = "../safelight.db"
    signed = live_server.runtime.signer.url(key, 60)
    query = signed.split("?", 1)[1]
    async with live_server.client() as client:
        response = await client.get(f"/files/%2e%2e/safelight.db?{query}")
        assert (response.status_code, response.json()["msg"]) == (403, "invalid file path")
        assert b"SQLite" not in response.content
