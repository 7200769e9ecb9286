"""The SDK's typed inputs are generated from the server catalog (tools/render_client_models.py)
and must not drift from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from safelight.catalog import MODELS
from safelight.client import models
from tools import render_client_models


def test_generated_module_is_current():
    committed = Path(models.__file__).read_text(encoding="utf-8")
    assert render_client_models.render() == committed, "run: python -m tools.render_client_models"


def test_check_mode_reports_fresh():
    assert render_client_models.main(["--check"]) == 0


def test_generated_classes_have_the_catalog_schemas():
    assert list(models.MODEL_IDS) == list(MODELS)
    for model_id, spec in MODELS.items():
        cls = models.MODEL_IDS[model_id]
        assert cls.model_id == model_id
        assert cls.__name__ == spec.input_schema.__name__
        assert cls.model_json_schema() == spec.input_schema.model_json_schema() == models.INPUT_SCHEMAS[model_id]
    for entry in models.CATALOG:
        spec = MODELS[entry["id"]]
        assert (entry["title"], entry["prices"], tuple(entry["url_fields"])) == (
            spec.title, dict(spec.prices), spec.url_fields)


# The same inputs, accepted or refused alike by the server's catalog and the SDK's classes.
CASES = [
    ("z-image", {"prompt": "p", "aspect_ratio": "1:1"}),
    ("z-image", {"prompt": "p"}),
    ("z-image", {"prompt": "x" * 1001, "aspect_ratio": "1:1"}),
    ("z-image", {"prompt": "p", "aspect_ratio": "1:1", "nsfw_checker": 1}),
    ("z-image", {"prompt": "p", "aspect_ratio": "1:1", "unknown": "ignored"}),
    ("google/imagen4-fast", {"prompt": "p", "num_images": "4", "aspect_ratio": "auto", "seed": -5}),
    ("google/imagen4-fast", {"prompt": "p", "num_images": 4}),
    ("google/imagen4-fast", {"prompt": "p", "seed": "5"}),
    ("flux-2/pro-image-to-image", {"prompt": "edit", "input_urls": ["https://a.test/1.png"], "aspect_ratio": "auto",
                                   "resolution": "2K"}),
    ("flux-2/pro-image-to-image", {"prompt": "ed", "input_urls": ["https://a.test/1.png"], "aspect_ratio": "1:1",
                                   "resolution": "1K"}),
    ("flux-2/pro-image-to-image", {"prompt": "edit", "input_urls": ["ftp://a.test/1.png"], "aspect_ratio": "1:1",
                                   "resolution": "1K"}),
    ("flux-2/pro-image-to-image", {"prompt": "edit", "input_urls": ["https://a.test/x.png"] * 9,
                                   "aspect_ratio": "1:1", "resolution": "1K"}),
    ("ideogram/character", {"prompt": "p", "reference_image_urls": ["https://a.test/r.png"],
                            "rendering_speed": "TURBO", "expand_prompt": False, "image_size": "portrait_16_9"}),
    ("ideogram/character", {"prompt": "p", "reference_image_urls": []}),
    ("ideogram/character", {"prompt": "p", "reference_image_urls": ["https://a.test/r.png"], "style": "ANIME"}),
]


@pytest.mark.parametrize(("model_id", "value"), CASES)
def test_sdk_and_server_agree(model_id, value):
    def outcome(cls):
        try:
            return cls.model_validate(value).model_dump()
        except pydantic.ValidationError as exc:
            return [(e["loc"], e["type"]) for e in exc.errors()]

    assert outcome(models.MODEL_IDS[model_id]) == outcome(MODELS[model_id].input_schema)


def test_generated_module_does_not_import_the_catalog():
    code = "import sys, safelight.client.models; assert 'safelight.catalog' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
