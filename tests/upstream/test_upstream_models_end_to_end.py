"""Every Ideogram and FLUX.2 model, end to end through a live server routed to the `ideogram` or
`bfl` backend and its loopback fake: createTask, the worker fetching the input images (an image,
its mask, character and style references) from a loopback image server, the provider call, success,
the result served from Safelight's storage, and the credits charged."""

import asyncio
import io
import json

import httpx
import pytest
from fake_bfl import FakeBfl
from fake_ideogram import FakeIdeogram
from PIL import Image, ImageDraw
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from tests.helpers import free_port, png_bytes, serve_app, start_server

FAST_IDEOGRAM = "retries = 1\nbackoff_seconds = 0.01\ntimeout_seconds = 5.0\ndownload_timeout_seconds = 5.0"
FAST_BFL = ("retries = 1\nbackoff_seconds = 0.01\npoll_interval_seconds = 0.01\nmax_poll_interval_seconds = 0.02\n"
            "deadline_seconds = 5.0")


def mask_png() -> bytes:
    """A kie mask for the 96x64 base: the left half white (repaint), the rest black (keep)."""
    image = Image.new("L", (96, 64), 0)
    ImageDraw.Draw(image).rectangle((0, 0, 47, 63), fill=255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


FILES = {"base.png": png_bytes(96, 64, (30, 60, 90)), "mask.png": mask_png(), "face.png": png_bytes(48, 48),
         "square.png": png_bytes(64, 64, (9, 99, 199))}


@pytest.fixture
async def images():
    async def image(request):
        return Response(FILES[request.path_params["name"]], media_type="image/png")

    port = free_port()
    server, task = await serve_app(Starlette(routes=[Route("/{name}", image)]), port, lifespan="off")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def serve(settings, tmp_path, monkeypatch, routing: str, env: dict[str, str]):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "safelight.toml").write_text(routing)
    port = free_port()
    settings = settings.model_copy(update={"routing_file": str(tmp_path / "safelight.toml"), "port": port,
                                           "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("models", credits=1000)).key
    client = httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return server, task, client


async def run_all(client: httpx.AsyncClient, bodies: list[dict]) -> list[dict]:
    """createTask for every body at once, then each task's final record."""
    task_ids = []
    for body in bodies:
        created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
        assert created["code"] == 200, created
        task_ids.append(created["data"]["taskId"])

    async def finish(task_id: str) -> dict:
        for _ in range(500):
            record = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()["data"]
            if record["state"] in ("success", "fail"):
                return record
            await asyncio.sleep(0.02)
        raise AssertionError(record)

    return list(await asyncio.gather(*(finish(task_id) for task_id in task_ids)))


async def result_sizes(client: httpx.AsyncClient, record: dict) -> list[tuple[int, int]]:
    urls = json.loads(record["resultJson"])["resultUrls"]
    return [Image.open(io.BytesIO((await client.get(url)).content)).size for url in urls]


async def test_every_ideogram_model_runs_on_the_ideogram_backend(settings, tmp_path, monkeypatch, images):
    async with FakeIdeogram() as fake:
        models = ["ideogram/character", "ideogram/character-edit", "ideogram/character-remix",
                  "ideogram/v3-text-to-image", "ideogram/v3-edit", "ideogram/v3-remix", "ideogram/v3-reframe"]
        routing = (f'[backends.ideogram]\ntype = "ideogram"\nbase_url = "{fake.base_url}"\nconcurrency = 8\n'
                   f"{FAST_IDEOGRAM}\n\n" + "".join(f'[models."{model}"]\nroute = ["ideogram"]\n' for model in models))
        server, task, client = await serve(settings, tmp_path, monkeypatch, routing, {"IDEOGRAM_API_KEY": fake.key})
        try:
            base, mask, face, square = (f"{images}/{name}" for name in ("base.png", "mask.png", "face.png",
                                                                        "square.png"))
            inputs = {
                "ideogram/character": {"prompt": "she reads", "reference_image_urls": [face], "num_images": "2"},
                "ideogram/character-edit": {"prompt": "she waves", "image_url": base, "mask_url": mask,
                                            "reference_image_urls": [face], "rendering_speed": "TURBO"},
                "ideogram/character-remix": {"prompt": "at the beach", "image_url": base,
                                             "reference_image_urls": [face], "image_urls": [square],
                                             "image_size": "landscape_16_9"},
                "ideogram/v3-text-to-image": {"prompt": "a poster", "rendering_speed": "QUALITY"},
                "ideogram/v3-edit": {"prompt": "a hat", "image_url": base, "mask_url": mask},
                "ideogram/v3-remix": {"prompt": "make it a sphere", "image_url": base, "strength": 0.3,
                                      "image_size": "portrait_16_9"},
                "ideogram/v3-reframe": {"image_url": square, "image_size": "landscape_4_3"},
            }
            before = (await client.get("/api/v1/chat/credit")).json()["data"]
            records = await run_all(client, [{"model": model, "input": inputs[model]} for model in models])
            assert [record["state"] for record in records] == ["success"] * len(models), \
                [record["failMsg"] for record in records]
            sizes = {model: await result_sizes(client, record) for model, record in zip(models, records, strict=True)}
            assert sizes == {
                "ideogram/character": [(128, 128)] * 2, "ideogram/character-edit": [(96, 64)],
                "ideogram/character-remix": [(164, 92)], "ideogram/v3-text-to-image": [(128, 128)],
                "ideogram/v3-edit": [(96, 64)], "ideogram/v3-remix": [(92, 164)],
                "ideogram/v3-reframe": [(1152 // 8, 864 // 8)],
            }
            charged = before - (await client.get("/api/v1/chat/credit")).json()["data"]
            assert charged == sum(record["creditsConsumed"] for record in records) == 2 * 18 + 12 + 18 + 10 + 7 * 3

            by_path = sorted(request.endpoint for request in fake.requests)
            assert by_path == ["generate", "generate", "inpaint", "inpaint", "reframe", "remix", "remix"]
            [edit] = [r for r in fake.requests if r.endpoint == "inpaint" and not r.file("character_reference_images")]
            assert edit.file("image").data == FILES["base.png"]
            sent = Image.open(io.BytesIO(edit.file("mask").data))
            assert (sent.getpixel((10, 10)), sent.getpixel((80, 10))) == (0, 255)  # kie's white is Ideogram's black
            [remix] = [r for r in fake.requests if r.endpoint == "remix" and r.file("style_reference_images")]
            assert remix.file("style_reference_images").data == FILES["square.png"]
            assert remix.field("image_weight") == "80"
        finally:
            await client.aclose()
            server.should_exit = True
            await task


async def test_every_flux2_model_runs_on_the_bfl_backend(settings, tmp_path, monkeypatch, images):
    async with FakeBfl() as fake:
        models = ["flux-2/pro-image-to-image", "flux-2/pro-text-to-image", "flux-2/flex-text-to-image",
                  "flux-2/flex-image-to-image"]
        routing = (f'[backends.bfl]\ntype = "bfl"\nbase_url = "{fake.base_url}"\nconcurrency = 8\n{FAST_BFL}\n\n'
                   + "".join(f'[models."{model}"]\nroute = ["bfl"]\n' for model in models))
        server, task, client = await serve(settings, tmp_path, monkeypatch, routing, {"BFL_API_KEY": fake.key})
        try:
            references = [f"{images}/base.png", f"{images}/face.png"]
            inputs = {
                "flux-2/pro-image-to-image": {"input_urls": references, "prompt": "the cat on the sofa",
                                              "aspect_ratio": "4:3", "resolution": "1K"},
                "flux-2/pro-text-to-image": {"prompt": "a blister pack", "aspect_ratio": "3:2", "resolution": "1K"},
                "flux-2/flex-text-to-image": {"prompt": "a poster that says FLEX", "aspect_ratio": "1:1",
                                              "resolution": "2K"},
                "flux-2/flex-image-to-image": {"input_urls": references[:1], "prompt": "make it night",
                                               "aspect_ratio": "auto", "resolution": "1K"},
            }
            records = await run_all(client, [{"model": model, "input": inputs[model]} for model in models])
            assert [record["state"] for record in records] == ["success"] * len(models), \
                [record["failMsg"] for record in records]
            assert [record["creditsConsumed"] for record in records] == [5, 5, 24, 14]
            sizes = [await result_sizes(client, record) for record in records]
            assert sizes == [[(1152, 896)], [(1280, 832)], [(2000, 2000)], [(96, 64)]]  # 2K within 4 MP; auto
            paths = {submit.json["prompt"]: submit.path for submit in fake.submits}
            assert paths == {"the cat on the sofa": "/v1/flux-2-pro", "a blister pack": "/v1/flux-2-pro",
                             "a poster that says FLEX": "/v1/flux-2-flex", "make it night": "/v1/flux-2-flex"}
            flex_edit = next(s.json for s in fake.submits if s.json["prompt"] == "make it night")
            assert flex_edit["input_image"] == references[0] and "width" not in flex_edit
            assert all(s.json["output_format"] == "png" for s in fake.submits)
        finally:
            await client.aclose()
            server.should_exit = True
            await task
