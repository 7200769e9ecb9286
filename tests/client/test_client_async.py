"""The asyncio SDK against the fake kie.ai: the same contract as the blocking client."""

from __future__ import annotations

import asyncio
import json

import pytest

from safelight.client import (
    AsyncClient,
    AuthenticationError,
    GenerationFailedError,
    InsufficientCreditsError,
    MaintenanceError,
    ModelDisabledError,
    RateLimitError,
    ServerError,
    Task,
    TaskNotFoundError,
    ValidationError,
    WaitTimeoutError,
    ZImageInput,
)
from tests.fake_kie import CREATE, RECORD

POLL = {"poll": 0.01, "max_poll": 0.02}


@pytest.fixture
async def client(client_kwargs):
    async with AsyncClient(**client_kwargs) as c:
        yield c


async def test_run_with_async_progress_callback(client, kie):
    states: list[str] = []

    async def on_progress(task: Task) -> None:
        await asyncio.sleep(0)
        states.append(task.state)

    task = await client.run("z-image", ZImageInput(prompt="a fox", aspect_ratio="4:3"), on_progress=on_progress,
                            **POLL)
    assert task.succeeded and task.input == {"prompt": "a fox", "aspect_ratio": "4:3"}
    assert states == ["waiting", "queuing", "generating", "generating", "success"]
    assert task.result_urls == [f"{kie.base_url}/files/{task.task_id}_0.png"]


async def test_plain_progress_callback_and_concurrent_tasks(client, kie):
    seen: list[str] = []
    tasks = await asyncio.gather(
        *(client.run("z-image", {"prompt": f"p{n}", "aspect_ratio": "1:1"}, on_progress=lambda t: seen.append(t.state),
                     **POLL) for n in range(3))
    )
    assert len({t.task_id for t in tasks}) == 3 and all(t.succeeded for t in tasks)
    assert seen.count("success") == 3


async def test_failure_timeout_and_unknown_task(client, kie):
    with pytest.raises(GenerationFailedError) as failed:
        await client.run("z-image", {"prompt": "fail", "aspect_ratio": "1:1"}, **POLL)
    assert failed.value.fail_code == "500" and failed.value.task_id in kie.tasks

    task_id = await client.create_task("z-image", {"prompt": "forever", "aspect_ratio": "1:1"})
    with pytest.raises(TimeoutError) as timed_out:
        await client.wait(task_id, timeout=0.2, **POLL)
    assert isinstance(timed_out.value, WaitTimeoutError) and timed_out.value.task_id == task_id

    with pytest.raises(TaskNotFoundError) as missing:
        await client.get_task("f" * 32)
    assert missing.value.task_id == "f" * 32


@pytest.mark.parametrize(
    ("code", "cls"),
    [(401, AuthenticationError), (402, InsufficientCreditsError), (422, ValidationError), (455, MaintenanceError),
     (501, GenerationFailedError), (505, ModelDisabledError)],
)
async def test_body_codes(client, kie, code, cls):
    kie.inject(CREATE, (200, {"code": code, "msg": "m", "data": None}))
    with pytest.raises(cls) as info:
        await client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert info.value.code == code


async def test_rate_limit_and_server_error_retries(client, kie, client_kwargs):
    kie.inject(CREATE, (200, {"code": 429, "msg": "Rate limit exceeded"}), (429, "slow down"),
               (200, {"code": 500, "msg": "Server Error"}))
    task_id = await client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    assert task_id in kie.tasks and len(kie.calls(CREATE)) == 4

    kie.inject(CREATE, *[(200, {"code": 429, "msg": "Rate limit exceeded"})] * 3)
    async with AsyncClient(**client_kwargs | {"max_retries": 1}) as c:
        with pytest.raises(RateLimitError):
            await c.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})

    with pytest.raises(ServerError, match="This field is required"):
        await client.create_task("z-image", {"aspect_ratio": "1:1"})


async def test_errors_while_polling_carry_task_id(client, kie):
    task_id = await client.create_task("z-image", {"prompt": "p", "aspect_ratio": "1:1"})
    kie.inject(RECORD, (200, {"code": 401, "msg": "Unauthorized"}))
    with pytest.raises(AuthenticationError) as info:
        await client.wait(task_id, **POLL)
    assert info.value.task_id == task_id


async def test_download(client, kie, tmp_path):
    task = await client.run("google/imagen4-fast", {"prompt": "two", "num_images": "2"}, **POLL)
    paths = await client.download(task, tmp_path / "out")
    assert [p.read_bytes() for p in paths] == [kie.png(0), kie.png(1)]
    again = await client.download(task.task_id, tmp_path / "out")
    assert [p.name for p in again] == [f"{task.task_id}_0-1.png", f"{task.task_id}_1-1.png"]
    replaced = await client.download(task, tmp_path / "out", overwrite=True)
    assert replaced == paths


async def test_upload_path_bytes_url(client, kie, tmp_path):
    image = tmp_path / "face.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0jpeg")
    url = await client.upload(image)
    (stored,) = kie.files
    assert url.endswith(stored) and stored.startswith("safelight/uploads/face-") and stored.endswith(".jpg")
    request = kie.calls("/api/file-stream-upload")[0]
    assert b'name="uploadPath"' in request["body"] and b"image/jpeg" in request["body"]

    url = await client.upload(bytearray(kie.png(1)))
    assert url.endswith(".png")

    url = await client.upload("http://example.com/a.png", file_name="b.png")
    assert url.endswith("/safelight/uploads/b.png")
    assert json.loads(kie.calls("/api/file-url-upload")[0]["body"])["fileName"] == "b.png"


async def test_credits_and_models(client, kie):
    assert await client.credits() == 100
    assert (await client.models())[0]["builtin"] is True
    kie.serve_models = True
    assert (await client.models())[0]["title"] == "Z-Image (local)"
