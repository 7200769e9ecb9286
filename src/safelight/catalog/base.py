"""What every catalog entry provides: an input schema, a price, and the mapping to generation parameters."""

from __future__ import annotations

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


class ModelInput(BaseModel):
    """Base of every model's `input` schema.

    Unknown fields are ignored rather than refused: kie accepts them, and a client written for
    kie must work unchanged. The original request is kept verbatim in `param` either way.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


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
    reference_urls: tuple[str, ...] = ()
    nsfw_checker: bool = False
    # The result files' type: "png", "jpeg" or "webp" (kie's `output_format`; "jpg" means "jpeg").
    output_format: str = "png"
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def batch_key(self) -> str | None:
        """Tasks with equal keys can share one pipeline call: same model, pixel size and options.
        Tasks with reference images never share one (each task has its own), nor does "auto" size."""
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
        """(field path, url) pairs for every user-supplied URL in the input."""
        found: list[tuple[str, str]] = []
        for name in self.url_fields:
            value = getattr(model_input, name, None) or []
            found.extend((f"input.{name}[{i}]", url) for i, url in enumerate(value))
        return found
