"""`flux-2/pro-image-to-image`: edit with 1-8 reference images (FLUX.2). Schema: spec/kie-api.md §2.3."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import GenerationParams, HttpUrl, ModelInput, ModelSpec, bucket_size

AspectRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "auto"]


class Flux2ProImageToImageInput(ModelInput):
    input_urls: list[HttpUrl] = Field(
        min_length=1, max_length=8, description="Reference images (1-8; JPEG, PNG or WebP; at most 10 MB each)."
    )
    prompt: Annotated[str, StringConstraints(min_length=3, max_length=5000)] = Field(
        description="Edit instruction (3-5000 characters)."
    )
    aspect_ratio: AspectRatio = Field(description="Output aspect ratio; `auto` follows the first input image.")
    resolution: Literal["1K", "2K"] = Field(description="Output resolution: 1K (~1 MP) or 2K (~4 MP).")
    nsfw_checker: bool = Field(False, description="Run a safety checker on the result.")


def to_params(value: Flux2ProImageToImageInput) -> GenerationParams:
    width = height = None
    if value.aspect_ratio != "auto":
        width, height = bucket_size(value.aspect_ratio, value.resolution)
    return GenerationParams(
        model=SPEC.id,
        prompt=value.prompt,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        resolution=value.resolution,
        reference_urls=tuple(value.input_urls),
        nsfw_checker=value.nsfw_checker,
    )


SPEC = ModelSpec(
    id="flux-2/pro-image-to-image",
    title="FLUX.2 [pro] image to image",
    description="Edit or combine 1-8 reference images with FLUX.2.",
    input_schema=Flux2ProImageToImageInput,
    prices={"1K": 5, "2K": 7},
    price_tier=lambda value: value.resolution,
    to_params=to_params,
    url_fields=("input_urls",),
)
