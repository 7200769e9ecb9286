"""The four models' schemas, exactly as spec/kie-api.md §2 gives them (union of doc versions)."""

import pytest

from safelight.catalog import MODELS, InvalidInputError, bucket_size, get_model, nearest_bucket, validate_input

URL = "https://example.com/a.png"
VALID = {
    "z-image": {"prompt": "a cat", "aspect_ratio": "1:1"},
    "flux-2/pro-image-to-image": {"input_urls": [URL], "prompt": "make it blue", "aspect_ratio": "auto",
                                  "resolution": "1K"},
    "google/imagen4-fast": {"prompt": "a dog"},
    "ideogram/character": {"prompt": "the hero waves", "reference_image_urls": [URL]},
}


def error_for(model_id, raw):
    with pytest.raises(InvalidInputError) as info:
        validate_input(get_model(model_id), raw)
    return str(info.value)


def test_the_four_models_are_registered():
    assert set(MODELS) == set(VALID)


@pytest.mark.parametrize("model_id", list(VALID))
def test_minimal_valid_input_is_accepted(model_id):
    validate_input(get_model(model_id), VALID[model_id])


@pytest.mark.parametrize(("model_id", "patch", "expected"), [
    ("z-image", {"aspect_ratio": "2:1"}, "input.aspect_ratio must be one of 1:1, 4:3, 3:4, 16:9, 9:16; got '2:1'"),
    ("z-image", {"aspect_ratio": "auto"}, "input.aspect_ratio must be one of"),
    ("z-image", {"prompt": "x" * 1001}, "input.prompt must be at most 1000 characters; got 1001"),
    ("z-image", {"nsfw_checker": "yes"}, "input.nsfw_checker must be a boolean; got a string"),
    ("z-image", {"prompt": 5}, "input.prompt must be a string; got an integer"),
    ("flux-2/pro-image-to-image", {"prompt": "ab"}, "input.prompt must be at least 3 characters"),
    ("flux-2/pro-image-to-image", {"input_urls": []}, "input.input_urls must have at least 1 item"),
    ("flux-2/pro-image-to-image", {"input_urls": [URL] * 9}, "input.input_urls must have at most 8 items"),
    ("flux-2/pro-image-to-image", {"input_urls": URL}, "input.input_urls must be an array"),
    ("flux-2/pro-image-to-image", {"input_urls": ["ftp://x.org/a.png"]},
     "input.input_urls[0] must be an http or https URL"),
    ("flux-2/pro-image-to-image", {"resolution": "4K"}, "input.resolution must be one of 1K, 2K; got '4K'"),
    ("flux-2/pro-image-to-image", {"aspect_ratio": "5:4"}, "input.aspect_ratio must be one of"),
    ("google/imagen4-fast", {"num_images": 2}, 'input.num_images must be one of 1, 2, 3, 4 (a string)'),
    ("google/imagen4-fast", {"num_images": "5"}, "input.num_images must be one of 1, 2, 3, 4; got '5'"),
    ("google/imagen4-fast", {"seed": "42"}, "input.seed must be an integer; got a string"),
    ("google/imagen4-fast", {"negative_prompt": "n" * 5001}, "input.negative_prompt must be at most 5000"),
    ("google/imagen4-fast", {"prompt": "p" * 5001}, "input.prompt must be at most 5000"),
    ("ideogram/character", {"rendering_speed": "FAST"}, "input.rendering_speed must be one of TURBO, BALANCED"),
    ("ideogram/character", {"style": "GENERAL"}, "input.style must be one of AUTO, REALISTIC, FICTION"),
    ("ideogram/character", {"image_size": "portrait_2_3"}, "input.image_size must be one of square, square_hd"),
    ("ideogram/character", {"expand_prompt": 1}, "input.expand_prompt must be a boolean; got an integer"),
])
def test_invalid_fields_name_the_field_and_the_rule(model_id, patch, expected):
    assert expected in error_for(model_id, {**VALID[model_id], **patch})


@pytest.mark.parametrize(("model_id", "field"), [
    ("z-image", "prompt"), ("z-image", "aspect_ratio"),
    ("flux-2/pro-image-to-image", "input_urls"), ("flux-2/pro-image-to-image", "prompt"),
    ("flux-2/pro-image-to-image", "aspect_ratio"), ("flux-2/pro-image-to-image", "resolution"),
    ("google/imagen4-fast", "prompt"),
    ("ideogram/character", "prompt"), ("ideogram/character", "reference_image_urls"),
])
def test_required_fields_are_required_even_with_documented_defaults(model_id, field):
    raw = dict(VALID[model_id])
    del raw[field]
    assert error_for(model_id, raw) == f"input.{field} is required"


def test_union_of_doc_versions_is_accepted():
    imagen = get_model("google/imagen4-fast")
    value = validate_input(imagen, {"prompt": "x", "aspect_ratio": "auto", "num_images": "4", "seed": -5})
    params = imagen.to_params(value)
    assert (params.num_images, params.seed, (params.width, params.height)) == (4, -5, (1024, 1024))
    validate_input(get_model("z-image"), {**VALID["z-image"], "nsfw_checker": True})
    validate_input(get_model("flux-2/pro-image-to-image"), {**VALID["flux-2/pro-image-to-image"],
                                                            "nsfw_checker": False})


def test_input_must_be_an_object():
    assert error_for("z-image", ["prompt"]) == "input must be an object"


def test_unknown_fields_are_ignored_like_kie():
    value = validate_input(get_model("z-image"), {**VALID["z-image"], "seed": 3, "extra": {"a": 1}})
    assert not hasattr(value, "extra")


def test_prices_follow_the_spec_and_overrides():
    flux = get_model("flux-2/pro-image-to-image")
    one_k = validate_input(flux, VALID["flux-2/pro-image-to-image"])
    two_k = validate_input(flux, {**VALID["flux-2/pro-image-to-image"], "resolution": "2K"})
    assert (flux.price_per_image(one_k), flux.price_per_image(two_k)) == (5, 7)
    assert flux.price_per_image(two_k, {"flux-2/pro-image-to-image:2K": 9}) == 9
    assert flux.price_per_image(one_k, {"flux-2/pro-image-to-image": 3}) == 3
    imagen = get_model("google/imagen4-fast")
    four = validate_input(imagen, {"prompt": "x", "num_images": "4"})
    assert imagen.price_per_image(four) * imagen.image_count(four) == 16
    ideogram = get_model("ideogram/character")
    quality = validate_input(ideogram, {**VALID["ideogram/character"], "rendering_speed": "QUALITY"})
    assert ideogram.price_per_image(quality) == 24


def test_buckets_are_multiples_of_64_and_match_the_table():
    assert bucket_size("16:9") == (1344, 768)
    assert bucket_size("3:4", "2K") == (1792, 2368)
    assert nearest_bucket(1920, 1080) == (1344, 768)
    assert nearest_bucket(1000, 1500, "2K") == (1664, 2496)


def test_generation_params_map_each_model():
    flux = get_model("flux-2/pro-image-to-image")
    params = flux.to_params(validate_input(flux, {**VALID["flux-2/pro-image-to-image"], "aspect_ratio": "3:2",
                                                  "resolution": "2K", "input_urls": [URL, URL + "?2"]}))
    assert (params.width, params.height, params.reference_urls) == (2496, 1664, (URL, URL + "?2"))
    auto = flux.to_params(validate_input(flux, VALID["flux-2/pro-image-to-image"]))
    assert (auto.width, auto.height) == (None, None)
    ideogram = get_model("ideogram/character")
    params = ideogram.to_params(validate_input(ideogram, {**VALID["ideogram/character"],
                                                          "image_size": "portrait_16_9", "num_images": "2",
                                                          "reference_image_urls": [URL, URL + "?x"]}))
    assert (params.width, params.height, params.num_images, params.reference_urls) == (576, 1024, 2, (URL,))
