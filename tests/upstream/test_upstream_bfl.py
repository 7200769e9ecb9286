"""The `bfl` backend against a fake Black Forest Labs API on loopback (real client code, fake network)."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time

import pytest
from fake_bfl import AUTO_SIZE, FakeBfl, seed_colour
from PIL import Image

from safelight.backends import BackendConfig
from safelight.backends.base import (
    BackendContext,
    BackendError,
    Job,
)
from safelight.backends.upstream.bfl import BflBackend, fit_pixels
from safelight.catalog import get_model, validate_input
from safelight.kie import FailCode
from safelight.net import OutboundPolicy

URLS = [f"https://images.example.com/ref-{i}.png" for i in range(1, 9)]
FAST = {"retries": 2, "backoff_seconds": 0.01, "poll_interval_seconds": 0.01, "max_poll_interval_seconds": 0.02,
        "deadline_seconds": 3.0, "timeout_seconds": 3.0, "download_timeout_seconds": 3.0}


@pytest.fixture
async def fake():
    async with FakeBfl() as server:
        yield server


def make_backend(fake: FakeBfl, *, key: str | None = None, **options) -> BflBackend:
    config = BackendConfig(type="bfl", concurrency=4, **{"base_url": fake.base_url, **FAST, **options})
    context = BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"),
                             env={"BFL_API_KEY": fake.key if key is None else key})
    return BflBackend("bfl-test", config, context)


def make_job(*, num_images: int = 1, seeds: list[int] | None = None, model: str = "flux-2/pro-image-to-image",
             **fields) -> tuple[Job, list[int]]:
    spec = get_model(model)
    raw = {"input_urls": URLS[:2], "prompt": "put the cat from image 1 on the sofa from image 2",
           "aspect_ratio": "16:9", "resolution": "1K", **fields}
    if "text-to-image" in model:
        del raw["input_urls"]
    params = spec.to_params(validate_input(spec, raw))
    if num_images != 1:
        params = dataclasses.replace(params, num_images=num_images)
    progress: list[int] = []
    job = Job(task_id="task-bfl-1", params=params, seeds=seeds or [1000 + i for i in range(num_images)],
              raw_input=raw, report_progress=progress.append)
    return job, progress


async def run(fake: FakeBfl, job: Job, **options):
    backend = make_backend(fake, **options)
    await backend.start()
    try:
        return await backend.generate(job)
    finally:
        await backend.close()


async def failure(fake: FakeBfl, job: Job | None = None, **options) -> BackendError:
    with pytest.raises(BackendError) as caught:
        await run(fake, job or make_job()[0], **options)
    return caught.value


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- success paths -------------------------------------------------------------------------------


async def test_submit_body_poll_and_download(fake):
    job, progress = make_job(input_urls=URLS[:3])
    images = await run(fake, job)

    [submit] = fake.submits
    assert submit.method == "POST" and submit.path == "/v1/flux-2-pro"
    assert submit.headers["x-key"] == fake.key
    assert submit.headers["content-type"] == "application/json"
    assert submit.json == {
        "prompt": "put the cat from image 1 on the sofa from image 2",
        "input_image": URLS[0], "input_image_2": URLS[1], "input_image_3": URLS[2],
        "width": 1344, "height": 768,  # the 1K 16:9 bucket
        "seed": 1000, "safety_tolerance": 2, "output_format": "png",
    }
    # Polled at the URL BFL returned, with the key; the signed sample was fetched without it.
    assert fake.polls and all(p.query == {"id": "req-1"} and p.headers["x-key"] == fake.key for p in fake.polls)
    [download] = fake.downloads
    assert download.query == {"se": "2099", "sig": "abc"} and "x-key" not in download.headers

    [image] = images
    assert image.content_type == "image/png" and image.extension == "png" and image.seed == 1000
    decoded = decode(image.data)
    assert decoded.size == (1344, 768)
    assert decoded.getpixel((5, 5)) == seed_colour(1000)
    assert image.data == fake.jobs["req-1"].sample
    assert progress[-1] == 100


async def test_eight_references_use_numbered_fields(fake):
    job, _ = make_job(input_urls=URLS, aspect_ratio="3:4", resolution="1K")
    await run(fake, job)
    body = fake.submits[0].json
    assert [body[k] for k in ["input_image"] + [f"input_image_{n}" for n in range(2, 9)]] == URLS
    assert "input_image_1" not in body and "input_image_9" not in body
    assert (body["width"], body["height"]) == (896, 1152)


async def test_inline_references_send_the_fetched_bytes_as_base64(fake):
    import base64

    job, _ = make_job()
    job.reference_files = [(b"\x89PNG first", "image/png"), (b"\xff\xd8 second", "image/jpeg")]
    await run(fake, job, send_references="inline")
    body = fake.submits[0].json
    assert base64.b64decode(body["input_image"]) == b"\x89PNG first"
    assert base64.b64decode(body["input_image_2"]) == b"\xff\xd8 second"
    assert URLS[0] not in json.dumps(body)


async def test_auto_aspect_omits_width_and_height(fake):
    job, _ = make_job(aspect_ratio="auto")
    [image] = await run(fake, job)
    assert "width" not in fake.submits[0].json and "height" not in fake.submits[0].json
    assert decode(image.data).size == AUTO_SIZE


@pytest.mark.parametrize(("aspect", "max_pixels", "expected"), [
    ("1:1", 4_000_000, (2000, 2000)),
    ("16:9", 4_000_000, (2672, 1488)),
    ("1:1", 5_000_000, (2048, 2048)),
])
async def test_2k_buckets_fit_bfl_pixel_limit(fake, aspect, max_pixels, expected):
    job, _ = make_job(aspect_ratio=aspect, resolution="2K")
    await run(fake, job, max_pixels=max_pixels)
    body = fake.submits[0].json
    assert (body["width"], body["height"]) == expected
    assert body["width"] * body["height"] <= max_pixels and body["width"] % 16 == 0 and body["height"] % 16 == 0


def test_fit_pixels_keeps_aspect_ratio():
    for width, height in [(2368, 1792), (1536, 2752), (2496, 1664)]:
        w, h = fit_pixels(width, height, 4_000_000)
        assert w * h <= 4_000_000 and w % 16 == 0 and h % 16 == 0
        assert abs(w / h - width / height) < 0.02
    assert fit_pixels(1024, 1024, 4_000_000) == (1024, 1024)


@pytest.mark.parametrize(("option", "nsfw_checker", "sent"), [(2, False, 2), (5, False, 5), (5, True, 2), (1, True, 1)])
async def test_safety_tolerance(fake, option, nsfw_checker, sent):
    job, _ = make_job(nsfw_checker=nsfw_checker)
    await run(fake, job, safety_tolerance=option)
    assert fake.submits[0].json["safety_tolerance"] == sent


async def test_endpoint_option_picks_the_model(fake):
    await run(fake, make_job()[0], endpoint="flux-2-flex")
    assert fake.submits[0].path == "/v1/flux-2-flex"


async def test_always_polls_the_returned_polling_url(fake):
    fake.polling_path = "/cluster-7/v1/get_result"
    fake.pending_polls = 2
    await run(fake, make_job()[0])
    assert len(fake.polls) == 3
    assert {p.path for p in fake.polls} == {"/cluster-7/v1/get_result"}


@pytest.mark.parametrize("scale", [1, 100])
async def test_slow_job_reports_progress(fake, scale):
    fake.pending_polls = 3
    fake.progress = [0.2 * scale, 0.5 * scale, 0.8 * scale]
    job, progress = make_job()
    [image] = await run(fake, job)
    assert len(fake.polls) == 4
    assert progress == [20, 50, 80, 100]
    assert decode(image.data).size == (1344, 768)


async def test_several_images_are_submitted_concurrently_with_their_own_seeds(fake):
    fake.hold_submits_until = 3  # the fake answers no submit until all three are in flight
    fake.pending_polls = 1
    job, progress = make_job(num_images=3, seeds=[7, 300, 70000])
    images = await run(fake, job)

    assert sorted(s.json["seed"] for s in fake.submits) == [7, 300, 70000]
    assert [image.seed for image in images] == [7, 300, 70000]
    assert [decode(image.data).getpixel((0, 0)) for image in images] == [seed_colour(s) for s in (7, 300, 70000)]
    kinds = [kind for kind, _ in fake.events]
    assert kinds[:3] == ["submit"] * 3 and kinds.count("download") == 3
    assert progress[-1] == 100 and progress == sorted(progress)


async def test_result_seed_is_reported(fake):
    job, _ = make_job(seeds=[424242])
    [image] = await run(fake, job)
    assert image.seed == 424242 == fake.submits[0].json["seed"]


# --- every FLUX.2 model: endpoint, body, output format ---------------------------------------------


@pytest.mark.parametrize(("model", "endpoint"), [
    ("flux-2/pro-text-to-image", "flux-2-pro"), ("flux-2/flex-text-to-image", "flux-2-flex"),
])
async def test_text_to_image_models_submit_without_input_images(fake, model, endpoint):
    job, _ = make_job(model=model, prompt="a blister pack, label says FLUX", aspect_ratio="3:2", seeds=[55])
    [image] = await run(fake, job)
    [submit] = fake.submits
    assert submit.path == f"/v1/{endpoint}"
    assert submit.json == {"prompt": "a blister pack, label says FLUX", "width": 1280, "height": 832, "seed": 55,
                           "safety_tolerance": 2, "output_format": "png"}  # no steps/guidance: BFL's defaults
    assert decode(image.data).size == (1280, 832) and image.seed == 55


async def test_flex_image_to_image_goes_to_flex_with_its_references(fake):
    job, _ = make_job(model="flux-2/flex-image-to-image", input_urls=URLS[:5], aspect_ratio="9:16")
    await run(fake, job)
    [submit] = fake.submits
    assert submit.path == "/v1/flux-2-flex"
    assert [submit.json[k] for k in ["input_image", "input_image_2", "input_image_3", "input_image_4",
                                     "input_image_5"]] == URLS[:5]
    assert "input_image_6" not in submit.json
    assert (submit.json["width"], submit.json["height"]) == (768, 1344)


@pytest.mark.parametrize("model", sorted(BflBackend.models))
async def test_the_endpoint_option_sends_every_model_to_one_path(fake, model):
    await run(fake, make_job(model=model)[0], endpoint="flux-2-max")
    assert fake.submits[0].path == "/v1/flux-2-max"


async def test_auto_on_text_to_image_is_square(fake):
    job, _ = make_job(model="flux-2/flex-text-to-image", aspect_ratio="auto", resolution="2K")
    await run(fake, job)
    body = fake.submits[0].json
    assert (body["width"], body["height"]) == (2000, 2000)  # 2048² scaled into 4 000 000 pixels


@pytest.mark.parametrize(("output_format", "sent", "content_type", "extension"), [
    ("png", "png", "image/png", "png"), ("jpeg", "jpeg", "image/jpeg", "jpg"),
    ("webp", "png", "image/png", "png"),  # BFL makes no WebP: PNG, lossless, for the worker to encode once
])
async def test_output_format_is_requested_from_bfl(fake, output_format, sent, content_type, extension):
    job, _ = make_job(model="flux-2/pro-text-to-image")
    job.params = dataclasses.replace(job.params, output_format=output_format)
    [image] = await run(fake, job)
    assert fake.submits[0].json["output_format"] == sent
    assert (image.content_type, image.extension) == (content_type, extension)
    assert decode(image.data).format == ("JPEG" if sent == "jpeg" else "PNG")


async def test_the_fake_refuses_what_bfl_refuses(fake):
    """The fake's checks are real: a body BFL documents as invalid is a permanent input error."""
    job, _ = make_job(model="flux-2/pro-text-to-image")
    job.params = dataclasses.replace(job.params, width=1000, height=1000)  # not multiples of 16
    error = await failure(fake, job, max_pixels=10_000_000)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert "width: Input should be a multiple of 16" in error.message


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["moderated", "request_moderated"])
async def test_moderation_is_permanent(fake, mode):
    fake.mode = mode
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert "safety filter" in error.message
    assert "Derivative Works" in error.detail
    assert fake.downloads == []


@pytest.mark.parametrize("mode", ["error", "task_not_found"])
async def test_failed_generation_is_transient(fake, mode):
    fake.mode = mode
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)


async def test_poll_deadline_gives_timeout(fake):
    fake.mode = "stuck"
    started = time.monotonic()
    error = await failure(fake, deadline_seconds=0.2)
    assert (error.fail_code, error.transient) == (FailCode.TIMEOUT, True)
    assert 0.2 <= time.monotonic() - started < 1.5
    assert len(fake.polls) >= 3


async def test_429_retry_after_is_honoured(fake):
    fake.rate_limited = 1
    fake.retry_after = 0.05
    started = time.monotonic()
    # With a 10 s backoff, finishing fast proves the body's retry_after set the wait.
    [image] = await run(fake, make_job()[0], backoff_seconds=10.0)
    assert time.monotonic() - started < 1.5
    assert len(fake.submits) == 2 and image.data


async def test_429_beyond_budget_is_transient(fake):
    fake.rate_limited = 10
    error = await failure(fake, retries=1)
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert len(fake.submits) == 2


async def test_persistent_5xx_fails_transiently_after_the_retry_budget(fake):
    fake.mode = "server_error"
    error = await failure(fake, retries=2)
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert len(fake.submits) == 3
    assert "HTTP 500" in error.detail


@pytest.mark.parametrize("mode", ["expired", "not_image"])
async def test_undownloadable_result_is_transient(fake, mode):
    fake.mode = mode
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert len(fake.downloads) == 1


@pytest.mark.parametrize("mode", ["malformed_submit", "missing_id", "malformed_poll", "no_status", "no_sample"])
async def test_malformed_responses_are_transient(fake, mode):
    fake.mode = mode
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert "malformed" in error.message


async def test_422_is_a_permanent_input_error_with_the_reason(fake):
    fake.mode = "reject"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message == "the provider rejected the request: width: Input should be a multiple of 16"


async def test_400_message_is_sanitized(fake):
    fake.mode = "bad_request"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert "input_image could not be downloaded" in error.message
    assert fake.key not in error.message and fake.key not in error.detail
    assert "\x00" not in error.message and "\n" not in error.message


async def test_402_is_an_operator_problem(fake):
    fake.mode = "no_credits"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert error.message == "provider unavailable; credits refunded"
    assert "402" in error.detail and len(fake.submits) == 1


async def test_wrong_key_is_an_operator_problem(fake):
    error = await failure(fake, key="not-the-right-key-123")
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert "401" in error.detail
    assert "not-the-right-key-123" not in error.detail  # the fake echoed it; redacted
    assert fake.submits[0].headers["x-key"] == "not-the-right-key-123"


async def test_missing_key_fails_at_start(fake):
    backend = make_backend(fake, key="")
    with pytest.raises(BackendError) as caught:
        await backend.start()
    assert (caught.value.fail_code, caught.value.transient) == (FailCode.UNAVAILABLE, True)
    assert "BFL_API_KEY" in caught.value.detail
    assert fake.requests == []


async def test_polling_url_on_a_foreign_host_is_never_called(fake):
    fake.mode = "foreign_polling"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert "polling_url" in error.detail and fake.polls == []


def test_polling_url_host_rule():
    backend = BflBackend("b", BackendConfig(type="bfl", base_url="https://api.bfl.ai"),
                         BackendContext(env={}))
    allowed = ["https://api.bfl.ai/v1/get_result?id=1", "https://api.us1.bfl.ai/v1/get_result?id=1",
               "https://api.eu4.bfl.ai/v1/get_result?id=1", "/v1/get_result?id=1"]
    refused = ["https://api.bfl.ai.evil.example/v1/get_result", "http://api.bfl.ai/v1/get_result",
               "https://evil.example/v1/get_result", "https://user:pw@api.bfl.ai/v1/get_result",
               "https://notbfl.ai/v1/get_result", "https://api.us1.bfl.ai:8443/v1/get_result"]
    assert [backend.polling_url_allowed(url) for url in allowed] == [True] * len(allowed)
    assert [backend.polling_url_allowed(url) for url in refused] == [False] * len(refused)


def test_options_and_class_facts():
    assert BflBackend.type_name == "bfl"
    assert BflBackend.models == frozenset({"flux-2/pro-image-to-image", "flux-2/pro-text-to-image",
                                           "flux-2/flex-image-to-image", "flux-2/flex-text-to-image"})
    assert BflBackend.offers_safety_checker({}) is True
    with pytest.raises(ValueError, match="backends.b.colour"):
        BflBackend.check_options("b", BackendConfig(type="bfl", colour="red"))
    with pytest.raises(ValueError, match="safety_tolerance"):
        BflBackend.check_options("b", BackendConfig(type="bfl", safety_tolerance=9))
    options = BflBackend("b", BackendConfig(type="bfl"), BackendContext(env={})).options
    assert (options.timeout_seconds, options.retries, options.backoff_seconds,
            options.max_wait_seconds) == (60, 3, 1, 30)
    assert (options.poll_interval_seconds, options.max_poll_interval_seconds, options.deadline_seconds) == (0.5, 5, 300)
    with pytest.raises(ValueError) as caught:
        BflBackend.check_options("b", BackendConfig(type="bfl", poll_deadline_seconds=60))
    assert str(caught.value) == "backends.b.poll_deadline_seconds was renamed to deadline_seconds"


async def test_generate_on_a_backend_never_started_is_an_internal_error(fake):
    with pytest.raises(RuntimeError, match="backend bfl-test was not started"):
        await make_backend(fake).generate(make_job()[0])
    assert fake.requests == []


async def test_provider_key_never_leaks(fake, caplog):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    modes = ["ok", "moderated", "error", "stuck", "server_error", "expired", "malformed_submit", "missing_id",
             "malformed_poll", "no_sample", "reject", "bad_request", "no_credits", "foreign_polling"]
    for mode in modes:
        fake.mode = mode
        fake.pending_polls = 1
        try:
            await run(fake, make_job()[0], retries=1, deadline_seconds=0.1)
        except BackendError as exc:
            texts += [exc.message, exc.detail, str(exc)]
    fake.mode, fake.rate_limited = "ok", 1
    await run(fake, make_job()[0])
    wrong = "wrong-key-should-also-stay-secret"
    try:
        await run(fake, make_job()[0], key=wrong)
    except BackendError as exc:
        texts += [exc.message, exc.detail]
    assert len(texts) >= 3 * (len(modes) - 1)
    everything = "\n".join(texts) + caplog.text
    assert "HTTP Request" in caplog.text  # httpx's own logging was captured
    assert fake.key not in everything
    assert wrong not in everything
