"""Ideogram API v3: generate, inpaint, remix and reframe (spec/backends.md §C.2, §D.5).

Every endpoint is a synchronous `POST` with the `Api-Key` header and a multipart/form-data body;
the answer lists the images (`data[i].url`, `is_image_safe`, `seed`). The URLs are temporary, so
they are downloaded at once. Ideogram answers at about 1 MP whatever the size asked for (16x9 comes
back near 1312x736); the bytes are kept as returned, not resized.

Which endpoint serves which model, and the fields each takes, follow Ideogram's OpenAPI
(developer.ideogram.ai/api-reference/api-reference/{generate-v3,inpaint-v3,remix-v3,reframe-v3},
mirrored in api-evangelist/ideogram `openapi/_original/ideogram-openapi.yml`):

- `ideogram/v3-text-to-image`: /v1/ideogram-v3/generate, no file.
- `ideogram/character`: /v1/ideogram-v3/generate with `character_reference_images`.
- `ideogram/v3-edit`: /v1/ideogram-v3/inpaint with `image` and `mask`.
- `ideogram/character-edit`: /v1/ideogram-v3/inpaint with `image`, `mask`, `character_reference_images`.
- `ideogram/v3-remix`: /v1/ideogram-v3/remix with `image` (and `image_weight`).
- `ideogram/character-remix`: /v1/ideogram-v3/remix with `image`, `character_reference_images`,
  `character_reference_images_mask` and `style_reference_images`.
- `ideogram/v3-reframe`: /v1/ideogram-v3/reframe with `image` and `resolution`.

`/v1/ideogram-v3/inpaint` is the current name of the masked edit; `/v1/ideogram-v3/edit` is its
legacy alias, which "will be removed in a future release" (same page).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from pydantic import Field

from safelight.backends.base import (
    BackendError,
    GeneratedImage,
    Job,
    read_secret,
)
from safelight.backends.upstream.provider import (
    EXTENSIONS,
    PROVIDER_UNAVAILABLE,
    REJECTED,
    ProviderBackend,
    ProviderClient,
    ProviderOptions,
    Rule,
    StatusTable,
    download_result,
    gather_or_cancel,
    generated,
    malformed,
    rejection_reason,
)
from safelight.catalog import GenerationParams, ReferenceRole
from safelight.kie import FailCode
from safelight.net import ImageError, decode_image

GENERATE_PATH = "/v1/ideogram-v3/generate"
INPAINT_PATH = "/v1/ideogram-v3/inpaint"
REMIX_PATH = "/v1/ideogram-v3/remix"
REFRAME_PATH = "/v1/ideogram-v3/reframe"
PATHS = {
    "ideogram/character": GENERATE_PATH,
    "ideogram/v3-text-to-image": GENERATE_PATH,
    "ideogram/v3-edit": INPAINT_PATH,
    "ideogram/character-edit": INPAINT_PATH,
    "ideogram/v3-remix": REMIX_PATH,
    "ideogram/character-remix": REMIX_PATH,
    "ideogram/v3-reframe": REFRAME_PATH,
}
# The text fields each endpoint documents (developer.ideogram.ai, pages above); a field the task
# sets that its endpoint lacks is left out (see `form_fields`).
ENDPOINT_FIELDS = {
    GENERATE_PATH: frozenset({"prompt", "seed", "aspect_ratio", "rendering_speed", "magic_prompt", "negative_prompt",
                              "num_images", "style_type"}),
    INPAINT_PATH: frozenset({"prompt", "seed", "rendering_speed", "magic_prompt", "num_images", "style_type"}),
    REMIX_PATH: frozenset({"prompt", "image_weight", "seed", "aspect_ratio", "rendering_speed", "magic_prompt",
                           "negative_prompt", "num_images", "style_type"}),
    # Reframe takes no prompt, magic_prompt or style_type: the image says what to extend.
    REFRAME_PATH: frozenset({"resolution", "seed", "rendering_speed", "num_images"}),
}
# The file part each reference role goes to (GenerationParams.reference_roles).
FILE_PARTS: Mapping[ReferenceRole, str] = {
    "image": "image",
    "mask": "mask",
    "character": "character_reference_images",
    "character_mask": "character_reference_images_mask",
    "style": "style_reference_images",
}

# kie's `image_size` presets -> Ideogram aspect ratios (Ideogram writes them with an "x").
ASPECT_RATIOS = {
    "square": "1x1",
    "square_hd": "1x1",
    "portrait_4_3": "3x4",
    "portrait_16_9": "9x16",
    "landscape_4_3": "4x3",
    "landscape_16_9": "16x9",
}
# Ideogram's `ResolutionV3`: the only sizes reframe (where `resolution` is required) can make, all
# about 1 MP; none is 512x512 or 1024x576, so kie's presets get the one of nearest aspect ratio.
RESOLUTIONS: tuple[tuple[int, int], ...] = tuple((int(size.split("x")[0]), int(size.split("x")[1])) for size in (
    "512x1536 576x1408 576x1472 576x1536 640x1344 640x1408 640x1472 640x1536 704x1152 704x1216 704x1280 704x1344 "
    "704x1408 704x1472 736x1312 768x1088 768x1216 768x1280 768x1344 800x1280 832x960 832x1024 832x1088 832x1152 "
    "832x1216 832x1248 864x1152 896x960 896x1024 896x1088 896x1120 896x1152 960x832 960x896 960x1024 960x1088 "
    "1024x832 1024x896 1024x960 1024x1024 1088x768 1088x832 1088x896 1088x960 1120x896 1152x704 1152x832 1152x864 "
    "1152x896 1216x704 1216x768 1216x832 1248x832 1280x704 1280x768 1280x800 1312x736 1344x640 1344x704 1344x768 "
    "1408x576 1408x640 1408x704 1472x576 1472x640 1472x704 1536x512 1536x576 1536x640").split())
# kie's speeds -> Ideogram's `RenderingSpeed` (FLASH | TURBO | DEFAULT | QUALITY); BALANCED is DEFAULT.
RENDERING_SPEEDS = {"TURBO": "TURBO", "BALANCED": "DEFAULT", "QUALITY": "QUALITY"}
MAX_SEED = 2**31 - 1  # Ideogram's seed range is 0..2147483647
# "max size 10MB" for image and mask, and "maximum total size 10MB" across each set of character or
# style references (the OpenAPI above).
MAX_PART_BYTES = 10 * 1024 * 1024
SAFETY_MESSAGE = ("the prompt or reference image was blocked by the provider's safety filter "
                  "(it failed Ideogram's safety check); credits refunded")

WRONG_HOST = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE, hint="check the backend's base_url")
# HTTP status of a call (other than 200; 401/402/403 and the retried ones are ProviderClient's).
STATUSES = StatusTable(
    {
        400: REJECTED,
        422: Rule(FailCode.MODERATED, False, SAFETY_MESSAGE),  # "Prompt or Initial Image failed the safety checks"
        404: WRONG_HOST,
        405: WRONG_HOST,
    },
    default=Rule(FailCode.GENERATION, True, "the provider failed to generate the images; credits refunded"),
)

FilePart = tuple[str, tuple[str, bytes, str]]


class IdeogramOptions(ProviderOptions):
    """Options of a `[backends.NAME]` table with `type = "ideogram"`."""

    base_url: str = Field("https://api.ideogram.ai", pattern=r"^https?://[^/?#]+/?$", description="API host")
    api_key_env: str = Field("IDEOGRAM_API_KEY", min_length=1, description="environment variable holding the Api-Key")
    timeout_seconds: float = Field(180.0, gt=0, le=3600, description="per generate request; the call is synchronous")
    retries: int = Field(2, ge=0, le=10, description="extra attempts on 429, 5xx, timeouts and connection errors "
                         "(a retried call may be billed)")
    download_timeout_seconds: float = Field(60.0, gt=0, description="deadline for downloading one result")


@dataclass
class Call:
    """One request to Ideogram: the endpoint, its text fields and its file parts."""

    path: str
    fields: dict[str, str]
    files: list[FilePart] = field(default_factory=list)


class IdeogramBackend(ProviderBackend[ProviderClient]):
    """Ideogram 3.0: text to image, character reference, inpaint, remix and reframe."""

    type_name = "ideogram"
    models = frozenset(PATHS)
    Options = IdeogramOptions

    async def open_client(self) -> ProviderClient:
        key = read_secret(self.context, self.name, self.options.api_key_env)
        return ProviderClient(self.name, self.options.base_url, headers={"Api-Key": key}, secrets=[key],
                              options=self.options)

    def form_fields(self, job: Job) -> dict[str, str]:
        """The text fields of the task's call, as its endpoint documents them."""
        params, extra = job.params, job.params.options
        path = PATHS[params.model]
        fields = {
            "prompt": params.prompt,
            "rendering_speed": RENDERING_SPEEDS[extra.get("rendering_speed", "BALANCED")],
            "num_images": str(params.num_images),
        }
        if "style" in extra:
            # v3-reframe's kie `style` has no Ideogram field (reframe takes no style_type): the
            # extension follows the image's own style, which is what AUTO would do anyway.
            fields["style_type"] = extra["style"]
        if "expand_prompt" in extra:
            fields["magic_prompt"] = "ON" if extra["expand_prompt"] else "OFF"
        if path == REFRAME_PATH:
            fields["resolution"] = "{}x{}".format(*nearest_resolution(params.width or 1024, params.height or 1024))
        elif "image_size" in extra:
            # Generate and remix: the preset's aspect ratio (remix crops its image to it first).
            # Ideogram makes about 1 MP whatever the preset (square's 512x512 comes back 1024x1024).
            fields["aspect_ratio"] = ASPECT_RATIOS[extra["image_size"]]
        if params.strength is not None:
            # kie's strength (0.01-1, how strongly image_url shapes the result) is Ideogram's
            # `image_weight`, an integer 1-100 in the same sense, default 50
            # (developer.ideogram.ai/api-reference/images/remix: "from 1 to 100, sets how closely the
            # result follows the source image").
            fields["image_weight"] = str(image_weight(params.strength))
        if job.seeds:
            # One seed per call; Ideogram returns the seed of each image, which is what we report.
            fields["seed"] = str(job.seeds[0] % (MAX_SEED + 1))
        if params.negative_prompt:
            fields["negative_prompt"] = params.negative_prompt
        allowed = ENDPOINT_FIELDS[path]
        return {name: value for name, value in fields.items() if name in allowed}

    async def call(self, job: Job) -> Call:
        """The task's request: its endpoint, text fields and files (inputs checked, the mask converted)."""
        parts = await input_files(job, self.context.max_pixels)
        files = [(FILE_PARTS[role], part) for role, part in zip(job.params.roles, parts, strict=True)]
        check_sizes(job.params, files)
        return Call(PATHS[job.params.model], self.form_fields(job), files)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        client = self.started()
        wanted = job.params.num_images
        call = await self.call(job)
        # Every endpoint takes multipart/form-data only. The text fields go as parts without a file
        # name: httpx would send `data=` alone (text to image has no file) urlencoded.
        parts: list[tuple[str, tuple[str | None, bytes | str] | tuple[str, bytes, str]]] = [
            (name, (None, value)) for name, value in call.fields.items()]
        response = await client.request("POST", call.path, files=[*parts, *call.files])
        status = response.status_code
        if status != 200:
            raise client.fail_by(STATUSES.rule(status), f"task {job.task_id}: POST {call.path} answered HTTP "
                                 f"{status}: {response.text[:300]}", rejection_reason(response, client.redact))
        body = client.json_of(response, call.path.rsplit("/", 1)[-1])
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise malformed(client, f"task {job.task_id}: no data list in {response.text[:200]!r}")

        safe = [item for item in items
                if item.get("is_image_safe") is not False and isinstance(item.get("url"), str) and item["url"]]
        if len(safe) < wanted:
            blocked = len(items) - len(safe)
            raise client.fail(
                FailCode.MODERATED,
                f"the provider's safety filter withheld {wanted - len(safe)} of {wanted} images "
                f"(the prompt or reference image was blocked); credits refunded",
                f"task {job.task_id}: {len(items)} images returned, {blocked} unsafe or without a URL, "
                f"{wanted} wanted", transient=False)
        job.report_progress(80)

        async def fetch(index: int, item: dict[str, Any]) -> GeneratedImage:
            content, content_type = await download_result(self.context, self.name, item["url"],
                                                          timeout=self.options.download_timeout_seconds)
            seed = item.get("seed")
            if not isinstance(seed, int) or isinstance(seed, bool):
                seed = job.seeds[index] if index < len(job.seeds) else None
            return generated(content, content_type, seed)

        # Ideogram has no output-format option (its files are PNG); the worker converts to the
        # task's output_format where that differs.
        images = await gather_or_cancel([fetch(i, item) for i, item in enumerate(safe[:wanted])])
        job.report_progress(100)
        return images


def image_weight(strength: float) -> int:
    """kie's `strength` (0.01-1) as Ideogram's `image_weight` (an integer 1-100)."""
    return max(1, min(100, round(strength * 100)))


def nearest_resolution(width: int, height: int) -> tuple[int, int]:
    """The Ideogram resolution whose aspect ratio is nearest width:height (ties: nearest in area)."""
    target = width / height
    return min(RESOLUTIONS, key=lambda wh: (abs(wh[0] / wh[1] - target), abs(wh[0] * wh[1] - width * height)))


def field_name(params: GenerationParams, index: int) -> str:
    """The input field of reference `index`, for messages (`input.mask_url`)."""
    return params.reference_fields[index] if params.reference_fields else f"input reference {index + 1}"


async def input_files(job: Job, max_pixels: int) -> list[tuple[str, bytes, str]]:
    """Every input image of the task as a file part, in reference order: the bytes as fetched (or
    re-encoded from the decoded image where the worker kept none), the mask converted to Ideogram's
    colours. Missing images are an input error naming the field."""
    params = job.params
    parts: list[tuple[str, bytes, str]] = []
    for index, role in enumerate(params.roles):
        if index < len(job.reference_files):
            data, mime = job.reference_files[index]
        elif index < len(job.references):
            data, mime = encode_reference(job.references[index])
        else:
            raise BackendError(FailCode.INPUT, f"{params.model} needs the image in {field_name(params, index)}; "
                               "it could not be read")
        if role == "mask":
            data, mime = await asyncio.to_thread(ideogram_mask, job, index, data, max_pixels)
        parts.append((f"{role}.{EXTENSIONS.get(mime, 'png')}", data, mime))
    return parts


def check_sizes(params: GenerationParams, files: list[FilePart]) -> None:
    """Ideogram's 10 MB limits: per image and per mask, and in total per set of references."""
    totals: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, (part, (_name, data, _mime)) in enumerate(files):
        totals[part] = totals.get(part, 0) + len(data)
        first.setdefault(part, index)
    for part, total in totals.items():
        if total <= MAX_PART_BYTES:
            continue
        name = field_name(params, first[part])
        if part in ("image", "mask"):
            message = f"{name} is larger than 10 MB, Ideogram's limit; send a smaller image"
        else:
            message = f"the images in {name.split('[')[0]} are larger than 10 MB in total, Ideogram's limit; " \
                      "send smaller images"
        raise BackendError(FailCode.INPUT, message)


def encode_reference(image: Image.Image) -> tuple[bytes, str]:
    """A decoded reference as file bytes: PNG where it has transparency, else JPEG."""
    buffer = io.BytesIO()
    if image.mode in ("RGBA", "LA", "P"):
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue(), "image/jpeg"


def ideogram_mask(job: Job, index: int, data: bytes, max_pixels: int) -> tuple[bytes, str]:
    """The task's inpainting mask in Ideogram's colours, as a black-and-white PNG.

    kie's masks mark the area to repaint in white (GenerationParams.mask_url; kie's Ideogram models
    follow fal.ai's, whose example masks are white on black), and a mask with transparency (the
    OpenAI Images door's) marks it transparent. Ideogram's inpaint wants the opposite: "Black regions
    in the mask should match up with the regions of the image that you would like to edit"
    (developer.ideogram.ai/api-reference/api-reference/inpaint-v3; the masked-edits guide lists
    "Inpaint with Ideogram 3.0: black = repaint, white = keep"). It must be the size of the image."""
    params = job.params
    image = job.references[index] if index < len(job.references) else None
    try:
        mask = image if image is not None else decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise BackendError(FailCode.INPUT, f"{field_name(params, index)} is not a readable image: {exc}") from None
    base_index = params.roles.index("image") if "image" in params.roles else None
    if base_index is not None and base_index < len(job.references):
        base = job.references[base_index]
        if base.size != mask.size:
            raise BackendError(FailCode.INPUT, f"{field_name(params, index)} is {mask.width}x{mask.height} but "
                               f"{field_name(params, base_index)} is {base.width}x{base.height}; the mask must be the "
                               "same size as the image")
    has_alpha = mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info)
    alpha = mask.convert("RGBA").getchannel("A") if has_alpha else None
    if alpha is not None and alpha.getextrema() != (255, 255):
        ideogram = alpha.point(lambda a: 0 if a < 128 else 255)  # transparent = repaint -> black
    else:
        ideogram = mask.convert("L").point(lambda v: 0 if v >= 128 else 255)  # white = repaint -> black
    buffer = io.BytesIO()
    ideogram.save(buffer, format="PNG")
    return buffer.getvalue(), "image/png"
