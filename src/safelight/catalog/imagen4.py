"""`google/imagen4-fast`: text to image with a negative prompt. Schema: spec/kie-api.md §2.1.

Both published versions of kie's schema are accepted: the older one with `num_images`, the newer
one with `auto` in the aspect-ratio enum.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import GenerationParams, ModelInput, ModelSpec, NumImages, Prompt, Seed, bucket_size

AspectRatio = Literal["1:1", "16:9", "9:16", "3:4", "4:3", "auto"]


class Imagen4FastInput(ModelInput):
    prompt: Prompt = Field(description="The text prompt describing what you want to see.")
    negative_prompt: Annotated[str, StringConstraints(max_length=5000)] = Field(
        "", description="What to keep out of the image."
    )
    aspect_ratio: AspectRatio = Field("16:9", description="Aspect ratio; `auto` lets the model choose (1:1).")
    num_images: NumImages = Field("1", description='Number of images, "1" to "4" (a string).')
    seed: Seed | None = Field(None, description="Random seed for reproducible generation.")


def to_params(value: Imagen4FastInput) -> GenerationParams:
    # "auto" has no pixel meaning locally; a square image is the neutral choice.
    aspect = "1:1" if value.aspect_ratio == "auto" else value.aspect_ratio
    width, height = bucket_size(aspect)
    return GenerationParams(
        model=SPEC.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        num_images=int(value.num_images),
        seed=value.seed,
    )


SPEC = ModelSpec(
    id="google/imagen4-fast",
    title="Imagen 4 Fast",
    description="Google's fast text-to-image model, with negative prompt and 1-4 images.",
    input_schema=Imagen4FastInput,
    prices={"default": 4},
    to_params=to_params,
)
