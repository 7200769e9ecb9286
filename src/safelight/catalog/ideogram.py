"""Ideogram v3: the character models (`ideogram/character`, `ideogram/character-edit`,
`ideogram/character-remix`) and `ideogram/v3-text-to-image`, `ideogram/v3-edit`, `ideogram/v3-remix`,
`ideogram/v3-reframe`.

Schemas (spec/kie-api.md §2.2 and §3):
- character: henjicc/Henji-AI `docs/api/KIE/Image Models/Ideogram/033-Ideogram 角色图像生成.md`
  (verbatim OpenAPI), cross-checked with vladholos492-wq/TRT-main
  `docs/IDEOGRAM_CHARACTER_INTEGRATION.md`. kie's playground takes up to 5 references; only the
  first is used.
- character-edit, character-remix: Henji-AI `031-Ideogram 角色编辑.md`, `032-Ideogram 角色重混.md`
  (TRT-main `docs/IDEOGRAM_CHARACTER_{EDIT,REMIX}_INTEGRATION.md` agree). character-remix's
  `reference_mask_urls` is documented as a *string* (one mask URL, "" for none); its style
  references `image_urls` have no documented count, so this server caps them at 10.
- v3-text-to-image, v3-edit, v3-remix: Henji-AI `034-Ideogram V3 文生图.md`, `035-Ideogram V3
  图像编辑.md`, `036-Ideogram V3 混合.md`; the defaults, which those pages give only as examples,
  from TRT-main `docs/IDEOGRAM_V3_{TEXT_TO_IMAGE,EDIT,REMIX}_INTEGRATION.md`.
- v3-reframe: TRT-main `docs/IDEOGRAM_V3_REFrame_INTEGRATION.md` only (no verbatim page found):
  `image_url` and `image_size` required, no prompt.
Edit and reframe outputs follow the base image (v3-edit, character-edit: the mask must match its
size) or `image_size` (reframe: the image is extended to that canvas).
Prices (1 credit = $0.005): the character family 12 / 18 / 24 credits ($0.06 / $0.09 / $0.12) and
the v3 family 3.5 / 7 / 10 credits ($0.0175 / $0.035 / $0.05) an image for TURBO / BALANCED /
QUALITY (vladholos492-wq/TRT-main `scripts/generate_complete_pricing.py`; monet88/artio
`docs/kie-api/kie-pricing.md` lists only `ideogram/character`, at a flat 10). TURBO's 3.5 is
rounded up to 4: credits are whole numbers here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypedDict

from pydantic import Field, StringConstraints

from .base import (
    IMAGE_SIZE_PRESETS,
    GenerationParams,
    HttpUrl,
    ModelInput,
    ModelSpec,
    NumImages,
    OptionalUrl,
    Prompt,
    ReferenceRole,
    Seed,
)

ImageSize = Literal["square", "square_hd", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9"]
RenderingSpeed = Literal["TURBO", "BALANCED", "QUALITY"]
CharacterStyle = Literal["AUTO", "REALISTIC", "FICTION"]
V3Style = Literal["AUTO", "GENERAL", "REALISTIC", "DESIGN"]
NegativePrompt = Annotated[str, StringConstraints(max_length=5000)]

# Field descriptions shared by several models.
RENDERING_SPEED = "Speed/quality trade-off (and price): TURBO, BALANCED or QUALITY."
EXPAND_PROMPT = "Let the model expand the prompt (MagicPrompt)."
NUM_IMAGES = 'Number of images, "1" to "4" (a string).'
SEED = "Random seed for reproducible generation."
IMAGE_SIZE = ("Output size preset: square (512²), square_hd (1024²), portrait_4_3, portrait_16_9, landscape_4_3, "
              "landscape_16_9.")
CHARACTER_REFERENCES = "Character reference portrait (only the first is used; 10 MB in total; JPEG, PNG or WebP)."
BASE_IMAGE = "The image to work on (JPEG, PNG or WebP; at most 10 MB)."
MASK = "Inpainting mask, the same size as image_url: the area to repaint (JPEG, PNG or WebP; at most 10 MB)."
CHARACTER_PRICES = {"TURBO": 12, "BALANCED": 18, "QUALITY": 24}
V3_PRICES = {"TURBO": 4, "BALANCED": 7, "QUALITY": 10}


class IdeogramCharacterInput(ModelInput):
    prompt: Prompt = Field(description="What the character does and where.")
    # kie documents "only 1 image is supported, the rest will be ignored"; its playground takes 5.
    reference_image_urls: list[HttpUrl] = Field(min_length=1, max_length=5, description=CHARACTER_REFERENCES)
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    style: CharacterStyle = Field("AUTO", description="Rendering style.")
    expand_prompt: bool = Field(True, description=EXPAND_PROMPT)
    num_images: NumImages = Field("1", description=NUM_IMAGES)
    image_size: ImageSize = Field("square_hd", description=IMAGE_SIZE)
    seed: Seed | None = Field(None, description=SEED)
    negative_prompt: NegativePrompt = Field(
        "", description="What to keep out of the image; the prompt takes precedence."
    )


class IdeogramCharacterEditInput(ModelInput):
    prompt: Prompt = Field(description="What to paint into the masked area (at most 5000 characters).")
    image_url: HttpUrl = Field(description=BASE_IMAGE)
    mask_url: HttpUrl = Field(description=MASK)
    reference_image_urls: list[HttpUrl] = Field(min_length=1, max_length=5, description=CHARACTER_REFERENCES)
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    style: CharacterStyle = Field("AUTO", description="Rendering style.")
    expand_prompt: bool = Field(True, description=EXPAND_PROMPT)
    num_images: NumImages = Field("1", description=NUM_IMAGES)
    seed: Seed | None = Field(None, description=SEED)


class IdeogramCharacterRemixInput(ModelInput):
    prompt: Prompt = Field(description="How to remix the image with the character (at most 5000 characters).")
    image_url: HttpUrl = Field(description=BASE_IMAGE)
    reference_image_urls: list[HttpUrl] = Field(min_length=1, max_length=5, description=CHARACTER_REFERENCES)
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    style: CharacterStyle = Field("AUTO", description="Rendering style.")
    expand_prompt: bool = Field(True, description=EXPAND_PROMPT)
    image_size: ImageSize = Field("square_hd", description=IMAGE_SIZE)
    num_images: NumImages = Field("1", description=NUM_IMAGES)
    seed: Seed | None = Field(None, description=SEED)
    strength: float = Field(0.8, ge=0.1, le=1, description="How strongly image_url shapes the result, 0.1 to 1.")
    negative_prompt: Annotated[str, StringConstraints(max_length=500)] = Field(
        "", description="What to keep out of the image (at most 500 characters); the prompt takes precedence."
    )
    image_urls: list[HttpUrl] = Field(
        [], max_length=10, description="Style reference images (10 MB in total; JPEG, PNG or WebP; at most 10 here)."
    )
    reference_mask_urls: OptionalUrl = Field(
        "", description='One mask URL for the character reference (a string, "" for none; JPEG, PNG or WebP).'
    )


class IdeogramV3TextToImageInput(ModelInput):
    prompt: Prompt = Field(description="What to generate (at most 5000 characters).")
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    style: V3Style = Field("AUTO", description="Style type: AUTO, GENERAL, REALISTIC or DESIGN.")
    expand_prompt: bool = Field(True, description=EXPAND_PROMPT)
    image_size: ImageSize = Field("square_hd", description=IMAGE_SIZE)
    seed: Seed | None = Field(None, description=SEED)
    negative_prompt: NegativePrompt = Field(
        "", description="What to keep out of the image (at most 5000 characters); the prompt takes precedence."
    )


class IdeogramV3EditInput(ModelInput):
    prompt: Prompt = Field(description="What to paint into the masked area (at most 5000 characters).")
    image_url: HttpUrl = Field(description=BASE_IMAGE)
    mask_url: HttpUrl = Field(description=MASK)
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    expand_prompt: bool = Field(True, description=EXPAND_PROMPT)
    seed: Seed | None = Field(None, description=SEED)


class IdeogramV3RemixInput(ModelInput):
    prompt: Prompt = Field(description="How to remix the image (at most 5000 characters).")
    image_url: HttpUrl = Field(description=BASE_IMAGE)
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    style: V3Style = Field("AUTO", description="Style type: AUTO, GENERAL, REALISTIC or DESIGN.")
    expand_prompt: bool = Field(True, description=EXPAND_PROMPT)
    image_size: ImageSize = Field("square_hd", description=IMAGE_SIZE)
    num_images: NumImages = Field("1", description=NUM_IMAGES)
    seed: Seed | None = Field(None, description=SEED)
    strength: float = Field(0.8, ge=0.01, le=1, description="How strongly image_url shapes the result, 0.01 to 1.")
    negative_prompt: NegativePrompt = Field(
        "", description="What to keep out of the image (at most 5000 characters); the prompt takes precedence."
    )


class IdeogramV3ReframeInput(ModelInput):
    image_url: HttpUrl = Field(description="The image to extend to the new canvas (JPEG, PNG or WebP; at most 10 MB).")
    image_size: ImageSize = Field(description="The output canvas: " + IMAGE_SIZE.removeprefix("Output size preset: "))
    rendering_speed: RenderingSpeed = Field("BALANCED", description=RENDERING_SPEED)
    style: V3Style = Field("AUTO", description="Style type: AUTO, GENERAL, REALISTIC or DESIGN.")
    num_images: NumImages = Field("1", description=NUM_IMAGES)
    seed: Seed | None = Field(None, description=SEED)


def _speed(value: Any) -> str:
    return str(value.rendering_speed)


class _References(TypedDict):
    reference_urls: tuple[str, ...]
    reference_roles: tuple[ReferenceRole, ...]
    reference_fields: tuple[str, ...]


def _references(*groups: tuple[ReferenceRole, str, str | list[str]]) -> _References:
    """GenerationParams' reference_urls, reference_roles and reference_fields from (role, input field,
    value) groups, in order: a string value is one URL ("" none), a list value several."""
    urls: list[str] = []
    roles: list[ReferenceRole] = []
    fields: list[str] = []
    for role, name, value in groups:
        found = ([(f"input.{name}", value)] if value else []) if isinstance(value, str) else [
            (f"input.{name}[{index}]", url) for index, url in enumerate(value)]
        for field, url in found:
            urls.append(url)
            roles.append(role)
            fields.append(field)
    return {"reference_urls": tuple(urls), "reference_roles": tuple(roles), "reference_fields": tuple(fields)}


def character_to_params(value: IdeogramCharacterInput) -> GenerationParams:
    width, height = IMAGE_SIZE_PRESETS[value.image_size]
    return GenerationParams(
        model=CHARACTER.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        num_images=int(value.num_images),
        seed=value.seed,
        **_references(("character", "reference_image_urls", value.reference_image_urls[:1])),
        options={
            "rendering_speed": value.rendering_speed,
            "style": value.style,
            "expand_prompt": value.expand_prompt,
            "image_size": value.image_size,
        },
    )


def character_edit_to_params(value: IdeogramCharacterEditInput) -> GenerationParams:
    # The output keeps the base image's size (the mask matches it): width/height None.
    return GenerationParams(
        model=CHARACTER_EDIT.id,
        prompt=value.prompt,
        num_images=int(value.num_images),
        seed=value.seed,
        **_references(("image", "image_url", value.image_url), ("mask", "mask_url", value.mask_url),
                      ("character", "reference_image_urls", value.reference_image_urls[:1])),
        options={"rendering_speed": value.rendering_speed, "style": value.style, "expand_prompt": value.expand_prompt},
    )


def character_remix_to_params(value: IdeogramCharacterRemixInput) -> GenerationParams:
    width, height = IMAGE_SIZE_PRESETS[value.image_size]
    return GenerationParams(
        model=CHARACTER_REMIX.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        num_images=int(value.num_images),
        seed=value.seed,
        **_references(("image", "image_url", value.image_url),
                      ("character", "reference_image_urls", value.reference_image_urls[:1]),
                      ("character_mask", "reference_mask_urls", value.reference_mask_urls),
                      ("style", "image_urls", value.image_urls)),
        strength=value.strength,
        options={
            "rendering_speed": value.rendering_speed,
            "style": value.style,
            "expand_prompt": value.expand_prompt,
            "image_size": value.image_size,
        },
    )


def v3_text_to_image_to_params(value: IdeogramV3TextToImageInput) -> GenerationParams:
    width, height = IMAGE_SIZE_PRESETS[value.image_size]
    return GenerationParams(
        model=V3_TEXT_TO_IMAGE.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        seed=value.seed,
        options={
            "rendering_speed": value.rendering_speed,
            "style": value.style,
            "expand_prompt": value.expand_prompt,
            "image_size": value.image_size,
        },
    )


def v3_edit_to_params(value: IdeogramV3EditInput) -> GenerationParams:
    return GenerationParams(
        model=V3_EDIT.id,
        prompt=value.prompt,
        seed=value.seed,
        **_references(("image", "image_url", value.image_url), ("mask", "mask_url", value.mask_url)),
        options={"rendering_speed": value.rendering_speed, "expand_prompt": value.expand_prompt},
    )


def v3_remix_to_params(value: IdeogramV3RemixInput) -> GenerationParams:
    width, height = IMAGE_SIZE_PRESETS[value.image_size]
    return GenerationParams(
        model=V3_REMIX.id,
        prompt=value.prompt,
        negative_prompt=value.negative_prompt or None,
        width=width,
        height=height,
        num_images=int(value.num_images),
        seed=value.seed,
        **_references(("image", "image_url", value.image_url)),
        strength=value.strength,
        options={
            "rendering_speed": value.rendering_speed,
            "style": value.style,
            "expand_prompt": value.expand_prompt,
            "image_size": value.image_size,
        },
    )


def v3_reframe_to_params(value: IdeogramV3ReframeInput) -> GenerationParams:
    width, height = IMAGE_SIZE_PRESETS[value.image_size]
    return GenerationParams(
        model=V3_REFRAME.id,
        prompt="",  # reframe takes no prompt: the model extends what the image shows
        width=width,
        height=height,
        num_images=int(value.num_images),
        seed=value.seed,
        **_references(("image", "image_url", value.image_url)),
        options={"rendering_speed": value.rendering_speed, "style": value.style, "image_size": value.image_size},
    )


CHARACTER = ModelSpec(
    id="ideogram/character",
    title="Ideogram Character",
    description="A consistent character from one reference portrait (Ideogram v3).",
    input_schema=IdeogramCharacterInput,
    prices=CHARACTER_PRICES,
    price_tier=_speed,
    to_params=character_to_params,
    url_fields=("reference_image_urls",),
)

CHARACTER_EDIT = ModelSpec(
    id="ideogram/character-edit",
    title="Ideogram Character Edit",
    description="Inpaint the masked area of an image with a consistent character (Ideogram v3).",
    input_schema=IdeogramCharacterEditInput,
    prices=CHARACTER_PRICES,
    price_tier=_speed,
    to_params=character_edit_to_params,
    url_fields=("image_url", "mask_url", "reference_image_urls"),
)

CHARACTER_REMIX = ModelSpec(
    id="ideogram/character-remix",
    title="Ideogram Character Remix",
    description="Remix an image with a consistent character and optional style references (Ideogram v3).",
    input_schema=IdeogramCharacterRemixInput,
    prices=CHARACTER_PRICES,
    price_tier=_speed,
    to_params=character_remix_to_params,
    url_fields=("image_url", "reference_image_urls", "image_urls", "reference_mask_urls"),
)

V3_TEXT_TO_IMAGE = ModelSpec(
    id="ideogram/v3-text-to-image",
    title="Ideogram V3 text to image",
    description="Text to image with Ideogram v3: strong typography, four style types.",
    input_schema=IdeogramV3TextToImageInput,
    prices=V3_PRICES,
    price_tier=_speed,
    to_params=v3_text_to_image_to_params,
)

V3_EDIT = ModelSpec(
    id="ideogram/v3-edit",
    title="Ideogram V3 edit",
    description="Inpaint the masked area of an image from a prompt (Ideogram v3).",
    input_schema=IdeogramV3EditInput,
    prices=V3_PRICES,
    price_tier=_speed,
    to_params=v3_edit_to_params,
    url_fields=("image_url", "mask_url"),
)

V3_REMIX = ModelSpec(
    id="ideogram/v3-remix",
    title="Ideogram V3 remix",
    description="Remix an image from a prompt, keeping as much of it as `strength` says (Ideogram v3).",
    input_schema=IdeogramV3RemixInput,
    prices=V3_PRICES,
    price_tier=_speed,
    to_params=v3_remix_to_params,
    url_fields=("image_url",),
)

V3_REFRAME = ModelSpec(
    id="ideogram/v3-reframe",
    title="Ideogram V3 reframe",
    description="Extend an image to a new canvas size, no prompt needed (Ideogram v3).",
    input_schema=IdeogramV3ReframeInput,
    prices=V3_PRICES,
    price_tier=_speed,
    to_params=v3_reframe_to_params,
    url_fields=("image_url",),
)

SPECS = (CHARACTER, CHARACTER_EDIT, CHARACTER_REMIX, V3_TEXT_TO_IMAGE, V3_EDIT, V3_REMIX, V3_REFRAME)
