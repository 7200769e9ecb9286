"""FLUX.2 (Black Forest Labs): `flux-2/pro-image-to-image`, `flux-2/pro-text-to-image`,
`flux-2/flex-text-to-image`, `flux-2/flex-image-to-image`.

Schemas (the union of the published versions, spec/kie-api.md §2.3 and §3): monet88/artio
`docs/kie-api/flux2/flux2-{pro,flex}-{text,image}-to-image.md` (older: `auto` in every aspect enum,
no `nsfw_checker`) and henjicc/Henji-AI `docs/api/KIE/Image Models/Flux-2/018-021` (newer: adds
`nsfw_checker`; drops `auto` from pro's enums while still describing it). Union: `auto` and
`nsfw_checker` everywhere. The four share their fields; the image-to-image models add `input_urls`
(1-8 references, JPEG/PNG/WebP, at most 10 MB each). The prompt must be 3-5000 characters;
`aspect_ratio` and `resolution` are required although documented with defaults (kie does not fill
them in). `auto` follows the first input image; on the text-to-image models, which have none, it
is 1:1. There is no seed field.
Prices (monet88/artio `docs/kie-api/kie-pricing.md`, 1 credit = $0.005): pro 5 credits (1K) / 7 (2K),
flex 14 (1K) / 24 (2K) an image, the same for text and image input.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import GenerationParams, HttpUrl, ModelInput, ModelSpec, bucket_size

AspectRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "auto"]
Resolution = Literal["1K", "2K"]
Flux2Prompt = Annotated[str, StringConstraints(min_length=3, max_length=5000)]


class Flux2ProImageToImageInput(ModelInput):
    input_urls: list[HttpUrl] = Field(
        min_length=1, max_length=8, description="Reference images (1-8; JPEG, PNG or WebP; at most 10 MB each)."
    )
    prompt: Flux2Prompt = Field(description="Edit instruction (3-5000 characters).")
    aspect_ratio: AspectRatio = Field(description="Output aspect ratio; `auto` follows the first input image.")
    resolution: Resolution = Field(description="Output resolution: 1K (~1 MP) or 2K (~4 MP).")
    nsfw_checker: bool = Field(False, description="Run a safety checker on the result.")


# The same fields as `flux-2/pro-image-to-image`.
class Flux2FlexImageToImageInput(Flux2ProImageToImageInput):
    pass


class Flux2ProTextToImageInput(ModelInput):
    prompt: Flux2Prompt = Field(description="What to generate (3-5000 characters).")
    aspect_ratio: AspectRatio = Field(description="Output aspect ratio; `auto` (no input image here) gives 1:1.")
    resolution: Resolution = Field(description="Output resolution: 1K (~1 MP) or 2K (~4 MP).")
    nsfw_checker: bool = Field(False, description="Run a safety checker on the result.")


# The same fields as `flux-2/pro-text-to-image`.
class Flux2FlexTextToImageInput(Flux2ProTextToImageInput):
    pass


def _image_to_image(model: str, value: Flux2ProImageToImageInput) -> GenerationParams:
    width = height = None
    if value.aspect_ratio != "auto":
        width, height = bucket_size(value.aspect_ratio, value.resolution)
    return GenerationParams(
        model=model,
        prompt=value.prompt,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        resolution=value.resolution,
        reference_urls=tuple(value.input_urls),
        nsfw_checker=value.nsfw_checker,
    )


def _text_to_image(model: str, value: Flux2ProTextToImageInput) -> GenerationParams:
    width, height = bucket_size("1:1" if value.aspect_ratio == "auto" else value.aspect_ratio, value.resolution)
    return GenerationParams(
        model=model,
        prompt=value.prompt,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        resolution=value.resolution,
        nsfw_checker=value.nsfw_checker,
    )


def _resolution(value: Flux2ProTextToImageInput | Flux2ProImageToImageInput) -> str:
    return value.resolution


PRO_IMAGE_TO_IMAGE = ModelSpec(
    id="flux-2/pro-image-to-image",
    title="FLUX.2 [pro] image to image",
    description="Edit or combine 1-8 reference images with FLUX.2.",
    input_schema=Flux2ProImageToImageInput,
    prices={"1K": 5, "2K": 7},
    price_tier=_resolution,
    to_params=partial(_image_to_image, "flux-2/pro-image-to-image"),
    url_fields=("input_urls",),
)

PRO_TEXT_TO_IMAGE = ModelSpec(
    id="flux-2/pro-text-to-image",
    title="FLUX.2 [pro] text to image",
    description="Text to image with FLUX.2 [pro], 1K or 2K.",
    input_schema=Flux2ProTextToImageInput,
    prices={"1K": 5, "2K": 7},
    price_tier=_resolution,
    to_params=partial(_text_to_image, "flux-2/pro-text-to-image"),
)

FLEX_TEXT_TO_IMAGE = ModelSpec(
    id="flux-2/flex-text-to-image",
    title="FLUX.2 [flex] text to image",
    description="Text to image with FLUX.2 [flex] (more steps, finer typography), 1K or 2K.",
    input_schema=Flux2FlexTextToImageInput,
    prices={"1K": 14, "2K": 24},
    price_tier=_resolution,
    to_params=partial(_text_to_image, "flux-2/flex-text-to-image"),
)

FLEX_IMAGE_TO_IMAGE = ModelSpec(
    id="flux-2/flex-image-to-image",
    title="FLUX.2 [flex] image to image",
    description="Edit or combine 1-8 reference images with FLUX.2 [flex].",
    input_schema=Flux2FlexImageToImageInput,
    prices={"1K": 14, "2K": 24},
    price_tier=_resolution,
    to_params=partial(_image_to_image, "flux-2/flex-image-to-image"),
    url_fields=("input_urls",),
)

SPECS = (PRO_IMAGE_TO_IMAGE, PRO_TEXT_TO_IMAGE, FLEX_TEXT_TO_IMAGE, FLEX_IMAGE_TO_IMAGE)
