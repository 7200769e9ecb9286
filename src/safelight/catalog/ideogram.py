"""`ideogram/character`: a consistent character from one reference portrait. Schema: spec/kie-api.md §2.2."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import (
    IMAGE_SIZE_PRESETS,
    GenerationParams,
    HttpUrl,
    ModelInput,
    ModelSpec,
    NumImages,
    Prompt,
    Seed,
)

ImageSize = Literal["square", "square_hd", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]


class IdeogramCharacterInput(ModelInput):
    prompt: Prompt = Field(description="What the character does and where.")
    # kie documents "only 1 image is supported, the rest will be ignored"; its playground takes 5.
    reference_image_urls: list[HttpUrl] = Field(
        min_length=1, max_length=5, description="Character reference portrait (only the first is used; 10 MB total)."
    )
    rendering_speed: Literal["TURBO", "BALANCED", "QUALITY"] = Field("BALANCED", description="Speed/quality trade-off.")
    style: Literal["AUTO", "REALISTIC", "FICTION"] = Field("AUTO", description="Rendering style.")
    expand_prompt: bool = Field(True, description="Let the model expand the prompt (MagicPrompt).")
    num_images: NumImages = Field("1", description='Number of images, "1" to "4" (a string).')
    image_size: ImageSize = Field("square_hd", description="Output size preset.")
    seed: Seed | None = Field(None, description="Random seed for reproducible generation.")
    negative_prompt: Annotated[str, StringConstraints(max_length=5000)] = Field(
        "", description="What to keep out of the image; the prompt takes precedence."
    )


def to_params(value: IdeogramCharacterInput) -> GenerationParams:
    width, height = IMAGE_SIZE_PRESETS[value.image_size]
    return GenerationParams(
        model=SPEC.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        num_images=int(value.num_images),
        seed=value.seed,
        reference_urls=tuple(value.reference_image_urls[:1]),
        options={
            "rendering_speed": value.rendering_speed,
            "style": value.style,
            "expand_prompt": value.expand_prompt,
            "image_size": value.image_size,
        },
    )


SPEC = ModelSpec(
    id="ideogram/character",
    title="Ideogram Character",
    description="A consistent character from one reference portrait (Ideogram v3).",
    input_schema=IdeogramCharacterInput,
    # kie's 2026 price list: $0.06 / $0.09 / $0.12 an image at 1 credit = $0.005.
    prices={"TURBO": 12, "BALANCED": 18, "QUALITY": 24},
    price_tier=lambda value: value.rendering_speed,
    to_params=to_params,
    url_fields=("reference_image_urls",),
)
