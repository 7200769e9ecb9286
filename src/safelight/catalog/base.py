"""What every catalog entry provides: an input schema, a price, and the mapping to generation parameters."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Fixed pixel buckets (spec/backends.md §D.1): multiples of 64 so compiled graphs and batches
# see a handful of stable shapes.
BUCKETS: dict[str, dict[str, tuple[int, int]]] = {
    "1K": {
        "1:1": (1024, 1024),
        "4:3": (1152, 896),
        "3:4": (896, 1152),
        "3:2": (1280, 832),
        "2:3": (832, 1280),
        "16:9": (1344, 768),
        "9:16": (768, 1344),
        "21:9": (1536, 640),
        # Gemini's extra ratios (nano-banana family): the nearest multiples of 64 to the ratio.
        "5:4": (1216, 960),
        "4:5": (960, 1216),
        "4:1": (2048, 512),
        "1:4": (512, 2048),
        "8:1": (3072, 384),
        "1:8": (384, 3072),
    },
    "2K": {
        "1:1": (2048, 2048),
        "4:3": (2368, 1792),
        "3:4": (1792, 2368),
        "3:2": (2496, 1664),
        "2:3": (1664, 2496),
        "16:9": (2752, 1536),
        "9:16": (1536, 2752),
        "21:9": (3136, 1344),
        "5:4": (2240, 1792),
        "4:5": (1792, 2240),
        "4:1": (4096, 1024),
        "1:4": (1024, 4096),
        "8:1": (5632, 704),
        "1:8": (704, 5632),
    },
    # ≈16.8 MP (4096² for 1:1, as Gemini's 4K): nano-banana-2 and nano-banana-pro.
    "4K": {
        "1:1": (4096, 4096),
        "4:3": (4608, 3456),
        "3:4": (3456, 4608),
        "3:2": (4992, 3328),
        "2:3": (3328, 4992),
        "16:9": (5440, 3072),
        "9:16": (3072, 5440),
        "21:9": (6272, 2688),
        "5:4": (4480, 3584),
        "4:5": (3584, 4480),
        "4:1": (8192, 2048),
        "1:4": (2048, 8192),
        "8:1": (11776, 1472),
        "1:8": (1472, 11776),
    },
}

# fal.ai-style presets used by kie's Ideogram schema.
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square": (512, 512),
    "square_hd": (1024, 1024),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def bucket_size(aspect_ratio: str, resolution: str = "1K") -> tuple[int, int]:
    return BUCKETS[resolution][aspect_ratio]


def nearest_bucket(width: int, height: int, resolution: str = "1K") -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to width:height ("auto" follows a reference image)."""
    target = width / height
    return min(BUCKETS[resolution].values(), key=lambda wh: abs(wh[0] / wh[1] - target))


# Shared field types. Strict mode: "5" is not an integer and 1 is not a boolean, as in the kie docs.
Prompt = Annotated[str, StringConstraints(min_length=1, max_length=5000)]
HttpUrl = Annotated[str, StringConstraints(min_length=8, max_length=2048, pattern=r"^https?://\S+$")]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
NumImages = Literal["1", "2", "3", "4"]
# An optional single URL that may be sent as "" (kie's examples do): empty means none.
OptionalUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^(https?://\S+)?$")]


def output_format(kie_value: str) -> str:
    """GenerationParams.output_format for kie's `output_format` ("jpg" and "jpeg" both mean JPEG)."""
    return "jpeg" if kie_value in ("jpg", "jpeg") else kie_value


def seed_from_text(text: str) -> int | None:
    """A generator seed for kie's string seeds (imagen4, imagen4-ultra): "" is none, an integer
    string is that integer, any other text a stable 63-bit hash of it, so equal seeds repeat."""
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is not None and -(2**63) <= value < 2**63:
        return value
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


class ModelInput(BaseModel):
    """Base of every model's `input` schema.

    Unknown fields are ignored rather than refused: kie accepts them, and a client written for
    kie must work unchanged. The original request is kept verbatim in `param` either way.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


# What each entry of GenerationParams.reference_urls is to the model.
ReferenceRole = Literal["reference", "image", "mask", "character", "character_mask", "style"]
REFERENCE_ROLES: tuple[ReferenceRole, ...] = ("reference", "image", "mask", "character", "character_mask", "style")


@dataclass(frozen=True)
class GenerationParams:
    """What a backend needs to produce the images: the catalog's translation of one `input`."""

    model: str
    prompt: str
    num_images: int = 1
    # None means "follow the first reference image" (aspect_ratio "auto" on image-input models).
    width: int | None = None
    height: int | None = None
    resolution: str = "1K"
    aspect_ratio: str = "1:1"
    seed: int | None = None
    negative_prompt: str | None = None
    # Every input image the model works from, in the order the worker fetches them (Job.references
    # follows it): the base image first where the model has one, then its mask, then references.
    reference_urls: tuple[str, ...] = ()
    # What each of reference_urls is, position for position; empty means all "reference":
    #   "reference"       an image to work from (flux-2 input_urls, nano-banana image_urls/image_input)
    #   "image"           the one image being edited, remixed or reframed (Ideogram `image_url`)
    #   "mask"            the inpainting mask of "image", same size (Ideogram `mask_url`)
    #   "character"       an Ideogram character reference portrait (`reference_image_urls`)
    #   "character_mask"  the mask of that portrait (Ideogram `reference_mask_urls`)
    #   "style"           an Ideogram style reference (`image_urls` of character-remix)
    reference_roles: tuple[ReferenceRole, ...] = ()
    # The input field of each of reference_urls (`input.mask_url`, `input.image_urls[1]`), for messages
    # about a URL that cannot be fetched; empty means `input.<first url_field>[i]`.
    reference_fields: tuple[str, ...] = ()
    # How strongly the base image shapes a remix: 0.01-1 (Ideogram remix models); None elsewhere.
    strength: float | None = None
    nsfw_checker: bool = False
    # The result files' type: "png", "jpeg" or "webp" (kie's `output_format`; "jpg" means "jpeg").
    output_format: str = "png"
    # Provider-specific knobs with no common meaning (Ideogram's rendering_speed, style,
    # expand_prompt; Gemini's google_search ...); part of the batch key.
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reference_roles and len(self.reference_roles) != len(self.reference_urls):
            raise ValueError(f"reference_roles has {len(self.reference_roles)} entries for "
                             f"{len(self.reference_urls)} reference_urls")
        if self.reference_fields and len(self.reference_fields) != len(self.reference_urls):
            raise ValueError(f"reference_fields has {len(self.reference_fields)} entries for "
                             f"{len(self.reference_urls)} reference_urls")
        unknown = [role for role in self.reference_roles if role not in REFERENCE_ROLES]
        if unknown:
            raise ValueError(f"unknown reference role {unknown[0]!r}; known: {', '.join(REFERENCE_ROLES)}")
        if self.output_format not in ("png", "jpeg", "webp"):
            raise ValueError(f"output_format must be png, jpeg or webp; got {self.output_format!r}")

    @property
    def roles(self) -> tuple[ReferenceRole, ...]:
        """The role of every reference URL (reference_roles, or "reference" for each)."""
        return self.reference_roles or tuple("reference" for _ in self.reference_urls)

    def urls_with_role(self, role: ReferenceRole) -> tuple[str, ...]:
        return tuple(url for url, mine in zip(self.reference_urls, self.roles, strict=True) if mine == role)

    @property
    def image_url(self) -> str | None:
        """The image being edited, remixed or reframed, if the model takes one."""
        return next(iter(self.urls_with_role("image")), None)

    @property
    def mask_url(self) -> str | None:
        """The inpainting mask of image_url (white marks what to repaint), if the model takes one."""
        return next(iter(self.urls_with_role("mask")), None)

    @property
    def batch_key(self) -> str | None:
        """Tasks with equal keys can share one pipeline call: same model, pixel size and options.
        Tasks with input images (references, masks) never share one (each task has its own), nor
        does "auto" size."""
        if self.reference_urls or self.width is None or self.height is None:
            return None
        extras = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return (f"{self.model}|{self.width}x{self.height}|nsfw={int(self.nsfw_checker)}"
                f"|{self.output_format}|{extras}")[:200]


@dataclass(frozen=True)
class ModelSpec:
    """One public model: everything the api, worker and backends need to know about it."""

    id: str
    title: str
    description: str
    input_schema: type[ModelInput]
    # Credits per image, by price tier; "default" is the tier when price_tier gives None.
    prices: Mapping[str, int]
    to_params: Callable[[Any], GenerationParams]
    price_tier: Callable[[Any], str] = lambda _input: "default"
    # Input fields that hold URLs the worker must fetch (checked at create time too).
    url_fields: tuple[str, ...] = ()

    def price_for_tier(self, tier: str, overrides: Mapping[str, int] | None = None) -> int:
        """Credits per image; an operator override "model:tier" beats "model" beats the default."""
        overrides = overrides or {}
        for key in (f"{self.id}:{tier}", self.id):
            if key in overrides:
                return int(overrides[key])
        return int(self.prices[tier])

    def price_per_image(self, model_input: Any, overrides: Mapping[str, int] | None = None) -> int:
        return self.price_for_tier(self.price_tier(model_input), overrides)

    def image_count(self, model_input: Any) -> int:
        # A field lookup, not getattr with a default: a missing attribute on a pydantic model costs
        # an exception, on the hottest path.
        if "num_images" not in type(model_input).model_fields:
            return 1
        return int(model_input.num_images or 1)

    def input_urls(self, model_input: Any) -> list[tuple[str, str]]:
        """(field path, url) pairs for every user-supplied URL in the input: `input.image_url` for a
        single-URL field (an empty string is no URL), `input.input_urls[2]` for a list."""
        found: list[tuple[str, str]] = []
        for name in self.url_fields:
            value = getattr(model_input, name, None)
            if isinstance(value, str):
                if value:
                    found.append((f"input.{name}", value))
                continue
            found.extend((f"input.{name}[{i}]", url) for i, url in enumerate(value or []))
        return found
