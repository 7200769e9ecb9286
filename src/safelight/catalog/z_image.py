"""`z-image`: text to image (Tongyi-MAI Z-Image-Turbo), the family's one model.

Schema: spec/kie-api.md §2.4 (the seed page, and henjicc/Henji-AI `docs/api/KIE/Image Models/Z-image/
010-使用 z-image 生成内容.md`, which adds `nsfw_checker`). Price: $0.004 an image at kie, rounded up to
one credit ($0.005).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import GenerationParams, ModelInput, ModelSpec, bucket_size

AspectRatio = Literal["1:1", "4:3", "3:4", "16:9", "9:16"]


class ZImageInput(ModelInput):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=1000)] = Field(
        description="Text description of the image (at most 1000 characters)."
    )
    # Required although the docs name a default: kie does not fill defaults server-side.
    aspect_ratio: AspectRatio = Field(description="Aspect ratio of the generated image.")
    nsfw_checker: bool = Field(False, description="Run a safety checker on the result.")


def to_params(value: ZImageInput) -> GenerationParams:
    width, height = bucket_size(value.aspect_ratio)
    return GenerationParams(
        model=Z_IMAGE.id,
        prompt=value.prompt,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        nsfw_checker=value.nsfw_checker,
    )


Z_IMAGE = ModelSpec(
    id="z-image",
    title="Z-Image",
    description="Text to image with Z-Image-Turbo (8 steps).",
    input_schema=ZImageInput,
    prices={"default": 1},  # $0.004 an image at kie, rounded up to one credit ($0.005)
    to_params=to_params,
)

SPECS = (Z_IMAGE,)
