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


def model_job(model: str, raw: dict, files: list[bytes], *, seeds=None) -> Job:
    """A job of any Ideogram model whose input images are `files` (PNG bytes, in reference order),
    fetched and decoded as the worker does."""
    spec = get_model(model)
    params = spec.to_params(validate_input(spec, raw))
    assert len(params.reference_urls) == len(files)
    return Job(task_id="task-ideo-2", params=params,
               seeds=seeds if seeds is not None else pick_seeds(params.seed, params.num_images),
               references=[decode(data) for data in files], reference_files=[(data, "image/png") for data in files],
               raw_input=raw)


def mask_png(width: int, height: int, box: tuple[int, int, int, int], *, mode: str = "white") -> bytes:
    """A kie mask: `box` marked for repainting (white on black; or transparent on opaque white)."""
    from PIL import ImageDraw

    buffer = io.BytesIO()
    if mode == "white":
        image = Image.new("L", (width, height), 0)
        ImageDraw.Draw(image).rectangle(box, fill=255)
    else:
        image = Image.new("RGBA", (width, height), (255, 255, 255, 255))
        ImageDraw.Draw(image).rectangle(box, fill=(0, 0, 0, 0))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    assert (part.name, part.filename, part.content_type) == ("character_reference_images", "character.png",
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
    assert (part.filename, part.content_type, part.data) == ("character.jpg", "image/jpeg", buffer.getvalue())


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


# --- the v3 and character models: endpoint, fields and files each ----------------------------------

BASE = png_bytes(96, 64, (30, 60, 90))
FACE = png_bytes(48, 48, (200, 150, 120))
URL = "https://images.example.com/"


def sent_mask(request) -> Image.Image:
    part = request.file("mask")
    assert (part.filename, part.content_type) == ("mask.png", "image/png")
    return decode(part.data)


async def test_v3_text_to_image_is_a_generate_without_files(fake):
    job = model_job("ideogram/v3-text-to-image", {
        "prompt": "a poster that says OPEN", "rendering_speed": "QUALITY", "style": "DESIGN", "expand_prompt": False,
        "image_size": "portrait_16_9", "seed": 9, "negative_prompt": "blur"}, [])
    [image] = await run(fake, job)
    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/generate"
    assert request.content_type.startswith("multipart/form-data; boundary=")  # even without a file
    assert request.fields == {"prompt": ["a poster that says OPEN"], "rendering_speed": ["QUALITY"],
                              "style_type": ["DESIGN"], "magic_prompt": ["OFF"], "aspect_ratio": ["9x16"],
                              "num_images": ["1"], "seed": ["9"], "negative_prompt": ["blur"]}
    assert request.files == []
    assert image.seed == 9 and decode(image.data).size == SIZES["9x16"]


async def test_v3_edit_inpaints_with_the_mask_in_ideograms_colours(fake):
    mask = mask_png(96, 64, (10, 10, 40, 30))
    job = model_job("ideogram/v3-edit", {
        "prompt": "a red hat", "image_url": URL + "base.png", "mask_url": URL + "mask.png",
        "rendering_speed": "TURBO", "expand_prompt": True, "seed": 77}, [BASE, mask])
    [image] = await run(fake, job)
    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/inpaint"
    # No style, aspect ratio or negative prompt: inpaint keeps the image's size, and kie's v3-edit has neither.
    assert request.fields == {"prompt": ["a red hat"], "rendering_speed": ["TURBO"], "magic_prompt": ["ON"],
                              "num_images": ["1"], "seed": ["77"]}
    assert [part.name for part in request.files] == ["image", "mask"]
    assert request.file("image").data == BASE  # the base image as fetched
    sent = sent_mask(request)
    assert sent.mode == "L" and sent.size == (96, 64)
    # kie's white (repaint) is Ideogram's black; everything else white (keep).
    assert sent.getpixel((20, 20)) == 0 and sent.getpixel((5, 5)) == 255 and sent.getpixel((80, 50)) == 255
    histogram = sent.histogram()
    assert not any(histogram[1:255]) and histogram[0] == 31 * 21  # black and white only; the box is black
    assert decode(image.data).size == (96, 64)  # the fake answers at the image's size


async def test_a_transparent_mask_marks_the_area_to_repaint(fake):
    """An OpenAI-style mask (the /v1/images/edits door stores one as mask_url): transparent = repaint."""
    job = model_job("ideogram/v3-edit", {"prompt": "a hat", "image_url": URL + "b.png", "mask_url": URL + "m.png"},
                    [BASE, mask_png(96, 64, (50, 0, 95, 63), mode="alpha")])
    await run(fake, job)
    sent = sent_mask(fake.requests[0])
    assert sent.getpixel((70, 30)) == 0 and sent.getpixel((10, 30)) == 255


async def test_a_mask_only_as_bytes_is_decoded_and_converted(fake):
    job = model_job("ideogram/v3-edit", {"prompt": "a hat", "image_url": URL + "b.png", "mask_url": URL + "m.png"},
                    [BASE, mask_png(96, 64, (0, 0, 9, 9))])
    job.references = []  # the worker kept only the fetched bytes
    await run(fake, job)
    sent = sent_mask(fake.requests[0])
    assert (sent.getpixel((5, 5)), sent.getpixel((50, 50))) == (0, 255)

    job.reference_files = [job.reference_files[0], (b"\x89PNG\r\n\x1a\n not really", "image/png")]
    error = await failure(fake, job)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message.startswith("input.mask_url is not a readable image")
    assert len(fake.requests) == 1


async def test_a_mask_of_another_size_is_refused_before_calling(fake):
    job = model_job("ideogram/v3-edit", {"prompt": "a hat", "image_url": URL + "b.png", "mask_url": URL + "m.png"},
                    [BASE, mask_png(90, 64, (0, 0, 5, 5))])
    error = await failure(fake, job)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert error.message == ("input.mask_url is 90x64 but input.image_url is 96x64; the mask must be the same size "
                             "as the image")
    assert fake.requests == []


async def test_character_edit_inpaints_with_the_character(fake):
    job = model_job("ideogram/character-edit", {
        "prompt": "she waves", "image_url": URL + "b.png", "mask_url": URL + "m.png",
        "reference_image_urls": [URL + "face.png", URL + "ignored.png"], "style": "FICTION", "num_images": "2",
        "seed": 5}, [BASE, mask_png(96, 64, (0, 0, 47, 63)), FACE])
    images = await run(fake, job)
    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/inpaint"
    assert request.fields == {"prompt": ["she waves"], "rendering_speed": ["DEFAULT"], "style_type": ["FICTION"],
                              "magic_prompt": ["ON"], "num_images": ["2"], "seed": ["5"]}
    assert [part.name for part in request.files] == ["image", "mask", "character_reference_images"]
    assert request.file("character_reference_images").data == FACE
    assert sent_mask(request).getpixel((10, 10)) == 0
    assert [image.seed for image in images] == [5, 6]


@pytest.mark.parametrize(("strength", "weight"), [(0.01, "1"), (0.3, "30"), (0.555, "56"), (1.0, "100")])
async def test_v3_remix_sends_strength_as_image_weight(fake, strength, weight):
    job = model_job("ideogram/v3-remix", {
        "prompt": "make it a sphere", "image_url": URL + "b.png", "strength": strength, "image_size": "landscape_4_3",
        "num_images": "3", "seed": 12, "negative_prompt": "cubes", "style": "REALISTIC"}, [BASE])
    images = await run(fake, job)
    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/remix"
    assert request.fields == {"prompt": ["make it a sphere"], "rendering_speed": ["DEFAULT"],
                              "style_type": ["REALISTIC"], "magic_prompt": ["ON"], "aspect_ratio": ["4x3"],
                              "image_weight": [weight], "num_images": ["3"], "seed": ["12"],
                              "negative_prompt": ["cubes"]}
    assert [(part.name, part.data) for part in request.files] == [("image", BASE)]
    assert len(images) == 3 and {decode(image.data).size for image in images} == {SIZES["4x3"]}


async def test_character_remix_sends_character_its_mask_and_style_references(fake):
    character_mask = png_bytes(48, 48, (255, 255, 255))
    style_1, style_2 = png_bytes(20, 20, (1, 1, 1)), png_bytes(21, 21, (2, 2, 2))
    job = model_job("ideogram/character-remix", {
        "prompt": "at the beach", "image_url": URL + "b.png", "reference_image_urls": [URL + "face.png"],
        "reference_mask_urls": URL + "face-mask.png", "image_urls": [URL + "s1.png", URL + "s2.png"],
        "rendering_speed": "TURBO", "style": "REALISTIC", "negative_prompt": "hats"},
        [BASE, FACE, character_mask, style_1, style_2], seeds=[31])
    await run(fake, job)
    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/remix"
    assert request.fields == {"prompt": ["at the beach"], "rendering_speed": ["TURBO"], "style_type": ["REALISTIC"],
                              "magic_prompt": ["ON"], "aspect_ratio": ["1x1"], "image_weight": ["80"],
                              "num_images": ["1"], "seed": ["31"], "negative_prompt": ["hats"]}
    assert [(part.name, part.data) for part in request.files] == [
        ("image", BASE), ("character_reference_images", FACE),
        ("character_reference_images_mask", character_mask),  # a character mask is sent as given
        ("style_reference_images", style_1), ("style_reference_images", style_2)]


@pytest.mark.parametrize(("image_size", "resolution"), [
    ("square", "1024x1024"), ("square_hd", "1024x1024"), ("landscape_16_9", "1312x736"),
    ("portrait_16_9", "736x1312"), ("landscape_4_3", "1152x864"), ("portrait_4_3", "864x1152"),
])
async def test_v3_reframe_sends_the_nearest_ideogram_resolution(fake, image_size, resolution):
    square = png_bytes(64, 64, (9, 99, 199))
    job = model_job("ideogram/v3-reframe", {"image_url": URL + "sq.png", "image_size": image_size,
                                            "rendering_speed": "QUALITY", "style": "DESIGN", "num_images": "2",
                                            "seed": 3}, [square])
    images = await run(fake, job)
    [request] = fake.requests
    assert request.path == "/v1/ideogram-v3/reframe"
    # No prompt, magic prompt or style type: reframe documents none of them.
    assert request.fields == {"rendering_speed": ["QUALITY"], "num_images": ["2"], "resolution": [resolution],
                              "seed": ["3"]}
    assert [(part.name, part.data) for part in request.files] == [("image", square)]
    width, height = (int(v) for v in resolution.split("x"))
    assert {decode(image.data).size for image in images} == {(width // 8, height // 8)}


def test_strength_and_resolution_helpers():
    from safelight.backends.upstream.ideogram import RESOLUTIONS, image_weight, nearest_resolution

    assert [image_weight(v) for v in (0.001, 0.01, 0.5, 0.999, 1.0)] == [1, 1, 50, 100, 100]
    assert len(RESOLUTIONS) == 69
    assert nearest_resolution(512, 512) == (1024, 1024)
    assert nearest_resolution(1024, 576) == (1312, 736)
    assert nearest_resolution(3000, 1000) == (1536, 512)  # beyond Ideogram's widest: its widest


async def test_images_over_ideograms_10_mb_are_refused_naming_the_field(fake):
    big = b"\x89PNG" + bytes(10 * 1024 * 1024)
    job = model_job("ideogram/v3-remix", {"prompt": "p", "image_url": URL + "b.png"}, [BASE])
    job.reference_files = [(big, "image/png")]
    error = await failure(fake, job)
    assert (error.fail_code, error.message) == (
        FailCode.INPUT, "input.image_url is larger than 10 MB, Ideogram's limit; send a smaller image")

    half = b"\x89PNG" + bytes(6 * 1024 * 1024)
    job = model_job("ideogram/character-remix", {
        "prompt": "p", "image_url": URL + "b.png", "reference_image_urls": [URL + "f.png"],
        "image_urls": [URL + "s1.png", URL + "s2.png"]}, [BASE, FACE, BASE, BASE])
    job.reference_files = [(BASE, "image/png"), (FACE, "image/png"), (half, "image/png"), (half, "image/png")]
    error = await failure(fake, job)
    assert error.message == ("the images in input.image_urls are larger than 10 MB in total, Ideogram's limit; "
                             "send smaller images")
    assert fake.requests == []


async def test_an_edit_without_its_image_is_an_input_error_naming_it(fake):
    job = model_job("ideogram/v3-edit", {"prompt": "a hat", "image_url": URL + "b.png", "mask_url": URL + "m.png"},
                    [BASE, mask_png(96, 64, (0, 0, 1, 1))])
    job.references, job.reference_files = job.references[:1], job.reference_files[:1]
    error = await failure(fake, job)
    assert (error.fail_code, error.transient) == (FailCode.INPUT, False)
    assert "input.mask_url" in error.message
    assert fake.requests == []


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
    assert IdeogramBackend.models == frozenset({
        "ideogram/character", "ideogram/character-edit", "ideogram/character-remix", "ideogram/v3-text-to-image",
        "ideogram/v3-edit", "ideogram/v3-remix", "ideogram/v3-reframe"})
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
