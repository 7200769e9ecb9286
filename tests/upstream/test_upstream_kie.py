"""The `kie` upstream backend against the fake kie.ai on loopback (tests/fake_kie.py), and against a real Safelight."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from PIL import Image

from safelight.backends import BackendConfig
from safelight.backends.base import (
    BackendContext,
    BackendError,
    Job,
)
from safelight.backends.upstream.kie import KieBackend
from safelight.backends.upstream.provider import PROVIDER_UNAVAILABLE
from safelight.catalog import get_model, validate_input
from safelight.kie import FailCode
from safelight.net import OutboundPolicy
from tests.fake_kie import CREATE, MODELS, RECORD, FakeKie, Script

KEY = "kie-sk-7Hq2ZpW9xLmT4vRb"
ENV = "KIE_TEST_KEY"
FAST = {"poll_interval_seconds": 0.01, "max_poll_interval_seconds": 0.02, "backoff_seconds": 0.01,
        "retries": 2, "timeout_seconds": 5}


@pytest.fixture
async def fake() -> AsyncIterator[FakeKie]:
    async with FakeKie(api_key=KEY) as fake:
        yield fake


def make_backend(base_url: str, key: str = KEY, **options: Any) -> KieBackend:
    config = BackendConfig(type="kie", **{"base_url": base_url, "api_key_env": ENV, **FAST, **options})
    context = BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"), env={ENV: key})
    return KieBackend("kie-up", config, context)


async def started_backend(base_url: str, key: str = KEY, **options: Any) -> KieBackend:
    """A backend the way the worker hands it tasks: started first."""
    backend = make_backend(base_url, key, **options)
    await backend.start()
    return backend


@pytest.fixture
async def backend(fake: FakeKie) -> AsyncIterator[KieBackend]:
    backend = await started_backend(fake.base_url)
    try:
        yield backend
    finally:
        await backend.close()


def make_job(raw: dict[str, Any], model: str = "z-image") -> tuple[Job, list[int]]:
    spec = get_model(model)
    assert spec is not None
    params = spec.to_params(validate_input(spec, raw))
    progress: list[int] = []
    job = Job(task_id="local-task-1", params=params, seeds=[1000 + n for n in range(params.num_images)],
              raw_input=raw, report_progress=progress.append)
    return job, progress


Z_INPUT = {"prompt": "a lighthouse at dusk", "aspect_ratio": "16:9", "nsfw_checker": True}
IMAGEN_INPUT = {"prompt": "two foxes", "num_images": "2", "seed": 7, "aspect_ratio": "3:4"}


async def fails(backend: KieBackend, job: Job) -> BackendError:
    with pytest.raises(BackendError) as info:
        await backend.generate(job)
    return info.value


# --- the happy path ------------------------------------------------------------------------------


async def test_forwards_the_input_unchanged_under_the_mapped_model_and_copies_the_result(fake):
    fake.published = (*MODELS, "z-image-turbo")
    backend = await started_backend(fake.base_url, model_map={"z-image": "z-image-turbo"})
    job, _ = make_job(dict(Z_INPUT))
    try:
        images = await backend.generate(job)
    finally:
        await backend.close()

    (create,) = fake.calls(CREATE)
    assert create["headers"]["authorization"] == f"Bearer {KEY}"
    assert create["json"] == {"model": "z-image-turbo", "input": Z_INPUT}  # no callBackUrl: we poll
    (task_id,) = fake.tasks
    polls = fake.calls(RECORD)
    assert polls and all(p["query"] == {"taskId": task_id} for p in polls)
    assert all(p["headers"]["authorization"] == f"Bearer {KEY}" for p in polls)
    # The result was downloaded (without our key) and its bytes are ours now.
    (download,) = fake.calls(f"/files/{task_id}_0.png")
    assert "authorization" not in download["headers"]
    assert len(images) == 1
    assert images[0].data == fake.png(0)
    assert images[0].content_type == "image/png" and images[0].extension == "png"
    assert Image.open(io.BytesIO(images[0].data)).size == (32, 24)
    assert images[0].seed is None  # kie does not say which seed it used


async def test_identity_mapping_and_several_images_in_order(fake, backend):
    job, _ = make_job(dict(IMAGEN_INPUT), model="google/imagen4-fast")
    images = await backend.generate(job)
    (create,) = fake.calls(CREATE)
    assert create["json"] == {"model": "google/imagen4-fast", "input": IMAGEN_INPUT}
    assert len(fake.tasks) == 1
    assert [i.data for i in images] == [fake.png(0), fake.png(1)]
    assert [Image.open(io.BytesIO(i.data)).size for i in images] == [(32, 24), (33, 24)]


async def test_a_model_added_with_the_families_goes_through_unchanged(fake, backend):
    """nano-banana-pro, with every field kie documents (jpg, 4K, image_input), reaches kie exactly as sent."""
    fake.published = (*MODELS, "nano-banana-pro")
    raw = {"prompt": "a comic poster of the cat in image 1", "image_input": ["https://files.example.com/cat.png"],
           "aspect_ratio": "4:5", "resolution": "4K", "output_format": "jpg"}
    job, _ = make_job(dict(raw), model="nano-banana-pro")
    images = await backend.generate(job)
    (create,) = fake.calls(CREATE)
    assert create["json"] == {"model": "nano-banana-pro", "input": raw}
    assert [i.data for i in images] == [fake.png(0)]


async def test_takes_num_images_of_more_urls_and_seeds_from_result_json(fake, backend):
    fake.scripts.append(Script(result_count=3, seeds=[41, 42, 43]))
    job, _ = make_job(dict(IMAGEN_INPUT), model="google/imagen4-fast")
    images = await backend.generate(job)
    (task_id,) = fake.tasks
    assert [i.data for i in images] == [fake.png(0), fake.png(1)]
    assert [i.seed for i in images] == [41, 42]
    assert not fake.calls(f"/files/{task_id}_2.png")


async def test_result_json_as_an_object_is_tolerated(fake, backend):
    fake.scripts.append(Script(result_as_object=True))
    job, _ = make_job(dict(Z_INPUT))
    images = await backend.generate(job)
    assert len(fake.tasks) == 1
    assert images[0].data == fake.png(0)


async def test_progress_is_reported_while_generating(fake, backend):
    fake.scripts.append(Script(generating_polls=4, progress=[10, 40, 40, 85]))
    job, progress = make_job(dict(Z_INPUT))
    await backend.generate(job)
    assert progress == [10, 40, 85]  # repeats are not reported again
    assert len(fake.calls(RECORD)) == 1 + 4 + 1  # waiting, 4 x generating, success


async def test_record_info_null_right_after_creation_keeps_polling(fake, backend):
    fake.scripts.append(Script(null_polls=3))
    job, _ = make_job(dict(Z_INPUT))
    images = await backend.generate(job)
    assert len(images) == 1
    assert len(fake.calls(RECORD)) == 3 + 1 + 1 + 1  # null x3, waiting, generating, success


async def test_record_info_null_past_the_grace_period_is_transient(fake):
    backend = await started_backend(fake.base_url, null_grace_seconds=0.1)
    fake.scripts.append(Script(null_polls=10_000))
    job, _ = make_job(dict(Z_INPUT))
    try:
        error = await fails(backend, job)
    finally:
        await backend.close()
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert "lost the task" in error.message
    assert len(fake.calls(RECORD)) >= 3


async def test_create_retries_a_429_envelope_then_succeeds(fake, backend):
    fake.inject(CREATE, (200, {"code": 429, "msg": "Rate limit exceeded"}),
                (429, {"code": 429, "msg": "Rate limit exceeded"}, {"Retry-After": "0.01"}))
    job, _ = make_job(dict(Z_INPUT))
    images = await backend.generate(job)
    assert len(images) == 1
    assert len(fake.calls(CREATE)) == 3


async def test_http_500_once_is_retried(fake, backend):
    fake.inject(CREATE, (500, "upstream exploded"))
    fake.inject(RECORD, (503, "busy"), (200, {"code": 500, "msg": "Server Error", "data": None}))
    job, _ = make_job(dict(Z_INPUT))
    assert len(await backend.generate(job)) == 1
    assert len(fake.calls(CREATE)) == 2


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answers", "fail_code", "transient", "creates"),
    [
        ([(200, {"code": 402, "msg": "Credits insufficient"})], FailCode.UNAVAILABLE, True, 1),
        ([(200, {"code": 433, "msg": "Sub-key usage exceeds limit"})], FailCode.UNAVAILABLE, True, 1),
        ([(402, {"error": "payment required"})], FailCode.UNAVAILABLE, True, 1),
        ([(200, {"code": 455, "msg": "Service under maintenance"})], FailCode.UNAVAILABLE, True, 1),
        ([(200, {"code": 505, "msg": "nsfw_checker is disabled"})], FailCode.UNAVAILABLE, True, 1),
        ([(200, {"code": 501, "msg": "generation failed"})], FailCode.GENERATION, True, 1),
        ([(200, {"code": 422, "msg": "The page does not exist or is not published", "data": None})],
         FailCode.UNAVAILABLE, True, 1),
        ([(200, {"code": 429, "msg": "Rate limit exceeded"})] * 3, FailCode.UNAVAILABLE, True, 3),
        ([(500, "Internal Server Error")] * 3, FailCode.UNAVAILABLE, True, 3),
        ([(200, {"code": 500, "msg": "Server Error"})] * 3, FailCode.UNAVAILABLE, True, 3),
        ([(404, "Not Found")], FailCode.UNAVAILABLE, True, 1),
        ([(200, "<html>maintenance</html>")], FailCode.GENERATION, True, 1),
        ([(200, {"code": 200, "msg": "success", "data": {}})], FailCode.GENERATION, True, 1),
    ],
)
async def test_create_task_errors(fake, backend, answers, fail_code, transient, creates):
    fake.inject(CREATE, *answers)
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    assert (error.fail_code, error.transient) == (fail_code, transient)
    assert len(fake.calls(CREATE)) == creates
    assert not fake.calls(RECORD)
    if fail_code == FailCode.UNAVAILABLE:
        assert error.message == PROVIDER_UNAVAILABLE
        assert error.detail.startswith("backend kie-up: ")


async def test_a_422_envelope_is_the_users_input_error_with_kies_message(fake, backend):
    fake.inject(CREATE, (200, {"code": 422, "msg": "input.prompt\n is too long\x00", "data": None}))
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message == "the provider rejected the input: input.prompt is too long"


async def test_a_wrong_key_is_an_operator_problem(fake):
    backend = await started_backend(fake.base_url, key="not-the-right-key")
    job, _ = make_job(dict(Z_INPUT))
    try:
        error = await fails(backend, job)
    finally:
        await backend.close()
    assert (error.fail_code, error.message, error.transient) == (FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE, True)
    assert "code 401" in error.detail
    assert fake.calls(CREATE)[0]["headers"]["authorization"] == "Bearer not-the-right-key"


async def test_a_missing_key_fails_at_start_naming_the_variable():
    backend = make_backend("http://127.0.0.1:9", key="")
    with pytest.raises(BackendError) as info:
        await backend.start()
    assert (info.value.fail_code, info.value.transient) == (FailCode.UNAVAILABLE, True)
    assert ENV in info.value.detail


@pytest.mark.parametrize(
    ("fail", "fail_code", "transient", "shown"),
    [
        ((500, "Content flagged as NSFW by the safety system"), FailCode.MODERATED, False, True),
        (("400", "Your prompt violates our content policy"), FailCode.MODERATED, False, True),
        (("422", "image_size landscape_21_9 is not supported"), FailCode.INPUT, False, True),
        (("400", "reference image could not be decoded"), FailCode.INPUT, False, True),
        ((500, "internal error, please try again later."), FailCode.GENERATION, True, True),
        (("501", "generation timed out upstream"), FailCode.GENERATION, True, True),
        ((None, None), FailCode.GENERATION, True, False),
        (("504", "the image did not finish in time"), FailCode.TIMEOUT, True, False),
        (("503", "provider unavailable; credits refunded"), FailCode.UNAVAILABLE, True, False),
    ],
)
async def test_upstream_task_failures(fake, backend, fail, fail_code, transient, shown):
    fake.scripts.append(Script(fail=fail))
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    assert (error.fail_code, error.transient) == (fail_code, transient)
    (task_id,) = fake.tasks
    assert task_id in error.detail  # the operator can find the upstream task
    assert task_id not in error.message
    if shown:
        assert fail[1] in error.message
    if fail_code == FailCode.MODERATED:
        assert error.message.startswith("the prompt or image was blocked by the provider's safety filter")


async def test_fail_msg_is_sanitized_and_truncated(fake, backend):
    fake.scripts.append(Script(fail=("422", "task {task} rejected: " + "x" * 1000)))
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    (task_id,) = fake.tasks
    assert error.fail_code == FailCode.INPUT
    assert task_id not in error.message
    assert "task <upstream task> rejected: xxx" in error.message
    assert len(error.message) <= len("the provider rejected the input: ") + 300


@pytest.mark.parametrize(
    "script",
    [
        Script(result_json="{not json"),
        Script(result_json=json.dumps({"urls": ["http://127.0.0.1:9/x.png"]})),
        Script(result_json=json.dumps({"resultUrls": [17]})),
        Script(result_count=1),  # two images asked for, one URL
        Script(result_count=0),
    ],
)
async def test_malformed_or_short_results_are_transient(fake, backend, script):
    fake.scripts.append(script)
    job, _ = make_job(dict(IMAGEN_INPUT), model="google/imagen4-fast")
    error = await fails(backend, job)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert error.message == "the provider returned a malformed response; credits refunded"


async def test_an_expired_result_url_is_transient(fake, backend):
    fake.scripts.append(Script(expired=True))
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert "could not be downloaded" in error.message
    (task_id,) = fake.tasks
    assert fake.calls(f"/files/{task_id}_0.png")


@pytest.mark.parametrize(
    "answers",
    [
        [(200, {"code": 500, "msg": "Server Error", "data": None})] * 3,
        [(200, {"code": 429, "msg": "Rate limit exceeded"})] * 3,
        [(200, {"code": 402, "msg": "Credits insufficient"})],
    ],
)
async def test_record_info_errors(fake, backend, answers):
    fake.inject(RECORD, *answers)
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    assert (error.fail_code, error.message, error.transient) == (FailCode.UNAVAILABLE, PROVIDER_UNAVAILABLE, True)
    assert len(fake.calls(RECORD)) == len(answers)


async def test_a_malformed_record_is_transient(fake, backend):
    fake.inject(RECORD, (200, "<html>oops</html>"))
    job, _ = make_job(dict(Z_INPUT))
    error = await fails(backend, job)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)


async def test_the_deadline_is_a_transient_timeout(fake):
    backend = await started_backend(fake.base_url, deadline_seconds=0.3)
    fake.scripts.append(Script(generating_polls=100_000))
    job, _ = make_job(dict(Z_INPUT))
    try:
        error = await fails(backend, job)
    finally:
        await backend.close()
    assert (error.fail_code, error.transient) == (FailCode.TIMEOUT, True)
    assert len(fake.calls(RECORD)) >= 5


# --- secrets -------------------------------------------------------------------------------------


async def test_the_key_never_reaches_logs_messages_or_details(fake, caplog):
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "safelight"):
        caplog.set_level(logging.DEBUG, logger=name)
    errors: list[BackendError] = []
    echo = f"Authorization: Bearer {KEY} is not valid here"
    scenarios = [
        lambda: fake.inject(CREATE, (200, {"code": 422, "msg": echo})),
        lambda: fake.inject(CREATE, (200, {"code": 402, "msg": echo})),
        lambda: fake.inject(CREATE, *[(500, echo)] * 3),
        lambda: fake.inject(CREATE, (200, echo)),
        lambda: fake.scripts.append(Script(fail=("400", echo))),
        lambda: fake.scripts.append(Script(fail=("500", f"NSFW: {echo}"))),
        lambda: fake.scripts.append(Script(result_json=echo)),
        lambda: fake.scripts.append(Script(expired=True)),
        lambda: fake.inject(RECORD, *[(200, {"code": 500, "msg": echo, "data": None})] * 3),
        lambda: fake.inject(RECORD, (200, {"code": 401, "msg": echo})),
    ]
    backend = await started_backend(fake.base_url)
    try:
        for arrange in scenarios:
            arrange()
            job, _ = make_job(dict(Z_INPUT))
            errors.append(await fails(backend, job))
        assert len(await backend.generate(make_job(dict(Z_INPUT))[0])) == 1
    finally:
        await backend.close()

    assert {e.fail_code for e in errors} == {FailCode.INPUT, FailCode.UNAVAILABLE, FailCode.GENERATION,
                                             FailCode.MODERATED}
    assert any(r.name.startswith("httpx") for r in caplog.records)  # the capture really saw httpx
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    texts = [caplog.text, *(r.getMessage() for r in caplog.records)]
    texts += [t for e in errors for t in (e.message, e.detail, str(e), repr(e.args))]
    assert all(KEY not in text for text in texts)
    assert any("***" in e.detail or "***" in e.message for e in errors)  # redacted, not just absent


# --- options -------------------------------------------------------------------------------------


def test_options_are_checked_and_the_backend_serves_any_model():
    assert KieBackend.models is None
    assert KieBackend.offers_safety_checker({}) is True
    KieBackend.check_options("k", BackendConfig(type="kie", model_map={"z-image": "z-image"}))
    with pytest.raises(ValueError, match="backends.k.poll_intervall"):
        KieBackend.check_options("k", BackendConfig(type="kie", poll_intervall=1))
    with pytest.raises(ValueError, match="backends.k.base_url"):
        KieBackend.check_options("k", BackendConfig(type="kie", base_url="ftp://example.com"))
    backend = KieBackend("k", BackendConfig(type="kie"))
    assert backend.options.base_url == "https://api.kie.ai"
    assert backend.options.poll_interval_seconds == 1.0 and backend.options.max_poll_interval_seconds == 10.0
    assert backend.options.deadline_seconds == 600
    assert (backend.options.timeout_seconds, backend.options.retries, backend.options.backoff_seconds,
            backend.options.max_wait_seconds) == (60, 3, 1.0, 30)


@pytest.mark.parametrize(("old", "new"), [("request_timeout_seconds", "timeout_seconds"),
                                          ("retry_backoff_seconds", "backoff_seconds"),
                                          ("poll_max_interval_seconds", "max_poll_interval_seconds")])
def test_a_renamed_option_names_the_new_name(old, new):
    with pytest.raises(ValueError) as info:
        KieBackend.check_options("kie", BackendConfig(type="kie", **{old: 5}))
    assert str(info.value) == f"backends.kie.{old} was renamed to {new}"


async def test_generate_on_a_backend_never_started_is_an_internal_error(fake):
    backend = make_backend(fake.base_url)
    job, _ = make_job(dict(Z_INPUT))
    with pytest.raises(RuntimeError, match="backend kie-up was not started"):
        await backend.generate(job)
    assert not fake.calls(CREATE)


# --- another Safelight as the upstream -----------------------------------------------------------


async def test_a_real_safelight_server_as_the_upstream(live_server):
    config = BackendConfig(type="kie", base_url=live_server.base_url, api_key_env="UPSTREAM_KEY", **FAST)
    context = BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"),
                             env={"UPSTREAM_KEY": live_server.api_key})
    backend = KieBackend("safelight-up", config, context)
    await backend.start()
    upstream_ids: list[str] = []
    create = backend._create

    async def spy(job: Job) -> str:  # to look the upstream task up afterwards
        upstream_ids.append(await create(job))
        return upstream_ids[-1]

    backend._create = spy  # type: ignore[method-assign]
    raw = {"prompt": "a lighthouse at dusk", "aspect_ratio": "1:1", "nsfw_checker": True}
    job, _ = make_job(dict(raw))
    try:
        images = await backend.generate(job)
    finally:
        await backend.close()

    assert len(images) == 1
    image = Image.open(io.BytesIO(images[0].data))
    assert image.format == "PNG" and image.size == (1024, 1024)
    assert images[0].content_type == "image/png"
    assert isinstance(images[0].seed, int)  # Safelight's resultJson carries the seeds

    (upstream_id,) = upstream_ids
    record = await live_server.wait_terminal(upstream_id)
    assert json.loads(record["param"]) == {"model": "z-image", "input": raw}  # unchanged, no callBackUrl
    result = json.loads(record["resultJson"])
    assert result["seeds"] == [images[0].seed]
    async with live_server.client() as client:
        assert (await client.get(result["resultUrls"][0])).content == images[0].data
