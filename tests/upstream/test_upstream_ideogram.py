"""The `ideogram` backend against a fake Ideogram API v3 on loopback (real client code, fake network)."""

from __future__ import annotations

import io
import logging
import time

import pytest
from fake_ideogram import SIZES, FakeIdeogram
from PIL import Image

from safelight.backends import BackendConfig
from safelight.backends.base import (
    BackendContext,
    BackendError,
    Job,
)
from safelight.backends.upstream.ideogram import IdeogramBackend
from safelight.catalog import get_model, validate_input
from safelight.kie import FailCode
from safelight.net import OutboundPolicy
from safelight.worker import pick_seeds
from tests.helpers import png_bytes

REFERENCE = png_bytes(40, 50, (10, 120, 30))
FAST = {"retries": 2, "backoff_seconds": 0.01, "timeout_seconds": 3.0, "download_timeout_seconds": 3.0}


@pytest.fixture
async def fake():
    async with FakeIdeogram() as server:
        yield server


def make_backend(fake: FakeIdeogram, *, key: str | None = None, **options) -> IdeogramBackend:
    config = BackendConfig(type="ideogram", concurrency=2, **{"base_url": fake.base_url, **FAST, **options})
    context = BackendContext(policy=OutboundPolicy.from_string("127.0.0.1/32"),
                             env={"IDEOGRAM_API_KEY": fake.key if key is None else key})
    return IdeogramBackend("ideogram-test", config, context)


def make_job(*, reference_files=None, references=None, seeds=None, **fields) -> tuple[Job, list[int]]:
    spec = get_model("ideogram/character")
    raw = {"prompt": "the woman from the photo reading in a cafe",
           "reference_image_urls": ["https://images.example.com/face.png"], **fields}
    params = spec.to_params(validate_input(spec, raw))
    progress: list[int] = []
    job = Job(task_id="task-ideo-1", params=params,
              seeds=seeds if seeds is not None else pick_seeds(params.seed, params.num_images),
              references=references or [],
              reference_files=[(REFERENCE, "image/png")] if reference_files is None else reference_files,
              raw_input=raw, report_progress=progress.append)
    return job, progress


async def run(fake: FakeIdeogram, job: Job, **options):
    backend = make_backend(fake, **options)
    await backend.start()
    try:
        return await backend.generate(job)
    finally:
        await backend.close()


async def failure(fake: FakeIdeogram, job: Job | None = None, **options) -> BackendError:
    with pytest.raises(BackendError) as caught:
        await run(fake, job or make_job()[0], **options)
    return caught.value


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- success paths -------------------------------------------------------------------------------


async def test_multipart_request_and_images(fake):
    job, progress = make_job(rendering_speed="BALANCED", style="REALISTIC", expand_prompt=False, num_images="2",
                             image_size="landscape_16_9", seed=42, negative_prompt="blurry, text")
    images = await run(fake, job)

    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/generate" and request.method == "POST"
    assert request.headers["api-key"] == fake.key
    assert request.content_type.startswith("multipart/form-data; boundary=")
    assert request.fields == {
        "prompt": ["the woman from the photo reading in a cafe"],
        "rendering_speed": ["DEFAULT"],
        "style_type": ["REALISTIC"],
        "magic_prompt": ["OFF"],
        "aspect_ratio": ["16x9"],
        "num_images": ["2"],
        "seed": ["42"],
        "negative_prompt": ["blurry, text"],
    }
    [part] = request.files
    assert (part.name, part.filename, part.content_type) == ("character_reference_images", "reference.png",
                                                             "image/png")
    assert part.data == REFERENCE

    assert len(images) == 2
    assert [image.seed for image in images] == [42, 43]
    assert [image.data for image in images] == list(fake.images.values())
    assert {decode(image.data).size for image in images} == {SIZES["16x9"]}  # bytes kept as returned
    assert all(image.content_type == "image/png" for image in images)
    assert len(fake.downloads) == 2 and all("api-key" not in h for h in fake.downloads)
    assert progress[-1] == 100


@pytest.mark.parametrize(("image_size", "aspect"), [
    ("square", "1x1"), ("square_hd", "1x1"), ("portrait_4_3", "3x4"), ("portrait_16_9", "9x16"),
    ("landscape_4_3", "4x3"), ("landscape_16_9", "16x9"),
])
async def test_image_size_maps_to_aspect_ratio(fake, image_size, aspect):
    [image] = await run(fake, make_job(image_size=image_size)[0])
    assert fake.requests[0].field("aspect_ratio") == aspect
    assert decode(image.data).size == SIZES[aspect]


@pytest.mark.parametrize(("speed", "sent"), [("TURBO", "TURBO"), ("BALANCED", "DEFAULT"), ("QUALITY", "QUALITY")])
async def test_rendering_speed_mapping(fake, speed, sent):
    await run(fake, make_job(rendering_speed=speed)[0])
    assert fake.requests[0].field("rendering_speed") == sent


async def test_defaults_style_magic_prompt_and_no_negative_prompt(fake):
    await run(fake, make_job()[0])
    request = fake.requests[0]
    assert request.field("style_type") == "AUTO"
    assert request.field("magic_prompt") == "ON"
    assert request.field("aspect_ratio") == "1x1"
    assert request.field("num_images") == "1"
    assert "negative_prompt" not in request.fields


async def test_fiction_style(fake):
    await run(fake, make_job(style="FICTION")[0])
    assert fake.requests[0].field("style_type") == "FICTION"


async def test_only_the_first_reference_is_sent(fake):
    second = png_bytes(8, 8)
    job, _ = make_job(reference_files=[(REFERENCE, "image/png"), (second, "image/png")])
    await run(fake, job)
    assert [part.data for part in fake.requests[0].files] == [REFERENCE]


async def test_jpeg_reference_keeps_its_type(fake):
    buffer = io.BytesIO()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(buffer, format="JPEG")
    job, _ = make_job(reference_files=[(buffer.getvalue(), "image/jpeg")])
    await run(fake, job)
    [part] = fake.requests[0].files
    assert (part.filename, part.content_type, part.data) == ("reference.jpg", "image/jpeg", buffer.getvalue())


async def test_decoded_reference_is_encoded_when_bytes_are_missing(fake):
    job, _ = make_job(reference_files=[], references=[Image.new("RGB", (30, 20), (9, 9, 9))])
    await run(fake, job)
    [part] = fake.requests[0].files
    assert part.content_type == "image/jpeg" and decode(part.data).size == (30, 20)


async def test_missing_reference_is_an_input_error(fake):
    job, _ = make_job(reference_files=[])
    error = await failure(fake, job)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert fake.requests == []


async def test_large_seed_is_folded_into_ideograms_range(fake):
    job, _ = make_job(seed=2**40 + 5)
    [image] = await run(fake, job)
    sent = int(fake.requests[0].field("seed"))
    assert 0 <= sent <= 2**31 - 1 and sent == (2**40 + 5) % 2**31
    assert image.seed == sent  # the seed Ideogram reports having used


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "withheld"), [("unsafe_one", 1), ("unsafe_all", 3), ("fewer", 1)])
async def test_unsafe_or_missing_images_are_a_permanent_moderation_failure(fake, mode, withheld):
    fake.mode = mode
    error = await failure(fake, make_job(num_images="3")[0])
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert f"withheld {withheld} of 3 images" in error.message
    assert fake.downloads == []


async def test_422_is_the_safety_check(fake):
    fake.mode = "safety_422"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.MODERATED, False)
    assert "safety" in error.message


async def test_400_is_a_permanent_input_error_without_secrets(fake):
    fake.mode = "bad_request"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message.startswith("the provider rejected the request: Invalid aspect ratio")
    assert fake.key not in error.message and fake.key not in error.detail


async def test_429_retry_after_is_honoured(fake):
    fake.rate_limited = 1
    started = time.monotonic()
    [image] = await run(fake, make_job()[0], backoff_seconds=10.0)
    assert time.monotonic() - started < 1.5
    assert len(fake.requests) == 2 and image.data
    assert fake.requests[1].files[0].data == REFERENCE  # the multipart body was sent again in full


async def test_persistent_5xx_fails_transiently_after_the_retry_budget(fake):
    fake.mode = "server_error"
    error = await failure(fake, retries=2)
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert len(fake.requests) == 3


async def test_a_generate_whose_answer_was_lost_is_not_sent_again(fake):
    """The generate was sent whole and the answer never came: Ideogram may have made (and billed) the
    images, and it deduplicates nothing, so the call fails transiently instead of generating again."""
    fake.mode, fake.delay = "slow", 0.5
    error = await failure(fake, timeout_seconds=0.2, retries=2)
    assert (error.fail_code, error.transient) == (FailCode.TIMEOUT, True)
    assert "answer lost after sending (ReadTimeout); not retried (the provider may have billed it)" in error.detail
    assert len(fake.requests) == 1


async def test_expired_image_url_is_transient(fake):
    fake.mode = "expired"
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert len(fake.downloads) == 1


@pytest.mark.parametrize("mode", ["malformed", "missing_data"])
async def test_malformed_answer_is_transient(fake, mode):
    fake.mode = mode
    error = await failure(fake)
    assert (error.fail_code, error.transient) == (FailCode.GENERATION, True)
    assert "malformed" in error.message


async def test_wrong_key_is_an_operator_problem(fake):
    error = await failure(fake, key="not-the-right-key-456")
    assert (error.fail_code, error.transient) == (FailCode.UNAVAILABLE, True)
    assert error.message == "provider unavailable; credits refunded"
    assert "401" in error.detail and "not-the-right-key-456" not in error.detail


async def test_missing_key_fails_at_start(fake):
    backend = make_backend(fake, key="")
    with pytest.raises(BackendError) as caught:
        await backend.start()
    assert (caught.value.fail_code, caught.value.transient) == (FailCode.UNAVAILABLE, True)
    assert "IDEOGRAM_API_KEY" in caught.value.detail


def test_options_and_class_facts():
    assert IdeogramBackend.type_name == "ideogram"
    assert IdeogramBackend.models == frozenset({"ideogram/character"})
    assert IdeogramBackend.offers_safety_checker({}) is True
    with pytest.raises(ValueError, match="backends.i.style"):
        IdeogramBackend.check_options("i", BackendConfig(type="ideogram", style="x"))
    options = IdeogramBackend("i", BackendConfig(type="ideogram")).options
    assert (options.timeout_seconds, options.retries, options.backoff_seconds,
            options.max_wait_seconds) == (180, 2, 1, 30)


async def test_generate_on_a_backend_never_started_is_an_internal_error(fake):
    with pytest.raises(RuntimeError, match="backend ideogram-test was not started"):
        await make_backend(fake).generate(make_job()[0])
    assert fake.requests == []


async def test_provider_key_never_leaks(fake, caplog):
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    modes = ["ok", "unsafe_one", "fewer", "safety_422", "bad_request", "server_error", "slow", "expired", "malformed",
             "missing_data"]
    for mode in modes:
        fake.mode, fake.delay = mode, 0.5
        try:
            await run(fake, make_job(num_images="2")[0], retries=1, timeout_seconds=0.2)
        except BackendError as exc:
            texts += [exc.message, exc.detail, str(exc)]
    fake.mode, fake.rate_limited = "ok", 1
    await run(fake, make_job()[0])
    wrong = "wrong-ideogram-key-stays-secret"
    try:
        await run(fake, make_job()[0], key=wrong)
    except BackendError as exc:
        texts += [exc.message, exc.detail]
    assert len(texts) >= 3 * (len(modes) - 1)
    everything = "\n".join(texts) + caplog.text
    assert "HTTP Request" in caplog.text
    assert fake.key not in everything
    assert wrong not in everything
