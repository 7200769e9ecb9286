"""Google's Gemini image models ("Nano Banana"): `google/nano-banana`, `google/nano-banana-edit`,
`nano-banana-2` and `nano-banana-pro` (kie spells the last two without the `google/` prefix).

Schemas (the union of the published versions):
- nano-banana (Gemini 2.5 Flash Image): henjicc/Henji-AI `docs/api/KIE/Image Models/Google/016-Google
  Nano Banana.md`: `aspect_ratio`, and the older `image_size` with the same values, now
  deprecated in its favour. Both are accepted; `aspect_ratio` wins when both are sent.
- nano-banana-edit: monet88/artio `docs/kie-api/google/nano-banana-edit.md` (older; also
  `docs/kie-api/gemini-2.5-flash-image.md`: `image_size` only) and Henji-AI `015-Nano Banana
  图片编辑.md` (newer: adds `aspect_ratio`, deprecates `image_size`). References are `image_urls`,
  1-10, JPEG/PNG/WebP, at most 10 MB each.
- nano-banana-2 (Gemini 3.1 Flash Image): monet88/artio `docs/kie-api/google/nano-banana-2.md`
  (with `google_search`) and Henji-AI `011-使用 nano-banana-2 生成内容.md` (without it). Prompt
  up to 20,000 characters, `image_input` up to 14 URLs (30 MB each), 15 aspect ratios including
  1:4, 4:1, 1:8, 8:1; `output_format` jpg (default) or png.
- nano-banana-pro (Gemini 3 Pro Image): monet88/artio `docs/kie-api/gemini-3-pro-image-preview.md`
  (and `google/nano-banana-pro.md`), Henji-AI `017-Nano Banana Pro 图生图.md`, identical: prompt up
  to 10,000 characters, `image_input` up to 8 URLs (JPEG/PNG/WebP, 30 MB each), 11 aspect ratios,
  `resolution` 1K/2K/4K, `output_format` png (default) or jpg.
`auto` follows the first input image; with no input image it is 1:1. kie's "jpg" is JPEG.
Prices (1 credit = $0.005): nano-banana 4 credits ($0.02); nano-banana-edit 8 ($0.04, monet88/artio
`docs/kie-api/kie-pricing.md`; other price lists give 4); nano-banana-2 8 / 12 / 18 and
nano-banana-pro 18 / 18 / 24 for 1K / 2K / 4K (vladholos492-wq/TRT-main
`scripts/generate_complete_pricing.py` for nano-banana and pro, and a kie client's price table
for nano-banana-2 and pro, "Image credits per API call").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from .base import GenerationParams, HttpUrl, ModelInput, ModelSpec, Prompt, bucket_size, output_format

# The same eleven ratios for Gemini 2.5 and 3 Pro (each in its page's order), and nano-banana-2's
# (Gemini 3.1 Flash) fifteen, with 1:4, 4:1, 1:8 and 8:1.
AspectRatio = Literal["1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "auto"]
AspectRatioPro = Literal["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto"]
AspectRatio2 = Literal[
    "auto", "1:1", "1:4", "16:9", "1:8", "21:9", "2:3", "3:2", "3:4", "4:1", "4:3", "4:5", "5:4", "8:1", "9:16"
]
Resolution = Literal["1K", "2K", "4K"]

ASPECT_RATIO = "Aspect ratio of the output; `auto` follows the first input image (1:1 without one)."
IMAGE_SIZE = "Deprecated name of aspect_ratio, same values; aspect_ratio wins when both are sent."
RESOLUTION = "Output resolution: 1K (~1 MP), 2K (~4 MP) or 4K (~16 MP); also the price tier."


class NanoBananaInput(ModelInput):
    prompt: Prompt = Field(description="What to generate (at most 5000 characters).")
    output_format: Literal["png", "jpeg"] = Field("png", description="File type of the result: png or jpeg.")
    aspect_ratio: AspectRatio = Field("1:1", description=ASPECT_RATIO)
    image_size: AspectRatio = Field("1:1", description=IMAGE_SIZE)


class NanoBananaEditInput(ModelInput):
    prompt: Prompt = Field(description="The edit instruction (at most 5000 characters).")
    image_urls: list[HttpUrl] = Field(
        min_length=1, max_length=10, description="Images to edit (1-10; JPEG, PNG or WebP; at most 10 MB each)."
    )
    output_format: Literal["png", "jpeg"] = Field("png", description="File type of the result: png or jpeg.")
    aspect_ratio: AspectRatio = Field("1:1", description=ASPECT_RATIO)
    image_size: AspectRatio = Field("1:1", description=IMAGE_SIZE)


class NanoBanana2Input(ModelInput):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=20000)] = Field(
        description="What to generate or how to change the input images (at most 20,000 characters)."
    )
    image_input: list[HttpUrl] = Field(
        [], max_length=14,
        description="Images to transform or use as references (up to 14; JPEG, PNG or WebP; 30 MB each).",
    )
    aspect_ratio: AspectRatio2 = Field("auto", description=ASPECT_RATIO)
    resolution: Resolution = Field("1K", description=RESOLUTION)
    output_format: Literal["jpg", "png"] = Field("jpg", description="File type of the result: jpg or png.")
    google_search: bool = Field(False, description="Ground the image in Google Web Search results (recent events).")


class NanoBananaProInput(ModelInput):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=10000)] = Field(
        description="What to generate or how to change the input images (at most 10,000 characters)."
    )
    image_input: list[HttpUrl] = Field(
        [], max_length=8,
        description="Images to transform or use as references (up to 8; JPEG, PNG or WebP; 30 MB each).",
    )
    aspect_ratio: AspectRatioPro = Field("1:1", description=ASPECT_RATIO)
    resolution: Resolution = Field("1K", description=RESOLUTION)
    output_format: Literal["png", "jpg"] = Field("png", description="File type of the result: png or jpg.")


def _size(aspect_ratio: str, resolution: str, has_references: bool) -> tuple[int | None, int | None]:
    """The bucket, or (None, None) for `auto` with an input image to follow."""
    if aspect_ratio == "auto":
        if has_references:
            return None, None
        aspect_ratio = "1:1"
    return bucket_size(aspect_ratio, resolution)


def _aspect(value: NanoBananaInput | NanoBananaEditInput) -> str:
    # The older `image_size` counts only when `aspect_ratio` was not sent.
    if "aspect_ratio" not in value.model_fields_set and "image_size" in value.model_fields_set:
        return value.image_size
    return value.aspect_ratio


def nano_banana_to_params(value: NanoBananaInput) -> GenerationParams:
    aspect = _aspect(value)
    width, height = _size(aspect, "1K", has_references=False)
    return GenerationParams(model=NANO_BANANA.id, prompt=value.prompt, width=width, height=height,
                            aspect_ratio=aspect, output_format=output_format(value.output_format))


def nano_banana_edit_to_params(value: NanoBananaEditInput) -> GenerationParams:
    aspect = _aspect(value)
    width, height = _size(aspect, "1K", has_references=True)
    return GenerationParams(model=NANO_BANANA_EDIT.id, prompt=value.prompt, width=width, height=height,
                            aspect_ratio=aspect, reference_urls=tuple(value.image_urls),
                            output_format=output_format(value.output_format))


def nano_banana_2_to_params(value: NanoBanana2Input) -> GenerationParams:
    width, height = _size(value.aspect_ratio, value.resolution, has_references=bool(value.image_input))
    return GenerationParams(model=NANO_BANANA_2.id, prompt=value.prompt, width=width, height=height,
                            aspect_ratio=value.aspect_ratio, resolution=value.resolution,
                            reference_urls=tuple(value.image_input), output_format=output_format(value.output_format),
                            options={"google_search": value.google_search})


def nano_banana_pro_to_params(value: NanoBananaProInput) -> GenerationParams:
    width, height = _size(value.aspect_ratio, value.resolution, has_references=bool(value.image_input))
    return GenerationParams(model=NANO_BANANA_PRO.id, prompt=value.prompt, width=width, height=height,
                            aspect_ratio=value.aspect_ratio, resolution=value.resolution,
                            reference_urls=tuple(value.image_input), output_format=output_format(value.output_format))


def _resolution(value: Any) -> str:
    return str(value.resolution)


NANO_BANANA = ModelSpec(
    id="google/nano-banana",
    title="Nano Banana",
    description="Text to image with Gemini 2.5 Flash Image.",
    input_schema=NanoBananaInput,
    prices={"default": 4},
    to_params=nano_banana_to_params,
)

NANO_BANANA_EDIT = ModelSpec(
    id="google/nano-banana-edit",
    title="Nano Banana Edit",
    description="Edit or combine 1-10 images from an instruction with Gemini 2.5 Flash Image.",
    input_schema=NanoBananaEditInput,
    prices={"default": 8},
    to_params=nano_banana_edit_to_params,
    url_fields=("image_urls",),
)

NANO_BANANA_2 = ModelSpec(
    id="nano-banana-2",
    title="Nano Banana 2",
    description="Gemini 3.1 Flash Image: text to image or editing with up to 14 images, 1K to 4K, wide ratios.",
    input_schema=NanoBanana2Input,
    prices={"1K": 8, "2K": 12, "4K": 18},
    price_tier=_resolution,
    to_params=nano_banana_2_to_params,
    url_fields=("image_input",),
)

NANO_BANANA_PRO = ModelSpec(
    id="nano-banana-pro",
    title="Nano Banana Pro",
    description="Gemini 3 Pro Image: text to image or editing with up to 8 images, 1K to 4K.",
    input_schema=NanoBananaProInput,
    prices={"1K": 18, "2K": 18, "4K": 24},
    price_tier=_resolution,
    to_params=nano_banana_pro_to_params,
    url_fields=("image_input",),
)

SPECS = (NANO_BANANA, NANO_BANANA_EDIT, NANO_BANANA_2, NANO_BANANA_PRO)
