"""A fake Ideogram API v3 on loopback, following the documented protocol (spec/backends.md §C.2).

`POST /v1/ideogram-v3/generate` (header `Api-Key`, multipart/form-data) is synchronous and answers
`{"created", "data": [{"url", "prompt", "resolution", "is_image_safe", "seed", "style_type"}]}`;
the image URLs point at this server (`/images/{id}.png`) and need no key.

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
import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, png_bytes, serve_app

# Ideogram answers at about 1 MP; these are scaled-down stand-ins with the same aspect ratios.
SIZES = {"1x1": (128, 128), "16x9": (164, 92), "9x16": (92, 164), "4x3": (144, 108), "3x4": (108, 144)}


@dataclass
class FilePart:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    content_type: str
    # Multipart text fields; repeated names keep every value.
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else None


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
            Route("/v1/ideogram-v3/generate", self.generate, methods=["POST"]),
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
        if not recorded.field("prompt") or not recorded.files:
            return JSONResponse({"detail": "prompt and character_reference_images are required"}, status_code=400)

        count = int(recorded.field("num_images") or 1)
        seed = int(recorded.field("seed") or 12345)
        aspect = recorded.field("aspect_ratio") or "1x1"
        width, height = SIZES[aspect]
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

    async def image(self, request: Request) -> Response:
        self.downloads.append({k.lower(): v for k, v in request.headers.items()})
        data = self.images.get(request.path_params["id"])
        if data is None or self.mode == "expired":
            return PlainTextResponse("link expired", status_code=404)
        return Response(data, media_type="image/png")
