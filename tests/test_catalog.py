"""The catalog's schemas, exactly as kie documents them (spec/kie-api.md §2-3; union of doc versions)."""

import pytest

from safelight.catalog import MODELS, InvalidInputError, bucket_size, get_model, nearest_bucket, validate_input

URL = "https://example.com/a.png"
VALID = {
    "z-image": {"prompt": "a cat", "aspect_ratio": "1:1"},
    "flux-2/pro-image-to-image": {"input_urls": [URL], "prompt": "make it blue", "aspect_ratio": "auto",
                                  "resolution": "1K"},
    "google/imagen4-fast": {"prompt": "a dog"},
    "ideogram/character": {"prompt": "the hero waves", "reference_image_urls": [URL]},
    "google/imagen4": {"prompt": "a dog"},
    "google/imagen4-ultra": {"prompt": "a dog"},
    "ideogram/character-edit": {"prompt": "smiling", "image_url": URL, "mask_url": URL + "?mask",
                                "reference_image_urls": [URL + "?face"]},
    "ideogram/character-remix": {"prompt": "at the beach", "image_url": URL, "reference_image_urls": [URL + "?face"]},
    "ideogram/v3-text-to-image": {"prompt": "a poster that says hello"},
    "ideogram/v3-edit": {"prompt": "a hat", "image_url": URL, "mask_url": URL + "?mask"},
    "ideogram/v3-remix": {"prompt": "make it a sphere", "image_url": URL},
    "ideogram/v3-reframe": {"image_url": URL, "image_size": "landscape_16_9"},
    "flux-2/pro-text-to-image": {"prompt": "a blister pack", "aspect_ratio": "1:1", "resolution": "1K"},
    "flux-2/flex-text-to-image": {"prompt": "a blister pack", "aspect_ratio": "1:1", "resolution": "1K"},
    "flux-2/flex-image-to-image": {"input_urls": [URL], "prompt": "make it blue", "aspect_ratio": "auto",
                                   "resolution": "1K"},
    "google/nano-banana": {"prompt": "a banana in space"},
    "google/nano-banana-edit": {"prompt": "turn it into a figure", "image_urls": [URL]},
    "nano-banana-2": {"prompt": "a banana spaceship"},
    "nano-banana-pro": {"prompt": "a comic poster"},
}


def error_for(model_id, raw):
    with pytest.raises(InvalidInputError) as info:
        validate_input(get_model(model_id), raw)
    return str(info.value)


def test_every_model_is_registered():
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
    # imagen4 and imagen4-ultra: the seed is a string of at most 500 characters, unlike imagen4-fast's.
    ("google/imagen4", {"seed": 42}, "input.seed must be a string; got an integer"),
    ("google/imagen4-ultra", {"seed": "9" * 501}, "input.seed must be at most 500 characters; got 501"),
    ("google/imagen4", {"aspect_ratio": "3:2"}, "input.aspect_ratio must be one of 1:1, 16:9, 9:16, 3:4, 4:3, auto"),
    ("google/imagen4-ultra", {"negative_prompt": "n" * 5001}, "input.negative_prompt must be at most 5000"),
    ("ideogram/character-edit", {"mask_url": "mask.png"}, "input.mask_url must be an http or https URL"),
    ("ideogram/character-edit", {"style": "DESIGN"}, "input.style must be one of AUTO, REALISTIC, FICTION"),
    ("ideogram/character-remix", {"strength": 0.05}, "input.strength must be at least 0.1; got 0.05"),
    ("ideogram/character-remix", {"negative_prompt": "n" * 501}, "input.negative_prompt must be at most 500"),
    ("ideogram/character-remix", {"reference_mask_urls": ["https://a.test/m.png"]},
     "input.reference_mask_urls must be a string; got an array"),
    ("ideogram/character-remix", {"image_urls": [URL] * 11}, "input.image_urls must have at most 10 items"),
    ("ideogram/v3-text-to-image", {"style": "FICTION"}, "input.style must be one of AUTO, GENERAL, REALISTIC, DESIGN"),
    ("ideogram/v3-text-to-image", {"seed": "7"}, "input.seed must be an integer; got a string"),
    ("ideogram/v3-edit", {"image_url": ""}, "input.image_url must be at least 8 characters"),
    ("ideogram/v3-remix", {"strength": 1.5}, "input.strength must be at most 1; got 1.5"),
    ("ideogram/v3-remix", {"strength": "0.5"}, "input.strength must be a number; got a string"),
    ("ideogram/v3-remix", {"num_images": 2}, "input.num_images must be one of 1, 2, 3, 4 (a string)"),
    ("ideogram/v3-reframe", {"image_size": "16:9"}, "input.image_size must be one of square, square_hd"),
    ("flux-2/pro-text-to-image", {"resolution": "4K"}, "input.resolution must be one of 1K, 2K; got '4K'"),
    ("flux-2/flex-text-to-image", {"prompt": "ab"}, "input.prompt must be at least 3 characters"),
    ("flux-2/flex-image-to-image", {"input_urls": [URL] * 9}, "input.input_urls must have at most 8 items"),
    ("google/nano-banana", {"output_format": "jpg"}, "input.output_format must be one of png, jpeg; got 'jpg'"),
    ("google/nano-banana", {"aspect_ratio": "8:1"}, "input.aspect_ratio must be one of 1:1, 9:16"),
    ("google/nano-banana-edit", {"image_urls": [URL] * 11}, "input.image_urls must have at most 10 items"),
    ("google/nano-banana-edit", {"image_size": "2:1"}, "input.image_size must be one of 1:1, 9:16"),
    ("nano-banana-2", {"prompt": "p" * 20001}, "input.prompt must be at most 20000 characters; got 20001"),
    ("nano-banana-2", {"image_input": [URL] * 15}, "input.image_input must have at most 14 items"),
    ("nano-banana-2", {"output_format": "webp"}, "input.output_format must be one of jpg, png; got 'webp'"),
    ("nano-banana-2", {"google_search": "yes"}, "input.google_search must be a boolean; got a string"),
    ("nano-banana-pro", {"prompt": "p" * 10001}, "input.prompt must be at most 10000 characters; got 10001"),
    ("nano-banana-pro", {"image_input": [URL] * 9}, "input.image_input must have at most 8 items"),
    ("nano-banana-pro", {"aspect_ratio": "1:4"}, "input.aspect_ratio must be one of 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, "
                                                 "9:16, 16:9, 21:9, auto; got '1:4'"),
    ("nano-banana-pro", {"resolution": "8K"}, "input.resolution must be one of 1K, 2K, 4K; got '8K'"),
    ("nano-banana-pro", {"output_format": "jpeg"}, "input.output_format must be one of png, jpg; got 'jpeg'"),
])
def test_invalid_fields_name_the_field_and_the_rule(model_id, patch, expected):
    assert expected in error_for(model_id, {**VALID[model_id], **patch})


@pytest.mark.parametrize(("model_id", "field"), [
    ("z-image", "prompt"), ("z-image", "aspect_ratio"),
    ("flux-2/pro-image-to-image", "input_urls"), ("flux-2/pro-image-to-image", "prompt"),
    ("flux-2/pro-image-to-image", "aspect_ratio"), ("flux-2/pro-image-to-image", "resolution"),
    ("google/imagen4-fast", "prompt"),
    ("ideogram/character", "prompt"), ("ideogram/character", "reference_image_urls"),
    ("google/imagen4", "prompt"), ("google/imagen4-ultra", "prompt"),
    ("ideogram/character-edit", "image_url"), ("ideogram/character-edit", "mask_url"),
    ("ideogram/character-edit", "reference_image_urls"), ("ideogram/character-remix", "image_url"),
    ("ideogram/character-remix", "reference_image_urls"), ("ideogram/v3-text-to-image", "prompt"),
    ("ideogram/v3-edit", "prompt"), ("ideogram/v3-edit", "mask_url"), ("ideogram/v3-remix", "image_url"),
    ("ideogram/v3-reframe", "image_url"), ("ideogram/v3-reframe", "image_size"),
    ("flux-2/pro-text-to-image", "aspect_ratio"), ("flux-2/flex-text-to-image", "resolution"),
    ("flux-2/flex-image-to-image", "input_urls"), ("google/nano-banana", "prompt"),
    ("google/nano-banana-edit", "image_urls"), ("nano-banana-2", "prompt"), ("nano-banana-pro", "prompt"),
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


def params_of(model_id, patch=None):
    spec = get_model(model_id)
    return spec.to_params(validate_input(spec, {**VALID[model_id], **(patch or {})}))


def price_of(model_id, patch=None):
    spec = get_model(model_id)
    return spec.price_per_image(validate_input(spec, {**VALID[model_id], **(patch or {})}))


@pytest.mark.parametrize(("model_id", "patch", "credits"), [
    ("google/imagen4", {}, 6), ("google/imagen4-ultra", {}, 12),
    ("flux-2/pro-text-to-image", {}, 5), ("flux-2/pro-text-to-image", {"resolution": "2K"}, 7),
    ("flux-2/flex-text-to-image", {}, 14), ("flux-2/flex-image-to-image", {"resolution": "2K"}, 24),
    ("ideogram/character-edit", {"rendering_speed": "TURBO"}, 12), ("ideogram/character-remix", {}, 18),
    ("ideogram/v3-text-to-image", {"rendering_speed": "TURBO"}, 4),  # kie's 3.5, rounded up
    ("ideogram/v3-edit", {}, 7), ("ideogram/v3-remix", {"rendering_speed": "QUALITY"}, 10),
    ("ideogram/v3-reframe", {"rendering_speed": "QUALITY"}, 10),
    ("google/nano-banana", {}, 4), ("google/nano-banana-edit", {}, 8),
    ("nano-banana-2", {}, 8), ("nano-banana-2", {"resolution": "2K"}, 12), ("nano-banana-2", {"resolution": "4K"}, 18),
    ("nano-banana-pro", {}, 18), ("nano-banana-pro", {"resolution": "2K"}, 18),
    ("nano-banana-pro", {"resolution": "4K"}, 24),
])
def test_prices_of_the_families_follow_kies_list(model_id, patch, credits):
    assert price_of(model_id, patch) == credits


def test_every_field_is_described_and_every_family_module_cites_its_sources():
    import safelight.catalog as catalog

    for spec in MODELS.values():
        for name, info in spec.input_schema.model_fields.items():
            assert info.description, f"{spec.id}: input.{name} has no description"
    for family in catalog.FAMILIES:
        assert "Henji-AI" in family.__doc__ or "spec/kie-api.md" in family.__doc__, family.__name__
        assert all(spec.id in family.__doc__ for spec in family.SPECS), family.__name__


def test_imagen4_string_seeds_map_to_stable_generator_seeds():
    assert params_of("google/imagen4").seed is None  # "" and absent: no seed
    assert params_of("google/imagen4", {"seed": ""}).seed is None
    assert params_of("google/imagen4", {"seed": "42"}).seed == 42
    text = params_of("google/imagen4-ultra", {"seed": "my favourite seed"}).seed
    assert text == params_of("google/imagen4-ultra", {"seed": "my favourite seed"}).seed
    assert text != params_of("google/imagen4-ultra", {"seed": "another seed"}).seed
    assert 0 <= text < 2**63
    huge = params_of("google/imagen4", {"seed": "9" * 500}).seed
    assert 0 <= huge < 2**63
    default = params_of("google/imagen4", {"aspect_ratio": "auto", "negative_prompt": "rain"})
    assert ((default.width, default.height), default.negative_prompt) == ((1024, 1024), "rain")


def test_flux2_text_to_image_sizes_and_auto():
    assert (params_of("flux-2/pro-text-to-image", {"aspect_ratio": "16:9", "resolution": "2K"}).width,
            params_of("flux-2/pro-text-to-image", {"aspect_ratio": "16:9", "resolution": "2K"}).height) == (2752, 1536)
    auto = params_of("flux-2/flex-text-to-image", {"aspect_ratio": "auto"})  # no image to follow: square
    assert (auto.width, auto.height, auto.reference_urls, auto.batch_key is not None) == (1024, 1024, (), True)
    flex = params_of("flux-2/flex-image-to-image", {"input_urls": [URL, URL + "?2"], "aspect_ratio": "3:4"})
    assert (flex.width, flex.height, flex.reference_urls, flex.batch_key) == (896, 1152, (URL, URL + "?2"), None)


def test_ideogram_edit_models_name_the_role_of_every_image():
    edit = params_of("ideogram/v3-edit")
    assert edit.reference_urls == (URL, URL + "?mask")
    assert (edit.roles, edit.image_url, edit.mask_url) == (("image", "mask"), URL, URL + "?mask")
    assert (edit.width, edit.height, edit.batch_key) == (None, None, None)  # the base image's size
    assert dict(edit.options) == {"rendering_speed": "BALANCED", "expand_prompt": True}
    character = params_of("ideogram/character-edit", {"reference_image_urls": [URL + "?face", URL + "?other"]})
    assert character.reference_urls == (URL, URL + "?mask", URL + "?face")  # only the first portrait is used
    assert character.roles == ("image", "mask", "character")
    remix = params_of("ideogram/character-remix", {"image_urls": [URL + "?style"], "reference_mask_urls": URL + "?cm",
                                                   "strength": 0.3, "image_size": "portrait_4_3", "num_images": "3"})
    assert remix.roles == ("image", "character", "character_mask", "style")
    assert remix.reference_fields == ("input.image_url", "input.reference_image_urls[0]", "input.reference_mask_urls",
                                      "input.image_urls[0]")
    assert edit.reference_fields == ("input.image_url", "input.mask_url")
    assert remix.urls_with_role("style") == (URL + "?style",)
    assert (remix.strength, remix.width, remix.height, remix.num_images, remix.mask_url) == (0.3, 768, 1024, 3, None)
    assert params_of("ideogram/character-remix").roles == ("image", "character")  # "" is no mask
    v3_remix = params_of("ideogram/v3-remix", {"strength": 1})
    assert (v3_remix.strength, v3_remix.image_url, v3_remix.negative_prompt) == (1.0, URL, None)
    reframe = params_of("ideogram/v3-reframe", {"num_images": "2", "seed": 9})
    assert (reframe.prompt, reframe.width, reframe.height, reframe.num_images, reframe.seed) == ("", 1024, 576, 2, 9)
    text = params_of("ideogram/v3-text-to-image", {"style": "DESIGN", "image_size": "landscape_4_3"})
    assert (text.width, text.height, text.options["style"], text.reference_urls) == (1024, 768, "DESIGN", ())
    assert text.batch_key is not None
    assert params_of("ideogram/character").roles == ("character",)


def test_every_url_field_is_checked_including_masks_and_single_url_strings():
    spec = get_model("ideogram/character-remix")
    value = validate_input(spec, {**VALID["ideogram/character-remix"], "image_urls": [URL + "?s"],
                                  "reference_mask_urls": URL + "?cm"})
    assert spec.input_urls(value) == [("input.image_url", URL), ("input.reference_image_urls[0]", URL + "?face"),
                                      ("input.image_urls[0]", URL + "?s"), ("input.reference_mask_urls", URL + "?cm")]
    assert spec.input_urls(validate_input(spec, VALID["ideogram/character-remix"])) == [
        ("input.image_url", URL), ("input.reference_image_urls[0]", URL + "?face")]
    edit = get_model("ideogram/v3-edit")
    assert [field for field, _ in edit.input_urls(validate_input(edit, VALID["ideogram/v3-edit"]))] == [
        "input.image_url", "input.mask_url"]
    for spec in MODELS.values():  # every URL a model takes is listed, so create-time checks see it
        urls = {url for _, url in spec.input_urls(validate_input(spec, VALID[spec.id]))}
        assert set(spec.to_params(validate_input(spec, VALID[spec.id])).reference_urls) <= urls, spec.id


def test_nano_banana_output_formats_aspect_names_and_references():
    assert params_of("google/nano-banana").output_format == "png"
    assert params_of("google/nano-banana", {"output_format": "jpeg"}).output_format == "jpeg"
    assert params_of("nano-banana-2").output_format == "jpeg"  # kie's default "jpg"
    assert params_of("nano-banana-pro", {"output_format": "jpg"}).output_format == "jpeg"
    assert params_of("nano-banana-pro").output_format == "png"
    # The older `image_size` still works; `aspect_ratio` wins when both are sent.
    old = params_of("google/nano-banana", {"image_size": "9:16"})
    assert (old.aspect_ratio, old.width, old.height) == ("9:16", 768, 1344)
    both = params_of("google/nano-banana", {"image_size": "9:16", "aspect_ratio": "4:5"})
    assert (both.aspect_ratio, both.width, both.height) == ("4:5", 960, 1216)
    edit = params_of("google/nano-banana-edit", {"image_urls": [URL, URL + "?2"], "aspect_ratio": "auto"})
    assert (edit.reference_urls, edit.width, edit.height, edit.batch_key) == ((URL, URL + "?2"), None, None, None)
    # nano-banana-2's default is auto: square without images, the first image's shape with them.
    text = params_of("nano-banana-2", {"resolution": "2K"})
    assert (text.width, text.height, text.resolution, text.options["google_search"]) == (2048, 2048, "2K", False)
    assert params_of("nano-banana-2", {"image_input": [URL]}).width is None
    wide = params_of("nano-banana-2", {"aspect_ratio": "8:1", "resolution": "4K"})
    assert (wide.width, wide.height) == (11776, 1472)
    pro = params_of("nano-banana-pro", {"image_input": [URL] * 8, "aspect_ratio": "21:9", "resolution": "4K"})
    assert (pro.width, pro.height, len(pro.reference_urls), pro.batch_key) == (6272, 2688, 8, None)
    plain = params_of("nano-banana-pro", {"prompt": "p" * 10000})
    assert (plain.width, plain.height, plain.batch_key is not None) == (1024, 1024, True)


def test_every_bucket_is_a_multiple_of_64_near_its_area_and_ratio():
    from safelight.catalog import BUCKETS

    areas = {"1K": 1024**2, "2K": 2048**2, "4K": 4096**2}
    assert set(BUCKETS["2K"]) == set(BUCKETS["1K"]) == set(BUCKETS["4K"])
    for resolution, table in BUCKETS.items():
        for aspect, (width, height) in table.items():
            across, down = (int(n) for n in aspect.split(":"))
            assert width % 64 == 0 and height % 64 == 0, (resolution, aspect)
            assert abs(width / height / (across / down) - 1) < 0.04, (resolution, aspect)
            assert 0.9 < width * height / areas[resolution] < 1.2, (resolution, aspect)
    assert nearest_bucket(4000, 1000) == (2048, 512)


def test_generation_params_refuse_inconsistent_roles_and_formats():
    from safelight.catalog import GenerationParams

    with pytest.raises(ValueError, match="reference_roles has 1 entries for 2 reference_urls"):
        GenerationParams(model="m", prompt="p", reference_urls=(URL, URL), reference_roles=("image",))
    with pytest.raises(ValueError, match="reference_fields has 1 entries for 2 reference_urls"):
        GenerationParams(model="m", prompt="p", reference_urls=(URL, URL), reference_fields=("input.image_url",))
    with pytest.raises(ValueError, match="unknown reference role 'photo'"):
        GenerationParams(model="m", prompt="p", reference_urls=(URL,), reference_roles=("photo",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="output_format must be png, jpeg or webp; got 'jpg'"):
        GenerationParams(model="m", prompt="p", output_format="jpg")
    assert GenerationParams(model="m", prompt="p", reference_urls=(URL,)).roles == ("reference",)
