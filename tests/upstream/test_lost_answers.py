"""A submit whose answer was lost after it was sent is not sent again, since the provider may have
accepted and billed it; one that never reached the provider is retried; polls are retried as before.
Against the loopback fakes (a stalled answer, or a connection dropped after the request was read),
the backends alone and end to end, where the route fails over and the attempt log says why."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fake_bfl import FakeBfl

from safelight.backends import BackendConfig
from safelight.backends.base import BackendContext, BackendError, Job, collecting_notes
from safelight.backends.upstream.bfl import BflBackend
from safelight.backends.upstream.kie import KieBackend
from safelight.catalog import get_model, validate_input
from safelight.kie import FailCode
from safelight.net import OutboundPolicy
from tests.fake_kie import CREATE, RECORD, FakeKie
from tests.helpers import DropAfterRequest, free_port, start_server

KEY = "kie-sk-lost-answers-0123456789"
FAST_KIE = {"poll_interval_seconds": 0.01, "max_poll_interval_seconds": 0.02, "backoff_seconds": 0.01}
LOST_AND_NOT_RESENT = "not retried (the provider may have billed it)"
Z_INPUT = {"prompt": "a lighthouse at dusk", "aspect_ratio": "1:1"}


@pytest.fixture
async def kie() -> AsyncIterator[FakeKie]:
    async with FakeKie(api_key=KEY) as fake:
        yield fake


def job_for(model: str, raw: dict[str, Any]) -> Job:
    spec = get_model(model)
    assert spec is not None
    params = spec.to_params(validate_input(spec, raw))
    return Job(task_id="task-lost-1", params=params, seeds=[7 + i for i in range(params.num_images)], raw_input=raw)


async def kie_generate(base_url: str, **options: Any) -> Any:
    """Run one z-image job on a started kie backend: its images, or the BackendError it raised."""
    config = BackendConfig(type="kie", **{"base_url": base_url, "api_key_env": "KIE_KEY", **FAST_KIE, **options})
    backend = KieBackend("kie-up", config, BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"),
                                                           env={"KIE_KEY": KEY}))
    await backend.start()
    try:
        return await backend.generate(job_for("z-image", dict(Z_INPUT)))
    except BackendError as exc:
        return exc
    finally:
        await backend.close()


# --- kie -----------------------------------------------------------------------------------------


async def test_kie_create_answer_lost_to_a_timeout_is_not_sent_again(kie):
    kie.stall(CREATE, 1.0)  # the task is created upstream; its answer comes after our timeout
    error = await kie_generate(kie.base_url, timeout_seconds=0.3, retries=3)
    assert isinstance(error, BackendError)
    assert len(kie.calls(CREATE)) == 1 and len(kie.tasks) == 1  # one submit: the one that may be billed
    assert "idempotency-key" not in kie.calls(CREATE)[0]["headers"]  # kie.ai documents none
    assert (error.fail_code, error.transient) == (FailCode.TIMEOUT, True)
    assert error.message == "the provider did not answer in time; credits refunded"
    assert (f"POST {CREATE} answer lost after sending (ReadTimeout); {LOST_AND_NOT_RESENT}") in error.detail
    assert kie.calls(RECORD) == []


async def test_kie_create_whose_connection_dropped_after_sending_is_not_sent_again():
    async with DropAfterRequest() as dropper:
        error = await kie_generate(dropper.base_url, retries=3)
    assert isinstance(error, BackendError)
    assert len(dropper.requests) == 1 and dropper.requests[0].startswith(f"POST {CREATE} ".encode())
    assert b'"prompt":"a lighthouse at dusk"' in dropper.requests[0]  # the whole body reached it
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert f"answer lost after sending (RemoteProtocolError); {LOST_AND_NOT_RESENT}" in error.detail


async def test_kie_create_that_never_reached_the_provider_is_retried():
    error = await kie_generate(f"http://127.0.0.1:{free_port()}", retries=2)  # nothing listens there
    assert isinstance(error, BackendError)
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert "could not connect: ConnectError" in error.detail and "gave up after 3 attempts" in error.detail


async def test_kie_with_idempotency_key_resends_a_lost_create_under_the_same_key(kie):
    kie.honour_idempotency_key = True  # a Safelight upstream
    kie.stall(CREATE, 1.0)
    with collecting_notes() as notes:
        images = await kie_generate(kie.base_url, timeout_seconds=0.3, retries=3, idempotency_key=True)
    assert not isinstance(images, BackendError), images.detail
    assert [image.data for image in images] == [kie.png(0)]
    creates = kie.calls(CREATE)
    keys = [create["headers"].get("idempotency-key") for create in creates]
    assert len(creates) == 2 and len(set(keys)) == 1 and keys[0].startswith("safelight-")
    assert len(kie.tasks) == 1  # the upstream made (and billed) one task
    assert notes == [f"backend kie-up: POST {CREATE} answer lost after sending (ReadTimeout); re-sent with the same "
                     "Idempotency-Key"]


async def test_kie_polls_whose_answer_was_lost_are_asked_again(kie):
    kie.stall(RECORD, 1.0)  # the first poll's answer comes after our timeout; a GET is safe to repeat
    images = await kie_generate(kie.base_url, timeout_seconds=0.3, retries=2)
    assert not isinstance(images, BackendError), images.detail
    assert [image.data for image in images] == [kie.png(0)]
    assert len(kie.calls(CREATE)) == 1


# --- bfl -----------------------------------------------------------------------------------------


async def test_bfl_submit_answer_lost_is_not_sent_again():
    async with FakeBfl(mode="stall_submit") as bfl:
        config = BackendConfig(type="bfl", base_url=bfl.base_url, timeout_seconds=0.3, retries=3,
                               backoff_seconds=0.01, poll_interval_seconds=0.01)
        backend = BflBackend("bfl-test", config, BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"),
                                                                 env={"BFL_API_KEY": bfl.key}))
        await backend.start()
        raw = {"input_urls": ["https://images.example.com/ref-1.png"], "prompt": "the cat from image 1 on a sofa",
               "aspect_ratio": "1:1", "resolution": "1K"}
        try:
            with pytest.raises(BackendError) as caught:
                await backend.generate(job_for("flux-2/pro-image-to-image", raw))
        finally:
            await backend.close()
        assert len(bfl.submits) == 1 and len(bfl.jobs) == 1 and bfl.polls == []
    error = caught.value
    assert (error.fail_code, error.transient) == (FailCode.TIMEOUT, True)
    assert f"POST /v1/flux-2-pro answer lost after sending (ReadTimeout); {LOST_AND_NOT_RESENT}" in error.detail


# --- Google (the SDK's own httpx client) ---------------------------------------------------------


async def test_gemini_generate_content_dropped_after_sending_is_not_sent_again(monkeypatch):
    pytest.importorskip("google.genai")
    from safelight.backends.upstream.gemini_image import GeminiImageBackend

    for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    async with DropAfterRequest() as dropper:
        config = BackendConfig(type="gemini-image", api_key_env="GOOGLE_KEY", base_url=dropper.base_url, retries=2,
                               backoff_seconds=0.01)
        backend = GeminiImageBackend("gemini", config, BackendContext(env={"GOOGLE_KEY": "fake-google-key-0123"}))
        await backend.start()
        try:
            with pytest.raises(BackendError) as caught:
                await backend.generate(job_for("google/imagen4-fast", {"prompt": "two foxes"}))
        finally:
            await backend.close()
    assert len(dropper.requests) == 1 and b":generateContent" in dropper.requests[0]
    error = caught.value
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert f"answer lost after sending (RemoteProtocolError); {LOST_AND_NOT_RESENT}" in error.detail


# --- end to end: the route fails over, the attempt log says why ----------------------------------


async def serve(settings, tmp_path, monkeypatch, kie: FakeKie, route: str):
    monkeypatch.setenv("KIE_API_KEY", KEY)
    config = tmp_path / "safelight.toml"
    config.write_text(f"""
[backends.kie]
type = "kie"
base_url = "{kie.base_url}"
timeout_seconds = 0.3
retries = 3
backoff_seconds = 0.01
poll_interval_seconds = 0.01

[models."z-image"]
route = {route}
""")
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(config), "port": port,
                                           "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("lost", credits=100)).key
    client = httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return server, task, runtime, client


async def run_task(client: httpx.AsyncClient) -> dict[str, Any]:
    created = (await client.post("/api/v1/jobs/createTask", json={"model": "z-image", "input": Z_INPUT})).json()
    assert created["code"] == 200, created
    for _ in range(500):
        record = (await client.get("/api/v1/jobs/recordInfo",
                                   params={"taskId": created["data"]["taskId"]})).json()["data"]
        if record["state"] in ("success", "fail"):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(record)


async def test_a_lost_create_fails_over_to_the_next_backend(settings, tmp_path, monkeypatch, kie):
    kie.stall(CREATE, 1.0)
    server, task, runtime, client = await serve(settings, tmp_path, monkeypatch, kie, '["kie", "sandbox"]')
    try:
        record = await run_task(client)
        assert record["state"] == "success", record
        assert len(kie.calls(CREATE)) == 1
        row = await runtime.store.tasks.get(record["taskId"])
        attempts = json.loads(row["backend_attempts"])
        assert [(a["backend"], a["outcome"], a["failCode"]) for a in attempts] == [
            ("kie", "fallback", "504"), ("sandbox", "success", "")]
        assert f"createTask answer lost after sending (ReadTimeout); {LOST_AND_NOT_RESENT}" in attempts[0]["detail"]
    finally:
        await client.aclose()
        server.should_exit = True
        await task


async def test_a_lost_create_on_the_last_backend_fails_the_task_transiently_refunded(settings, tmp_path,
                                                                                     monkeypatch, kie):
    kie.stall(CREATE, 1.0)
    server, task, runtime, client = await serve(settings, tmp_path, monkeypatch, kie, '["kie"]')
    try:
        record = await run_task(client)
        assert (record["state"], record["failCode"]) == ("fail", "504")
        assert record["failMsg"] == "the provider did not answer in time; credits refunded"
        assert len(kie.calls(CREATE)) == 1
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 100  # refunded
        row = await runtime.store.tasks.get(record["taskId"])
        (attempt,) = json.loads(row["backend_attempts"])
        assert (attempt["backend"], attempt["outcome"]) == ("kie", "fail")
        assert LOST_AND_NOT_RESENT in attempt["detail"]
    finally:
        await client.aclose()
        server.should_exit = True
        await task
