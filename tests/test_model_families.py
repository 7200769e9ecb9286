"""Every model the families added runs on the sandbox (the default route) end to end: createTask, the
worker fetching every input image (masks included), success, the price charged; and a refusal per
family names the field and the rule. A real server on loopback with SQLite, and a loopback image server."""

import io
import json

import pytest
from PIL import Image

CREATE = "/api/v1/jobs/createTask"
IMG = "{images}/img/640x480.png"
FACE = "{images}/img/512x512.png"
MASK = "{images}/img/640x480.png?mask"

# model, a minimal valid input, the images made, the credits charged, the size of every image.
NEW_MODELS = [
    ("google/imagen4", {"prompt": "a lighthouse", "seed": "7"}, 1, 6, (1024, 1024)),
    ("google/imagen4-ultra", {"prompt": "a lighthouse", "aspect_ratio": "16:9"}, 1, 12, (1344, 768)),
    ("ideogram/character-edit", {"prompt": "smiling", "image_url": IMG, "mask_url": MASK,
                                 "reference_image_urls": [FACE], "num_images": "2"}, 2, 36, (1152, 896)),
    ("ideogram/character-remix", {"prompt": "at the beach", "image_url": IMG, "reference_image_urls": [FACE],
                                  "image_urls": [FACE], "reference_mask_urls": MASK}, 1, 18, (1024, 1024)),
    ("ideogram/v3-text-to-image", {"prompt": "a poster", "rendering_speed": "TURBO"}, 1, 4, (1024, 1024)),
    ("ideogram/v3-edit", {"prompt": "a hat", "image_url": IMG, "mask_url": MASK}, 1, 7, (1152, 896)),
    ("ideogram/v3-remix", {"prompt": "make it a sphere", "image_url": IMG, "strength": 0.3,
                           "image_size": "portrait_16_9"}, 1, 7, (576, 1024)),
    ("ideogram/v3-reframe", {"image_url": IMG, "image_size": "landscape_16_9", "rendering_speed": "QUALITY"},
     1, 10, (1024, 576)),
    ("flux-2/pro-text-to-image", {"prompt": "a blister pack", "aspect_ratio": "3:2", "resolution": "1K"},
     1, 5, (1280, 832)),
    ("flux-2/flex-text-to-image", {"prompt": "a blister pack", "aspect_ratio": "1:1", "resolution": "2K"},
     1, 24, (2048, 2048)),
    ("flux-2/flex-image-to-image", {"input_urls": [IMG, FACE], "prompt": "combine them", "aspect_ratio": "auto",
                                    "resolution": "1K"}, 1, 14, (1152, 896)),
    ("google/nano-banana", {"prompt": "a banana in space", "image_size": "9:16"}, 1, 4, (768, 1344)),
    ("google/nano-banana-edit", {"prompt": "make it a figure", "image_urls": [IMG]}, 1, 8, (1024, 1024)),
    ("nano-banana-2", {"prompt": "a banana spaceship", "aspect_ratio": "4:1"}, 1, 8, (2048, 512)),
    ("nano-banana-pro", {"prompt": "a comic poster", "image_input": [FACE, IMG], "aspect_ratio": "auto"},
     1, 18, (1024, 1024)),
]


def filled(value, images):
    if isinstance(value, str):
        return value.format(images=images)
    if isinstance(value, list):
        return [filled(item, images) for item in value]
    if isinstance(value, dict):
        return {key: filled(item, images) for key, item in value.items()}
    return value


async def test_the_new_models_are_all_listed():
    from safelight.catalog import MODELS

    assert {model for model, *_ in NEW_MODELS} | {"z-image", "flux-2/pro-image-to-image", "google/imagen4-fast",
                                                   "ideogram/character"} == set(MODELS)


@pytest.mark.parametrize(("model", "model_input", "count", "credits", "size"), NEW_MODELS,
                         ids=[model for model, *_ in NEW_MODELS])
async def test_every_new_model_succeeds_on_the_sandbox(live_server, image_server, model, model_input, count,
                                                       credits, size):
    body = {"model": model, "input": filled(model_input, image_server)}
    async with live_server.client() as client:
        created = (await client.post(CREATE, json=body)).json()
        assert created["code"] == 200, created
        record = await live_server.wait_terminal(created["data"]["taskId"])
        assert record["state"] == "success", record["failMsg"]
        assert json.loads(record["param"]) == body
        assert record["creditsConsumed"] == credits
        urls = json.loads(record["resultJson"])["resultUrls"]
        assert len(urls) == count
        for url in urls:
            assert Image.open(io.BytesIO((await client.get(url)).content)).size == size
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 1000 - credits


# A refusal per family, at createTask: code 422, the message names the field and the rule, nothing is charged.
REFUSALS = [
    ("google/imagen4", {"prompt": "p", "seed": 42}, "input.seed must be a string; got an integer"),
    ("google/imagen4-ultra", {"prompt": "p", "seed": "1" * 501}, "input.seed must be at most 500 characters; got 501"),
    ("nano-banana-pro", {"prompt": "p" * 10_001}, "input.prompt must be at most 10000 characters; got 10001"),
    ("nano-banana-pro", {"prompt": "p", "image_input": [IMG] * 9}, "input.image_input must have at most 8 items"),
    ("google/nano-banana-edit", {"prompt": "p"}, "input.image_urls is required"),
    ("ideogram/v3-edit", {"prompt": "p", "image_url": IMG}, "input.mask_url is required"),
    ("ideogram/v3-remix", {"prompt": "p", "image_url": IMG, "strength": 0},
     "input.strength must be at least 0.01; got 0"),
    ("ideogram/character-remix", {"prompt": "p", "image_url": IMG, "reference_image_urls": [FACE],
                                  "negative_prompt": "n" * 501},
     "input.negative_prompt must be at most 500 characters"),
    ("flux-2/pro-text-to-image", {"prompt": "a fox", "aspect_ratio": "1:1", "resolution": "4K"},
     "input.resolution must be one of 1K, 2K; got '4K'"),
    ("flux-2/flex-image-to-image", {"prompt": "a fox", "aspect_ratio": "1:1", "resolution": "1K"},
     "input.input_urls is required"),
]


@pytest.mark.parametrize(("model", "model_input", "expected"), REFUSALS, ids=[r[0] + ":" + r[2][:30] for r in REFUSALS])
async def test_a_refused_input_names_the_field_and_the_rule(live_server, image_server, model, model_input, expected):
    async with live_server.client() as client:
        reply = (await client.post(CREATE, json={"model": model, "input": filled(model_input, image_server)})).json()
        assert reply["code"] == 422 and reply["data"] is None
        assert expected in reply["msg"], reply["msg"]
        assert (await client.get("/api/v1/chat/credit")).json()["data"] == 1000
    assert await live_server.runtime.store.tasks.count_by_state() == {}


async def test_a_mask_that_is_not_an_image_fails_the_task(live_server, image_server):
    """The worker fetches the mask like any input image; a bad one fails the task and refunds it."""
    body = {"model": "ideogram/v3-edit", "input": {"prompt": "a hat", "image_url": f"{image_server}/img/64x64.png",
                                                   "mask_url": f"{image_server}/text.png"}}
    async with live_server.client() as client:
        created = (await client.post(CREATE, json=body)).json()
        record = await live_server.wait_terminal(created["data"]["taskId"])
    assert (record["state"], record["failCode"], record["creditsConsumed"]) == ("fail", "400", 0)
    assert f"{image_server}/text.png: not a JPEG, PNG or WebP image" in record["failMsg"]
    assert record["failMsg"].startswith("input.mask_url")  # the field it came from, not the first URL field


def test_the_readme_model_table_matches_the_catalog_and_the_backend_types():
    """Every catalog model has a row; every ✓ is a backend type that serves it, and every type that
    serves it has a ✓; the prices are the catalog's. Adding a model to a backend means a ✓ here."""
    from pathlib import Path

    from safelight.backends import backend_class
    from safelight.catalog import MODELS

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<!-- models-table"))
    header, _rule, *rows = [line for line in lines[start + 1:] if line.startswith("|")][:len(MODELS) + 2]
    types = [cell.strip(" `") for cell in header.strip("|").split("|")][3:]
    seen = []
    for row in rows:
        model, _what, credits, *marks = (cell.strip() for cell in row.strip("|").split("|"))
        model = model.strip("`")
        seen.append(model)
        spec = MODELS[model]
        assert credits.split(" (")[0] == " / ".join(str(v) for v in spec.prices.values()), model
        for backend_type, mark in zip(types, marks, strict=True):
            served = backend_class(backend_type).models
            assert (mark == "✓") == (served is None or model in served), f"README: {model} × {backend_type}"
    assert seen == list(MODELS)
