"""Result files have the type the task asks for (`output_format`: png, jpeg, webp) on every backend.

The encoder and the worker's transcoding run for real: a backend defined here returns another type
than the task asks for, and the real worker stores the asked-for type. End to end, a real server
with the sandbox serves each type with its Content-Type and a matching URL suffix, for a test model
(tests/output_formats.py, whose input sets output_format) and for the catalog models with the field.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from PIL import Image

from safelight.backends import Backend, GeneratedImage
from safelight.backends.images import conform, encode_image, output_format
from safelight.net import ImageError
from safelight.worker import Worker
from tests.helpers import LiveServer, create_task, free_port, start_server, wait_state
from tests.output_formats import CONTENT_TYPES, EXTENSIONS, FORMAT_MODEL, encoded, is_format, register

FORMATS = ["png", "jpeg", "webp"]


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- the encoder --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMATS)
def test_encode_gives_the_format_with_its_content_type_and_extension(name):
    image = Image.new("RGB", (40, 30), (10, 120, 240))
    made = encode_image(image, name, seed=7)
    assert is_format(made.data, name)
    assert (made.content_type, made.extension, made.seed) == (CONTENT_TYPES[name], EXTENSIONS[name], 7)
    back = decoded(made.data).convert("RGB")
    assert back.size == (40, 30)
    assert max(abs(a - b) for a, b in zip(back.getpixel((20, 15)), (10, 120, 240), strict=True)) <= 3


def test_jpeg_puts_transparency_on_white_webp_and_png_keep_it():
    image = Image.new("RGBA", (32, 32), (255, 0, 0, 255))
    image.paste((0, 0, 0, 0), (0, 0, 16, 32))  # the left half fully transparent (its colour black)
    jpeg = decoded(encode_image(image, "jpeg", None).data)
    assert jpeg.mode == "RGB"
    assert min(jpeg.getpixel((4, 16))) >= 250  # white, not the hidden black
    assert jpeg.getpixel((28, 16))[0] >= 240
    for name in ("webp", "png"):
        kept = decoded(encode_image(image, name, None).data).convert("RGBA")
        assert kept.getpixel((4, 16))[3] == 0 and kept.getpixel((28, 16))[3] == 255


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "I;16"])
def test_other_pixel_modes_encode_to_every_format(mode):
    image = Image.new("RGB", (16, 16), (90, 90, 90)).convert(mode)
    for name in FORMATS:
        assert is_format(encode_image(image, name, None).data, name)


def test_jpg_is_kies_spelling_of_jpeg_and_other_names_are_refused():
    assert output_format("jpg") == output_format("jpeg")
    assert output_format("jpg").extension == "jpg"
    with pytest.raises(ValueError, match="output_format 'gif' is not one of: png, jpeg, webp"):
        output_format("gif")


def test_conform_relabels_what_already_matches_and_transcodes_the_rest():
    jpeg = encoded("jpeg")
    # JPEG bytes a provider called a PNG: the bytes decide; they are kept as they are, relabelled.
    mislabelled = GeneratedImage(jpeg, 3, content_type="image/png", extension="png")
    kept = conform(mislabelled, "jpeg", max_pixels=10_000)
    assert (kept.data, kept.content_type, kept.extension, kept.seed) == (jpeg, "image/jpeg", "jpg", 3)
    as_png = conform(GeneratedImage(jpeg, 3, "image/jpeg", "jpg"), "png", max_pixels=10_000)
    assert is_format(as_png.data, "png") and (as_png.content_type, as_png.extension) == ("image/png", "png")
    assert decoded(as_png.data).size == (48, 32)


def test_conform_refuses_unreadable_bytes_and_images_over_the_pixel_limit():
    with pytest.raises(ImageError, match="not a JPEG, PNG or WebP"):
        conform(GeneratedImage(b"<html>oops</html>", 1), "png", max_pixels=10_000)
    with pytest.raises(ImageError, match="over the limit of 1000"):
        conform(GeneratedImage(encoded("png"), 1), "jpeg", max_pixels=1000)  # 48x32 = 1536 pixels


# --- the worker -----------------------------------------------------------------------------------------


class FixedTypeBackend(Backend):
    """Returns images of one type whatever the task asks for, as an upstream provider may."""

    type_name = "fixed-type"

    def __init__(self, data: bytes, content_type: str, extension: str) -> None:
        super().__init__("fixed-type")
        self.data, self.content_type, self.extension = data, content_type, extension

    async def generate(self, job):
        return [GeneratedImage(self.data, seed, self.content_type, self.extension) for seed in job.seeds]


async def run_one(runtime, backend: Backend, model_input: dict):
    worker = Worker(store=runtime.store, storage=runtime.storage, loader=runtime.input_loader(),
                    backends=[backend], routes={FORMAT_MODEL: backend.name})
    await worker.start()
    try:
        task_id = await create_task(runtime, {"model": FORMAT_MODEL, "input": model_input}, cost=1)
        return await wait_state(runtime, task_id)
    finally:
        await worker.stop()


@pytest.mark.parametrize(("asked", "returned"), [("jpeg", "png"), ("png", "webp"), ("webp", "jpeg")])
async def test_the_worker_stores_the_type_the_task_asked_for(runtime, monkeypatch, asked, returned):
    register(monkeypatch)
    backend = FixedTypeBackend(encoded(returned, colour=(20, 200, 60)), CONTENT_TYPES[returned], EXTENSIONS[returned])
    row = await run_one(runtime, backend, {"prompt": "x", "output_format": asked})
    assert row["state"] == "success", row["fail_msg"]
    (key,) = json.loads(row["result"])["files"]
    assert key.endswith(f".{EXTENSIONS[asked]}")
    data = await runtime.storage.get(key)
    assert is_format(data, asked)
    image = decoded(data).convert("RGB")
    assert image.size == (48, 32)
    assert max(abs(a - b) for a, b in zip(image.getpixel((24, 16)), (20, 200, 60), strict=True)) <= 4


async def test_a_result_already_of_the_asked_type_is_stored_byte_for_byte(runtime, monkeypatch):
    register(monkeypatch)
    jpeg = encoded("jpeg")
    row = await run_one(runtime, FixedTypeBackend(jpeg, "image/jpeg", "jpg"), {"prompt": "x", "output_format": "jpg"})
    (key,) = json.loads(row["result"])["files"]
    assert key.endswith(".jpg") and await runtime.storage.get(key) == jpeg


async def test_an_unreadable_result_fails_the_task_with_501_and_refunds(runtime, monkeypatch):
    register(monkeypatch)
    row = await run_one(runtime, FixedTypeBackend(b"GIF89a not ours", "image/png", "png"),
                        {"prompt": "x", "output_format": "webp"})
    assert (row["state"], row["fail_code"]) == ("fail", "501")
    assert row["fail_msg"] == "the backend returned an image that cannot be read; credits refunded"
    assert await runtime.store.accounts.balance(runtime.test_account) == 1000


# --- end to end: the sandbox behind a real server ---------------------------------------------------------


@pytest.fixture
async def format_server(settings, monkeypatch) -> AsyncIterator[LiveServer]:
    register(monkeypatch)  # before the server starts: the default routes list every catalog model
    port = free_port()
    settings = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    created = await runtime.store.accounts.create_key("tester", credits=1000)
    try:
        yield LiveServer(settings.public_url, runtime, created.key, created.account_id)
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize(("requested", "name"), [(None, "png"), ("png", "png"), ("jpg", "jpeg"), ("jpeg", "jpeg"),
                                                 ("webp", "webp")])
async def test_sandbox_results_follow_output_format_end_to_end(format_server, requested, name):
    model_input = {"prompt": "a lighthouse"} | ({"output_format": requested} if requested else {})
    async with format_server.client() as client:
        created = (await client.post("/api/v1/jobs/createTask", json={"model": FORMAT_MODEL,
                                                                       "input": model_input})).json()
        assert created["code"] == 200, created
        record = await format_server.wait_terminal(created["data"]["taskId"])
        assert record["state"] == "success", record
        (url,) = json.loads(record["resultJson"])["resultUrls"]
        assert urlsplit(url).path.endswith(f".{EXTENSIONS[name]}")
        served = await client.get(url)
    assert served.status_code == 200
    assert served.headers["content-type"] == CONTENT_TYPES[name]
    assert is_format(served.content, name)
    assert decoded(served.content).size == (256, 256)


@pytest.mark.parametrize(("model", "model_input", "name"), [
    ("nano-banana-pro", {"output_format": "jpg"}, "jpeg"),
    ("nano-banana-pro", {}, "png"),  # its default
    ("nano-banana-2", {}, "jpeg"),  # its default is jpg
    ("google/nano-banana", {"output_format": "jpeg"}, "jpeg"),
])
async def test_catalog_models_with_output_format_give_that_file_type(live_server, model, model_input, name):
    async with live_server.client() as client:
        body = {"model": model, "input": {"prompt": "a banana on a desk", "aspect_ratio": "1:1"} | model_input}
        created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
        assert created["code"] == 200, created
        record = await live_server.wait_terminal(created["data"]["taskId"])
        assert record["state"] == "success", record
        (url,) = json.loads(record["resultJson"])["resultUrls"]
        assert urlsplit(url).path.endswith(f".{EXTENSIONS[name]}")
        served = await client.get(url)
    assert served.headers["content-type"] == CONTENT_TYPES[name] and is_format(served.content, name)
    assert decoded(served.content).size == (1024, 1024)
