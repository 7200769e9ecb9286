"""Routes across real backends, end to end through a live server and its worker: bfl -> kie,
local diffusers -> kie, and a permanent failure that must not fall through. Provider keys must
never reach task records, callbacks or logs."""

import asyncio
import json
import logging

import httpx
import pytest
from fake_bfl import FakeBfl

from tests.fake_kie import CREATE, FakeKie
from tests.helpers import free_port, start_server

KIE_KEY = "kie-upstream-secret-9876543210"
FAST_BFL = ('retries = 1\nbackoff_seconds = 0.01\npoll_interval_seconds = 0.01\nmax_poll_interval_seconds = 0.02\n'
            'deadline_seconds = 5.0')
FAST_KIE = 'poll_interval_seconds = 0.02\nmax_poll_interval_seconds = 0.05\nretries = 1\nbackoff_seconds = 0.01'
FLUX_INPUT = {"prompt": "the cat from image 1 wearing a crown", "aspect_ratio": "1:1", "resolution": "1K"}


@pytest.fixture
async def bfl():
    async with FakeBfl() as fake:
        yield fake


@pytest.fixture
async def kie():
    async with FakeKie(api_key=KIE_KEY) as fake:
        yield fake


async def serve_with(settings, tmp_path, routing: str, env: dict, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "safelight.toml"
    config.write_text(routing)
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(config), "port": port,
                                           "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("chains", credits=1000)).key
    client = httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return server, task, runtime, client


async def finish(client, body):
    created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
    assert created["code"] == 200, created
    for _ in range(600):
        record = (await client.get("/api/v1/jobs/recordInfo",
                                   params={"taskId": created["data"]["taskId"]})).json()["data"]
        if record["state"] in ("success", "fail"):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(record)


def bfl_then_kie(bfl, kie):
    return f"""
[backends.bfl]
type = "bfl"
base_url = "{bfl.base_url}"
api_key_env = "BFL_API_KEY"
concurrency = 24
{FAST_BFL}

[backends.kie]
type = "kie"
base_url = "{kie.base_url}"
api_key_env = "KIE_API_KEY"
{FAST_KIE}

[models."flux-2/pro-image-to-image"]
route = ["bfl", "kie"]
"""


@pytest.mark.parametrize("mode", ["server_error", "no_credits", "expired"])
async def test_bfl_transient_failures_fall_back_to_kie(settings, tmp_path, monkeypatch, bfl, kie, image_server,
                                                      mode, caplog):
    caplog.set_level(logging.DEBUG)
    bfl.mode = mode
    server, task, runtime, client = await serve_with(settings, tmp_path, bfl_then_kie(bfl, kie),
                                                     {"BFL_API_KEY": bfl.key, "KIE_API_KEY": KIE_KEY}, monkeypatch)
    try:
        body = {"model": "flux-2/pro-image-to-image",
                "input": {**FLUX_INPUT, "input_urls": [f"{image_server}/img/64x64.png"]}}
        record = await finish(client, body)
        assert record["state"] == "success", record
        assert len(kie.calls(CREATE)) == 1
        assert kie.calls(CREATE)[0]["json"] == {"model": body["model"], "input": body["input"]}
        row = await runtime.store.tasks.get(record["taskId"])
        attempts = json.loads(row["backend_attempts"])
        assert [(a["backend"], a["outcome"]) for a in attempts] == [("bfl", "fallback"), ("kie", "success")]
        assert row["backend"] == "kie"
        image = (await client.get(json.loads(record["resultJson"])["resultUrls"][0])).content
        assert len(kie.tasks) == 1
        assert image == kie.png(0)  # our own copy of kie's image, served from our storage
        everything = json.dumps(record) + row["backend_attempts"] + caplog.text
        assert bfl.key not in everything and KIE_KEY not in everything
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def test_moderation_does_not_fall_through(settings, tmp_path, monkeypatch, bfl, kie, image_server, caplog):
    caplog.set_level(logging.DEBUG)
    bfl.mode = "moderated"
    server, task, runtime, client = await serve_with(settings, tmp_path, bfl_then_kie(bfl, kie),
                                                     {"BFL_API_KEY": bfl.key, "KIE_API_KEY": KIE_KEY}, monkeypatch)
    try:
        before = (await client.get("/api/v1/chat/credit")).json()["data"]
        body = {"model": "flux-2/pro-image-to-image",
                "input": {**FLUX_INPUT, "input_urls": [f"{image_server}/img/64x64.png"]}}
        record = await finish(client, body)
        assert (record["state"], record["failCode"]) == ("fail", "451")
        assert "safety" in record["failMsg"] or "moderat" in record["failMsg"]
        assert kie.calls(CREATE) == []  # never tried
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == before  # refunded
        row = await runtime.store.tasks.get(record["taskId"])
        assert [(a["backend"], a["outcome"]) for a in json.loads(row["backend_attempts"])] == [("bfl", "fail")]
        assert bfl.key not in json.dumps(record) + caplog.text
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def test_operator_problems_on_the_last_backend_show_users_provider_unavailable(
        settings, tmp_path, monkeypatch, bfl, kie, image_server, caplog):
    caplog.set_level(logging.DEBUG)
    bfl.mode = "no_credits"  # HTTP 402 from BFL: the operator's account, not the user's input
    kie.inject(CREATE, (200, {"code": 402, "msg": "Credits insufficient", "data": None}))
    server, task, runtime, client = await serve_with(settings, tmp_path, bfl_then_kie(bfl, kie),
                                                     {"BFL_API_KEY": bfl.key, "KIE_API_KEY": KIE_KEY}, monkeypatch)
    try:
        body = {"model": "flux-2/pro-image-to-image",
                "input": {**FLUX_INPUT, "input_urls": [f"{image_server}/img/64x64.png"]}}
        record = await finish(client, body)
        assert (record["failCode"], record["failMsg"]) == ("503", "provider unavailable; credits refunded")
        assert "402" in caplog.text  # the operator's log has the detail
        assert bfl.key not in caplog.text and KIE_KEY not in caplog.text
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def test_local_pipeline_out_of_memory_falls_back_to_kie(settings, tmp_path, monkeypatch, kie):
    pytest.importorskip("diffusers")
    import torch

    from tests.tiny_pipelines import save_tiny_pipeline

    weights = save_tiny_pipeline("zimage", tmp_path / "zimage")
    routing = f"""
[backends.local]
type = "diffusers.zimage"
weights = "{weights}"
device = "cpu"
dtype = "float32"
steps = 2
max_sequence_length = 128

[backends.kie]
type = "kie"
base_url = "{kie.base_url}"
api_key_env = "KIE_API_KEY"
{FAST_KIE}

[models."z-image"]
route = ["local", "kie"]
"""
    server, task, runtime, client = await serve_with(settings, tmp_path, routing, {"KIE_API_KEY": KIE_KEY}, monkeypatch)
    local = runtime.worker.backends["local"]

    def out_of_memory(**_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(local, "pipeline", out_of_memory)
    try:
        record = await finish(client, {"model": "z-image", "input": {"prompt": "a fox", "aspect_ratio": "1:1"}})
        assert record["state"] == "success", record
        row = await runtime.store.tasks.get(record["taskId"])
        attempts = json.loads(row["backend_attempts"])
        assert [(a["backend"], a["outcome"]) for a in attempts] == [("local", "fallback"), ("kie", "success")]
        assert "out of memory" in attempts[0]["detail"]
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def test_cancel_stops_polling_the_kie_upstream(settings, tmp_path, kie, monkeypatch):
    """A generating task on the kie pass-through, cancelled: the worker stops polling the upstream at once."""
    from tests.fake_kie import RECORD, Script

    kie.scripts.append(Script(generating_polls=100_000))  # an upstream task that would never end
    routing = f"""
[backends.kie]
type = "kie"
base_url = "{kie.base_url}"
api_key_env = "KIE_API_KEY"
{FAST_KIE}

[models."z-image"]
route = ["kie"]
"""
    server, task, runtime, client = await serve_with(settings, tmp_path, routing, {"KIE_API_KEY": KIE_KEY},
                                                     monkeypatch)
    try:
        created = (await client.post("/api/v1/jobs/createTask",
                                     json={"model": "z-image", "input": {"prompt": "p", "aspect_ratio": "1:1"}})).json()
        task_id = created["data"]["taskId"]
        for _ in range(200):  # the upstream is being polled
            if len(kie.calls(RECORD)) >= 3:
                break
            await asyncio.sleep(0.02)
        reply = (await client.post("/api/v1/jobs/cancel", json={"taskId": task_id})).json()
        assert reply["data"]["state"] == "fail" and reply["data"]["failCode"] == "499"
        await asyncio.sleep(0.3)  # in flight at the moment of the cancel, at most one more poll
        polls = len(kie.calls(RECORD))
        await asyncio.sleep(0.5)  # polling every 20-50 ms: ten more polls if it had not stopped
        assert len(kie.calls(RECORD)) == polls
        assert runtime.worker.in_flight == 0
    finally:
        await client.aclose()
        server.should_exit = True
        await task
