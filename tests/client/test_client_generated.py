"""The SDK's typed inputs are generated from the server catalog (tools/render_client_models.py)
and must not drift from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from safelight.catalog import MODELS
from safelight.client import InputValidationError, ValidationError, ZImageInput, models
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
        # The same schema, except that the SDK's class refuses unknown fields (the server ignores them).
        server_schema = spec.input_schema.model_json_schema()
        assert cls.model_json_schema() == server_schema | {"additionalProperties": False}
        assert models.INPUT_SCHEMAS[model_id] == server_schema
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
    ("google/imagen4", {"prompt": "p", "seed": "a string seed", "aspect_ratio": "auto"}),
    ("google/imagen4", {"prompt": "p", "seed": 5}),
    ("google/imagen4-ultra", {"prompt": "p", "negative_prompt": "rain"}),
    ("google/imagen4-ultra", {"prompt": "p", "seed": "9" * 501}),
    ("flux-2/pro-text-to-image", {"prompt": "abc", "aspect_ratio": "16:9", "resolution": "2K"}),
    ("flux-2/flex-text-to-image", {"prompt": "abc", "aspect_ratio": "auto", "resolution": "1K", "nsfw_checker": True}),
    ("flux-2/flex-text-to-image", {"prompt": "abc", "aspect_ratio": "5:4", "resolution": "1K"}),
    ("flux-2/flex-image-to-image", {"prompt": "edit", "input_urls": ["https://a.test/1.png"], "aspect_ratio": "auto",
                                    "resolution": "1K"}),
    ("ideogram/character-edit", {"prompt": "p", "image_url": "https://a.test/i.png", "mask_url": "https://a.test/m.png",
                                 "reference_image_urls": ["https://a.test/r.png"]}),
    ("ideogram/character-edit", {"prompt": "p", "image_url": "https://a.test/i.png",
                                 "reference_image_urls": ["https://a.test/r.png"]}),
    ("ideogram/character-remix", {"prompt": "p", "image_url": "https://a.test/i.png", "strength": 0.5,
                                  "reference_image_urls": ["https://a.test/r.png"], "reference_mask_urls": ""}),
    ("ideogram/character-remix", {"prompt": "p", "image_url": "https://a.test/i.png", "strength": 0.05,
                                  "reference_image_urls": ["https://a.test/r.png"]}),
    ("ideogram/v3-text-to-image", {"prompt": "p", "style": "DESIGN", "image_size": "landscape_4_3"}),
    ("ideogram/v3-edit", {"prompt": "p", "image_url": "https://a.test/i.png", "mask_url": "https://a.test/m.png"}),
    ("ideogram/v3-remix", {"prompt": "p", "image_url": "https://a.test/i.png", "strength": 1}),
    ("ideogram/v3-remix", {"prompt": "p", "image_url": "https://a.test/i.png", "strength": "0.5"}),
    ("ideogram/v3-reframe", {"image_url": "https://a.test/i.png", "image_size": "portrait_16_9"}),
    ("ideogram/v3-reframe", {"image_url": "https://a.test/i.png"}),
    ("google/nano-banana", {"prompt": "p", "output_format": "jpeg", "image_size": "21:9"}),
    ("google/nano-banana-edit", {"prompt": "p", "image_urls": ["https://a.test/i.png"], "aspect_ratio": "auto"}),
    ("google/nano-banana-edit", {"prompt": "p", "image_urls": []}),
    ("nano-banana-2", {"prompt": "p", "aspect_ratio": "1:8", "resolution": "4K", "google_search": True}),
    ("nano-banana-pro", {"prompt": "p", "image_input": ["https://a.test/i.png"], "output_format": "jpg"}),
    ("nano-banana-pro", {"prompt": "p" * 10001}),
]


def outcome(cls, value):
    try:
        return cls.model_validate(value).model_dump()
    except (pydantic.ValidationError, InputValidationError) as exc:
        return [(e["loc"], e["type"]) for e in exc.errors()]


@pytest.mark.parametrize(("model_id", "value"), CASES)
def test_sdk_and_server_agree(model_id, value):
    assert outcome(models.MODEL_IDS[model_id], value) == outcome(MODELS[model_id].input_schema, value)


@pytest.mark.parametrize("model_id", list(MODELS))
def test_unknown_fields_are_refused_by_the_sdk_and_ignored_by_the_server(model_id):
    valid = next(value for model, value in CASES if model == model_id)  # each model's first case is valid
    value = {**valid, "aspect_ratoi": "16:9"}
    assert outcome(models.MODEL_IDS[model_id], value) == [(("aspect_ratoi",), "extra_forbidden")]
    assert outcome(MODELS[model_id].input_schema, value) == outcome(MODELS[model_id].input_schema, valid)


def test_a_bad_typed_input_raises_the_sdks_validation_error():
    with pytest.raises(ValidationError) as info:
        ZImageInput(prompt=1, aspect_ratio="1:1")
    error = info.value
    assert isinstance(error, InputValidationError) and isinstance(error, ValueError)
    assert not isinstance(error, pydantic.ValidationError)  # pydantic's own error no longer escapes
    assert error.code == 422 and error.model == "z-image"
    assert error.msg == "invalid input for z-image: input.prompt: Input should be a valid string"
    assert [(e["loc"], e["type"]) for e in error.errors()] == [(("prompt",), "string_type")]
    assert isinstance(error.pydantic_error, pydantic.ValidationError)

    with pytest.raises(ValidationError, match=r"input\.seed is not a field of this model \(fields: prompt, "
                                              r"aspect_ratio, nsfw_checker\)"):
        ZImageInput(prompt="p", aspect_ratio="1:1", seed=5)
    # model_validate and model_validate_json too, without pydantic's wrapping of the constructor's error.
    for attempt in (lambda: ZImageInput.model_validate({"prompt": "p"}),
                    lambda: ZImageInput.model_validate_json('{"prompt": "p"}'),
                    lambda: ZImageInput.model_validate("not a dict")):
        with pytest.raises(InputValidationError) as info:
            attempt()
        assert "Value error" not in str(info.value)
    assert ZImageInput.model_validate({"prompt": "p", "aspect_ratio": "1:1"}).to_input() == {
        "prompt": "p", "aspect_ratio": "1:1"}


def test_generated_module_does_not_import_the_catalog():
    code = "import sys, safelight.client.models; assert 'safelight.catalog' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
