"""Google Imagen 4: `google/imagen4-fast`, `google/imagen4`, `google/imagen4-ultra` (text to image).

Schemas (the union of the published versions, spec/kie-api.md §2.1 and §3):
- imagen4-fast: the older docs (monet88/artio `docs/kie-api/imagen4-fast.md`, matching the seed page)
  have `num_images`; the newer (henjicc/Henji-AI `docs/api/KIE/Image Models/Google/012-Google
  Imagen4 Fast.md`) drop it and add `auto` to the aspect ratios. Both are accepted.
- imagen4 and imagen4-ultra: monet88/artio `docs/kie-api/google/imagen4.md`, `imagen4-ultra.md`
  (aspect ratios without `auto`) and Henji-AI `014-Google Imagen4.md`, `013-Google Imagen4
  Ultra.md` (with `auto`). Their `seed` is a *string* of at most 500 characters, unlike
  imagen4-fast's integer; no version has `num_images` (one summary claims it; not accepted).
Prices (monet88/artio `docs/kie-api/kie-pricing.md`, 1 credit = $0.005): imagen4-fast 4 credits
($0.02), imagen4 6 ($0.03), imagen4-ultra 12 ($0.06) an image.
"""

from __future__ import annotations

from functools import partial
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import (
    GenerationParams,
    ModelInput,
    ModelSpec,
    NumImages,
    Prompt,
    Seed,
    bucket_size,
    seed_from_text,
)

AspectRatio = Literal["1:1", "16:9", "9:16", "3:4", "4:3", "auto"]
NegativePrompt = Annotated[str, StringConstraints(max_length=5000)]


class Imagen4FastInput(ModelInput):
    prompt: Prompt = Field(description="The text prompt describing what you want to see.")
    negative_prompt: NegativePrompt = Field("", description="What to keep out of the image.")
    aspect_ratio: AspectRatio = Field("16:9", description="Aspect ratio; `auto` lets the model choose (1:1).")
    num_images: NumImages = Field("1", description='Number of images, "1" to "4" (a string).')
    seed: Seed | None = Field(None, description="Random seed for reproducible generation.")


class Imagen4Input(ModelInput):
    prompt: Prompt = Field(description="The text prompt describing what you want to see (at most 5000 characters).")
    negative_prompt: NegativePrompt = Field(
        "", description="What to discourage in the image (at most 5000 characters)."
    )
    aspect_ratio: AspectRatio = Field("1:1", description="Aspect ratio; `auto` lets the model choose (1:1).")
    seed: Annotated[str, StringConstraints(max_length=500)] = Field(
        "", description='Random seed for reproducible generation, as a string of at most 500 characters ("" for none).'
    )


# The same fields as `google/imagen4`.
class Imagen4UltraInput(Imagen4Input):
    pass


def _size(aspect_ratio: str) -> tuple[int, int]:
    # "auto" has no pixel meaning locally; a square image is the neutral choice.
    return bucket_size("1:1" if aspect_ratio == "auto" else aspect_ratio)


def fast_to_params(value: Imagen4FastInput) -> GenerationParams:
    width, height = _size(value.aspect_ratio)
    return GenerationParams(
        model=IMAGEN4_FAST.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        num_images=int(value.num_images),
        seed=value.seed,
    )


def _imagen4_params(model: str, value: Imagen4Input) -> GenerationParams:
    width, height = _size(value.aspect_ratio)
    return GenerationParams(
        model=model,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        aspect_ratio=value.aspect_ratio,
        # An integer string seeds as that integer, other text by a stable hash; the exact string
        # stays in the task's input for a kie pass-through.
        seed=seed_from_text(value.seed),
    )


IMAGEN4_FAST = ModelSpec(
    id="google/imagen4-fast",
    title="Imagen 4 Fast",
    description="Google's fast text-to-image model, with negative prompt and 1-4 images.",
    input_schema=Imagen4FastInput,
    prices={"default": 4},
    to_params=fast_to_params,
)

IMAGEN4 = ModelSpec(
    id="google/imagen4",
    title="Imagen 4",
    description="Google's text-to-image model, balanced speed and quality, with negative prompt.",
    input_schema=Imagen4Input,
    prices={"default": 6},
    to_params=partial(_imagen4_params, "google/imagen4"),
)

IMAGEN4_ULTRA = ModelSpec(
    id="google/imagen4-ultra",
    title="Imagen 4 Ultra",
    description="Google's highest-fidelity text-to-image model, with negative prompt.",
    input_schema=Imagen4UltraInput,
    prices={"default": 12},
    to_params=partial(_imagen4_params, "google/imagen4-ultra"),
)

SPECS = (IMAGEN4_FAST, IMAGEN4, IMAGEN4_ULTRA)
