"""A fake Ideogram API v3 on loopback, following the documented protocol (spec/backends.md §C.2).

`POST /v1/ideogram-v3/{generate,inpaint,remix,reframe}` (header `Api-Key`, multipart/form-data) is
synchronous and answers `{"created", "data": [{"url", "prompt", "resolution", "is_image_safe",
"seed", "style_type"}]}`; the image URLs point at this server (`/images/{id}.png`) and need no key.
Each endpoint takes the fields and files its OpenAPI documents (developer.ideogram.ai, mirrored in
api-evangelist/ideogram `openapi/_original/ideogram-openapi.yml`) and answers 400 to a required one
missing, an enum value it does not know, or a field it does not document (stricter than Ideogram
may be, so a client sending what an endpoint lacks is caught). Output sizes are 1/8 of Ideogram's
(1x1 -> 128x128 for 1024x1024): generate and remix by aspect ratio, reframe by `resolution`,
inpaint the size of its image; each image's colour encodes its seed.

Set `mode` to script a behaviour:
    "ok"            every request succeeds
    "slow"          the answer waits `delay` seconds first (client timeouts)
    "unsafe_one"    the last image has is_image_safe false and no URL
    "unsafe_all"    every image is unsafe
    "fewer"         one image fewer than asked for, all safe
    "safety_422"    HTTP 422: prompt failed the safety check
    "bad_request"   HTTP 400 with an error message (echoing the key it received)
    "server_error"  HTTP 500 on every request
    "expired"       image URLs answer 404
    "malformed"     200 with a body that is not JSON
    "missing_data"  200 with `{"created": ...}` and no data
`rate_limited` makes the next N requests answer 429 (Retry-After header of `retry_after` seconds).
"""

from __future__ import annotations

import asyncio
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, png_bytes, serve_app


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image

# Ideogram answers at about 1 MP; these are scaled-down stand-ins (1/8) with the same aspect ratios.
SIZES = {"1x1": (128, 128), "16x9": (164, 92), "9x16": (92, 164), "4x3": (144, 108), "3x4": (108, 144)}
ASPECT_RATIOS = {"1x3", "3x1", "1x2", "2x1", "9x16", "16x9", "10x16", "16x10", "2x3", "3x2", "3x4", "4x3", "4x5",
                 "5x4", "1x1"}
RESOLUTIONS = set(
    "512x1536 576x1408 576x1472 576x1536 640x1344 640x1408 640x1472 640x1536 704x1152 704x1216 704x1280 704x1344 "
    "704x1408 704x1472 736x1312 768x1088 768x1216 768x1280 768x1344 800x1280 832x960 832x1024 832x1088 832x1152 "
    "832x1216 832x1248 864x1152 896x960 896x1024 896x1088 896x1120 896x1152 960x832 960x896 960x1024 960x1088 "
    "1024x832 1024x896 1024x960 1024x1024 1088x768 1088x832 1088x896 1088x960 1120x896 1152x704 1152x832 1152x864 "
    "1152x896 1216x704 1216x768 1216x832 1248x832 1280x704 1280x768 1280x800 1312x736 1344x640 1344x704 1344x768 "
    "1408x576 1408x640 1408x704 1472x576 1472x640 1472x704 1536x512 1536x576 1536x640".split())
ENUMS = {
    "rendering_speed": {"FLASH", "TURBO", "DEFAULT", "QUALITY"},
    "magic_prompt": {"AUTO", "ON", "OFF"},
    "style_type": {"AUTO", "GENERAL", "REALISTIC", "DESIGN", "FICTION"},
    "aspect_ratio": ASPECT_RATIOS,
    "resolution": RESOLUTIONS,
}
REFERENCES = {"style_reference_images", "character_reference_images", "character_reference_images_mask"}


@dataclass(frozen=True)
class Endpoint:
    required: frozenset[str]  # fields or files
    fields: frozenset[str]  # every text field documented
    files: frozenset[str]  # every file part documented


ENDPOINTS = {
    "generate": Endpoint(frozenset({"prompt"}), frozenset({
        "prompt", "seed", "resolution", "aspect_ratio", "rendering_speed", "magic_prompt", "negative_prompt",
        "num_images", "color_palette", "style_codes", "style_type", "style_preset", "custom_model_uri"}),
        frozenset(REFERENCES)),
    "inpaint": Endpoint(frozenset({"image", "mask", "prompt"}), frozenset({
        "prompt", "magic_prompt", "num_images", "seed", "rendering_speed", "style_type", "style_preset",
        "color_palette", "style_codes"}), frozenset({"image", "mask", *REFERENCES})),
    "remix": Endpoint(frozenset({"image", "prompt"}), frozenset({
        "prompt", "image_weight", "seed", "resolution", "aspect_ratio", "rendering_speed", "magic_prompt",
        "negative_prompt", "num_images", "color_palette", "style_codes", "style_type", "style_preset"}),
        frozenset({"image", *REFERENCES})),
    "reframe": Endpoint(frozenset({"image", "resolution"}), frozenset({
        "resolution", "num_images", "seed", "rendering_speed", "style_preset", "color_palette", "style_codes"}),
        frozenset({"image", "style_reference_images"})),
}


@dataclass
class FilePart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Recorded:
    method: str
    path: str  # /v1/ideogram-v3/generate ...
    headers: dict[str, str]
    content_type: str
    # Multipart text fields; repeated names keep every value.
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None

    def file(self, name: str) -> FilePart | None:
        return next((part for part in self.files if part.name == name), None)

    @property
    def endpoint(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class FakeIdeogram:
    key: str = "ideogram-secret-key-9876543210"
    mode: str = "ok"
    delay: float = 0.5
    rate_limited: int = 0
    retry_after: float = 0.05
    requests: list[Recorded] = field(default_factory=list)
    downloads: list[dict[str, str]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    base_url: str = ""

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self.app = Starlette(routes=[
            Route("/v1/ideogram-v3/{endpoint}", self.generate, methods=["POST"]),
            Route("/images/{id}.png", self.image, methods=["GET"]),
        ])

    async def __aenter__(self) -> FakeIdeogram:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._server, self._task = await serve_app(self.app, port, lifespan="off")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await self._task

    async def generate(self, request: Request) -> Response:
        recorded = Recorded(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()},
                            request.headers.get("content-type", ""))
        self.requests.append(recorded)
        if request.headers.get("api-key") != self.key:
            return JSONResponse({"detail": f"Not authorized: {request.headers.get('api-key')}"}, status_code=401)
        if not recorded.content_type.startswith("multipart/form-data"):
            return JSONResponse({"detail": "expected multipart/form-data"}, status_code=400)
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    recorded.files.append(FilePart(name, value.filename, value.content_type, await value.read()))
                else:
                    recorded.fields.setdefault(name, []).append(value)
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return JSONResponse({"detail": "Too many requests"}, status_code=429,
                                headers={"Retry-After": str(self.retry_after)})
        if self.mode == "slow":
            await asyncio.sleep(self.delay)
        if self.mode == "server_error":
            return JSONResponse({"detail": "upstream exploded"}, status_code=500)
        if self.mode == "safety_422":
            return JSONResponse({"detail": "Prompt failed the safety check."}, status_code=422)
        if self.mode == "bad_request":
            return JSONResponse({"detail": f"Invalid aspect ratio for key {request.headers.get('api-key')}"},
                                status_code=400)
        if self.mode == "malformed":
            return PlainTextResponse("upstream connect error or disconnect/reset before headers")
        if self.mode == "missing_data":
            return JSONResponse({"created": "2026-01-01T00:00:00Z"})
        problem, size = self.check(recorded)
        if problem:
            return JSONResponse({"detail": problem}, status_code=400)

        count = int(recorded.field("num_images") or 1)
        seed = int(recorded.field("seed") or 12345)
        width, height = size
        if self.mode == "fewer":
            count -= 1
        data: list[dict[str, Any]] = []
        for index in range(count):
            image_id = f"img-{next(self._ids)}"
            safe = not (self.mode == "unsafe_all" or (self.mode == "unsafe_one" and index == count - 1))
            if safe:
                self.images[image_id] = png_bytes(width, height, ((seed + index) % 256, 10 * index, 200))
            data.append({
                "url": f"{self.base_url}/images/{image_id}.png?exp=1" if safe else None,
                "prompt": recorded.field("prompt"),
                "resolution": f"{width}x{height}",
                "is_image_safe": safe,
                "seed": seed + index,
                "style_type": recorded.field("style_type"),
            })
        return JSONResponse({"created": "2026-01-01T00:00:00Z", "data": data})

    def check(self, recorded: Recorded) -> tuple[str, tuple[int, int]]:
        """What is wrong with the request as its endpoint documents it ("" if nothing), and the size
        of the images it makes."""
        endpoint = ENDPOINTS.get(recorded.endpoint)
        if endpoint is None:
            return f"no such endpoint {recorded.endpoint}", (0, 0)
        given = set(recorded.fields) | {part.name for part in recorded.files}
        if missing := sorted(endpoint.required - given):
            return f"{', '.join(missing)} required", (0, 0)
        if unknown := sorted(set(recorded.fields) - endpoint.fields):
            return f"unexpected field {unknown[0]}", (0, 0)
        if unknown := sorted({part.name for part in recorded.files} - endpoint.files):
            return f"unexpected file {unknown[0]}", (0, 0)
        for name, allowed in ENUMS.items():
            if (value := recorded.field(name)) is not None and value not in allowed:
                return f"{name}: invalid value {value!r}", (0, 0)
        if recorded.field("aspect_ratio") and recorded.field("resolution"):
            return "aspect_ratio and resolution cannot be used together", (0, 0)
        weight = recorded.field("image_weight")
        if weight is not None and not (weight.isdigit() and 1 <= int(weight) <= 100):
            return f"image_weight: must be an integer 1-100, got {weight!r}", (0, 0)
        if not 1 <= int(recorded.field("num_images") or 1) <= 8:
            return "num_images: must be 1-8", (0, 0)
        if len([p for p in recorded.files if p.name == "character_reference_images"]) > 1:
            return "currently only 1 character reference image is supported", (0, 0)
        if recorded.endpoint == "inpaint":
            image, mask = decode(recorded.file("image").data), decode(recorded.file("mask").data)
            if image.size != mask.size:
                return "mask must be the same size as the image", (0, 0)
            if any(mask.convert("L").histogram()[1:255]):
                return "mask must be black and white", (0, 0)
            return "", image.size
        if resolution := recorded.field("resolution"):
            width, height = (int(v) for v in resolution.split("x"))
            return "", (width // 8, height // 8)
        return "", SIZES.get(recorded.field("aspect_ratio") or "1x1", (128, 128))

    async def image(self, request: Request) -> Response:
        self.downloads.append({k.lower(): v for k, v in request.headers.items()})
        data = self.images.get(request.path_params["id"])
        if data is None or self.mode == "expired":
            return PlainTextResponse("link expired", status_code=404)
        return Response(data, media_type="image/png")
