"""A whole Safelight on S3 storage (moto on loopback), in both link modes: uploads, generation with
uploaded inputs, result URLs, download-url, and retention deleting objects. Nothing goes to disk."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from safelight.cli import app as cli_app
from safelight.config import Settings
from safelight.storage.retention import sweep
from safelight.storage.s3 import S3Storage
from safelight.store import Store
from safelight.store.tasks import tasks
from tests.helpers import LiveServer, free_port, png_bytes, start_server
from tests.output_formats import CONTENT_TYPES, EXTENSIONS, encoded
from tests.storage.conftest import Bucket

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
DOWNLOAD = "/api/v1/common/download-url"
DAY = 86400


@dataclass
class S3Server:
    live: LiveServer
    bucket: Bucket
    mode: str
    data_dir: object

    @property
    def storage(self) -> S3Storage:
        storage = self.live.runtime.storage
        assert isinstance(storage, S3Storage)
        return storage

    def assert_link_kind(self, url: str) -> None:
        if self.mode == "presigned":
            assert url.startswith(f"{self.bucket.endpoint}/{self.bucket.name}/safelight/"), url
            assert "X-Amz-Signature=" in url
        else:
            assert url.startswith(f"{self.live.base_url}/files/"), url


@pytest.fixture(params=["proxied", "presigned"])
async def s3_server(request, bucket, tmp_path) -> AsyncIterator[S3Server]:
    """A Safelight (all roles) on a fresh bucket. outbound_allow is empty, as in production, so a URL
    we fail to recognise as ours would be refused (moto and this server are on loopback)."""
    port = free_port()
    base = Settings(data_dir=tmp_path / "data", port=port, public_url=f"http://127.0.0.1:{port}", lease_seconds=5,
                    bootstrap_demo_key=False, outbound_allow="")
    settings = bucket.settings(base, file_urls=request.param)
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    created = await runtime.store.accounts.create_key("tester", credits=1000)
    try:
        yield S3Server(LiveServer(settings.public_url, runtime, created.key, created.account_id),
                       bucket, request.param, tmp_path / "data")
    finally:
        server.should_exit = True
        await task


async def upload(client: httpx.AsyncClient, data: bytes, name: str, path: str = "refs") -> str:
    reply = (await client.post("/api/file-base64-upload", json={
        "base64Data": base64.b64encode(data).decode(), "uploadPath": path, "fileName": name})).json()
    assert reply["code"] == 200, reply
    return reply["data"]["downloadUrl"]


async def generate(live: LiveServer, client: httpx.AsyncClient, body: dict) -> dict:
    created = (await client.post(CREATE, json=body)).json()
    assert created["code"] == 200, created
    record = await live.wait_terminal(created["data"]["taskId"])
    assert record["state"] == "success", record
    return record


def flux(*urls: str) -> dict:
    return {"model": "flux-2/pro-image-to-image",
            "input": {"prompt": "edit", "input_urls": list(urls), "aspect_ratio": "1:1", "resolution": "1K"}}


async def test_upload_generate_fetch_and_download_url(s3_server):
    live, bucket = s3_server.live, s3_server.bucket
    image = png_bytes(24, 16)
    async with live.client() as client, httpx.AsyncClient(timeout=10) as anyone:
        upload_url = await upload(client, image, "in.png")
        s3_server.assert_link_kind(upload_url)
        fetched = await anyone.get(upload_url)
        assert fetched.status_code == 200 and fetched.content == image
        assert fetched.headers["content-type"] == "image/png"
        assert f"safelight/uploads/{live.account_id}/refs/in.png" in bucket.object_keys()

        record = await generate(live, client, flux(upload_url))
        (result_url,) = json.loads(record["resultJson"])["resultUrls"]
        s3_server.assert_link_kind(result_url)
        result = await anyone.get(result_url)
        assert result.status_code == 200 and result.content.startswith(b"\x89PNG")
        assert int(result.headers["content-length"]) == len(result.content)
        assert any(key.startswith(f"safelight/results/{record['taskId']}/") for key in bucket.object_keys())

        for url in (result_url, upload_url):
            reply = (await client.post(DOWNLOAD, json={"url": url})).json()
            assert reply["code"] == 200, reply
            s3_server.assert_link_kind(reply["data"])
            again = await anyone.get(reply["data"])
            assert again.status_code == 200 and again.content == (await anyone.get(url)).content

    # Nothing went to the local data directory.
    assert not (s3_server.data_dir / "files" / "results").exists()
    assert not (s3_server.data_dir / "files" / "uploads").exists()


async def test_results_of_each_file_type_are_served_as_that_type(s3_server):
    live = s3_server.live
    async with httpx.AsyncClient(timeout=10) as anyone:
        for index, name in enumerate(("png", "jpeg", "webp")):
            data = encoded(name)
            key = f"results/{'0' * 32}/1-test/{index}.{EXTENSIONS[name]}"
            await s3_server.storage.put(key, data)
            urls = [live.runtime.signer.url(key, 60)]  # through this server's files route
            if s3_server.mode == "presigned":
                urls.append(s3_server.storage.presign(key, 60))  # straight from the bucket
            for url in urls:
                response = await anyone.get(url)
                assert response.status_code == 200 and response.content == data
                assert response.headers["content-type"] == CONTENT_TYPES[name], url
                assert "content-disposition" not in response.headers


async def test_a_large_file_streams_through_the_files_route(s3_server):
    live = s3_server.live
    data = bytes(range(256)) * 12_000  # ~3 MB, several chunks
    await s3_server.storage.put(f"uploads/{live.account_id}/big/blob.bin", data)
    url = live.runtime.signer.url(f"uploads/{live.account_id}/big/blob.bin", 60)  # a Safelight link, either mode
    async with httpx.AsyncClient(timeout=10) as anyone, anyone.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == "attachment"
        assert int(response.headers["content-length"]) == len(data)
        received = [chunk async for chunk in response.aiter_raw()]
    assert b"".join(received) == data
    async with httpx.AsyncClient(timeout=10) as anyone:
        missing = await anyone.get(live.runtime.signer.url(f"uploads/{live.account_id}/big/none.bin", 60))
        assert missing.status_code == 404


async def test_download_url_takes_either_kind_of_link_and_expired_ones(s3_server):
    live = s3_server.live
    key = f"uploads/{live.account_id}/refs/x.png"
    await s3_server.storage.put(key, png_bytes(4, 4))
    safelight_link = live.runtime.signer.url(key, 60, now=time.time() - DAY)  # expired
    presigned = s3_server.storage.presign(key, 1)
    await asyncio.sleep(1.1)  # let the one-second presigned link expire (S3 dates have seconds)
    async with live.client() as client:
        for url in (safelight_link, presigned):
            reply = (await client.post(DOWNLOAD, json={"url": url})).json()
            assert reply["code"] == 200, (url, reply)
            s3_server.assert_link_kind(reply["data"])
            if s3_server.mode == "presigned":
                expires = int(parse_qs(urlsplit(reply["data"]).query)["X-Amz-Expires"][0])
                assert expires == live.runtime.settings.download_url_ttl_seconds
        other = await live.runtime.store.accounts.create_key("other", credits=10)
    async with live.client(other.key) as stranger:
        assert (await stranger.post(DOWNLOAD, json={"url": presigned})).json()["msg"] == (
            "url is not a file of this account")


async def test_an_expired_presigned_input_fails_the_task_and_a_forged_one_is_refused(s3_server):
    live = s3_server.live
    key = f"uploads/{live.account_id}/refs/in.png"
    await s3_server.storage.put(key, png_bytes(8, 8))
    genuine = s3_server.storage.presign(key, 600)
    signature = parse_qs(urlsplit(genuine).query)["X-Amz-Signature"][0]
    forged = genuine.replace(signature, "0" * 64)
    async with live.client() as client:
        reply = (await client.post(CREATE, json=flux(forged))).json()
        # Not ours, so the outbound guard decides: moto listens on loopback, which is refused.
        assert reply == {"code": 422, "data": None,
                         "msg": "input.input_urls[0] is not allowed: 127.0.0.1 is a loopback address"}
        other = await live.runtime.store.accounts.create_key("other", credits=100)
        async with live.client(other.key) as stranger:
            reply = (await stranger.post(CREATE, json=flux(genuine))).json()
            assert reply["msg"] == "input.input_urls[0] is a file of this server that belongs to another account"
        # A Safelight link naming another host, genuinely signed: ours, read from the bucket.
        elsewhere = live.runtime.signer.url(key, 600).replace(live.base_url, "http://replica-2.internal:8080")
        record = await generate(live, client, flux(genuine, elsewhere))
        assert json.loads(record["resultJson"])["resultUrls"]


async def test_retention_deletes_objects_and_marks_tasks(s3_server):
    live, bucket, runtime = s3_server.live, s3_server.bucket, s3_server.live.runtime
    async with live.client() as client:
        old = await upload(client, png_bytes(4, 4), "old.png")
        await upload(client, png_bytes(4, 4), "new.png")
        old_task = await generate(live, client, {"model": "z-image", "input": {"prompt": "a", "aspect_ratio": "1:1"}})
        new_task = await generate(live, client, {"model": "z-image", "input": {"prompt": "b", "aspect_ratio": "1:1"}})
        async with runtime.store.db.write() as conn:
            await conn.execute(update(tasks).where(tasks.c.id == old_task["taskId"]).values(
                complete_time=int((time.time() - 15 * DAY) * 1000)))
        bucket.backdate(f"safelight/uploads/{live.account_id}/refs/old.png", 4 * DAY)

        report = await sweep(runtime.store.tasks, runtime.storage, runtime.settings)
        assert (report.tasks, report.uploads) == (1, 1) and report.result_bytes > 0
        keys = bucket.object_keys()
        assert not any(key.startswith(f"safelight/results/{old_task['taskId']}/") for key in keys)
        assert any(key.startswith(f"safelight/results/{new_task['taskId']}/") for key in keys)
        assert f"safelight/uploads/{live.account_id}/refs/old.png" not in keys
        assert f"safelight/uploads/{live.account_id}/refs/new.png" in keys

        record = (await client.get(RECORD, params={"taskId": old_task["taskId"]})).json()["data"]
        assert json.loads(record["resultJson"])["resultUrls"] == []
        (old_result,) = json.loads(old_task["resultJson"])["resultUrls"]
        assert (await client.post(DOWNLOAD, json={"url": old_result})).json()["msg"] == (
            "the file was deleted: results are kept 14 days after the task completes")
        assert (await client.post(DOWNLOAD, json={"url": old})).json()["msg"] == (
            "the file no longer exists (files are kept 3 days)")
        if s3_server.mode == "proxied":
            async with httpx.AsyncClient() as anyone:
                assert (await anyone.get(old_result)).status_code == 404


def test_cli_sweep_on_s3(bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("SAFELIGHT_DATABASE_URL", raising=False)
    monkeypatch.setenv("SAFELIGHT_DATA_DIR", str(tmp_path / "data"))
    for name, value in bucket.env().items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    storage = S3Storage.from_settings(settings)

    async def prepare() -> str:
        store = Store(settings.effective_database_url)
        try:
            await store.migrate()
            created = await store.accounts.create_key("cli", credits=5)
            task_id = await store.tasks.create(account_id=created.account_id, model="z-image", param="{}",
                                               callback_url=None, num_images=1, cost=1)
            async with store.db.write() as conn:
                await conn.execute(update(tasks).where(tasks.c.id == task_id).values(
                    state="success", complete_time=int((time.time() - 20 * DAY) * 1000),
                    result=json.dumps({"files": [f"results/{task_id}/1-w/0.png"], "seeds": [3]})))
            await storage.put(f"results/{task_id}/1-w/0.png", b"z" * 100)
            return task_id
        finally:
            await store.close()

    task_id = asyncio.run(prepare())
    result = CliRunner().invoke(cli_app, ["sweep"])
    assert result.exit_code == 0, result.output
    assert "1 task result(s) deleted" in result.output
    assert not any(task_id in key for key in bucket.object_keys())


def test_a_bad_storage_setting_stops_the_cli_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFELIGHT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SAFELIGHT_FILE_URLS", "presigned")
    result = CliRunner().invoke(cli_app, ["sweep"])
    assert result.exit_code == 2
    assert "SAFELIGHT_FILE_URLS=presigned needs S3 storage" in result.output
