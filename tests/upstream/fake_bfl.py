"""A fake Black Forest Labs API on loopback, following the documented protocol (spec/backends.md §C.3).

`POST /v1/{endpoint}` (header `x-key`, JSON body) answers `{"id", "polling_url"}`; `GET` on the
polling URL answers `{"id", "status", "result", "progress"}`; Ready results point at a sample URL
on this server (`/samples/{id}.png`), as BFL's delivery hosts do, without needing the key.

Submits are checked as BFL documents them (docs.bfl.ai; black-forest-labs/skills
`skills/bfl-api/references/endpoints.md`), with FastAPI-style 422s: the FLUX.2 endpoints only
(`flux-2-pro`, `flux-2-flex`, `flux-2-max`, `flux-2-klein-4b`, `flux-2-klein-9b`; another is 404),
a prompt, `width`/`height` multiples of 16, at least 64 and at most `max_pixels` together,
`output_format` "jpeg" or "png" (the sample is made in that format), `input_image` … `input_image_8`
numbered without gaps (klein: 4), and [flex]'s `steps` (1-50) and `guidance` (1.5-10) on flex only.

Set `mode` to script a behaviour:
    "ok"               every request succeeds (after `pending_polls` Pending answers)
    "moderated"        the poll answers "Content Moderated"
    "request_moderated" the poll answers "Request Moderated"
    "error"            the poll answers "Error"
    "task_not_found"   the poll answers "Task not found"
    "stuck"            the poll answers Pending forever
    "server_error"     every submit answers HTTP 500
    "expired"          the sample URL answers 404 (expired signed URL)
    "not_image"        the sample URL answers text
    "malformed_submit" the submit answers 200 with a body that is not JSON
    "missing_id"       the submit answers 200 with `{}`
    "malformed_poll"   the poll answers 200 with a body that is not JSON
    "no_status"        the poll answers 200 with `{"id": ...}` only
    "no_sample"        the poll answers Ready without result.sample
    "reject"           the submit answers 422 with FastAPI-style validation errors
    "bad_request"      the submit answers 400 echoing the key it received
    "no_credits"       the submit answers 402
    "foreign_polling"  the polling URL is on another host (the key must not be sent there)
    "stall_submit"     the submit is accepted (a job is made, and billed) and its answer held `stall_seconds`
`rate_limited` makes the next N submits answer 429 with `retry_after` in the body.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from tests.helpers import free_port, png_bytes, serve_app

AUTO_SIZE = (96, 64)  # the "auto" output size: stands for the first reference's size
ENDPOINTS = {"flux-2-pro": 8, "flux-2-flex": 8, "flux-2-max": 8, "flux-2-klein-4b": 4, "flux-2-klein-9b": 4}
INPUT_IMAGES = ["input_image"] + [f"input_image_{n}" for n in range(2, 11)]


def problems(endpoint: str, body: dict[str, Any], max_pixels: int) -> list[dict[str, Any]]:
    """FastAPI-style validation errors for a submit body (empty if it is valid)."""
    found: list[dict[str, Any]] = []

    def error(field: str, msg: str) -> None:
        found.append({"loc": ["body", field], "msg": msg, "type": "value_error", "input": body.get(field)})

    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        error("prompt", "Field required")
    for side in ("width", "height"):
        value = body.get(side)
        if value is not None and (not isinstance(value, int) or value < 64 or value % 16):
            error(side, "Input should be a multiple of 16 and at least 64")
    if isinstance(body.get("width"), int) and isinstance(body.get("height"), int) and \
            body["width"] * body["height"] > max_pixels:
        error("width", f"width x height must be at most {max_pixels} pixels")
    if body.get("output_format", "jpeg") not in ("jpeg", "png"):
        error("output_format", "Input should be 'jpeg' or 'png'")
    images = [name for name in INPUT_IMAGES if name in body]
    if images != INPUT_IMAGES[:len(images)] or len(images) > ENDPOINTS[endpoint]:
        error(images[-1], f"at most {ENDPOINTS[endpoint]} input images, numbered input_image, input_image_2, ...")
    for name, low, high in (("steps", 1, 50), ("guidance", 1.5, 10)):
        if name in body and (endpoint != "flux-2-flex" or not low <= body[name] <= high):
            error(name, f"{name} is a flux-2-flex option, {low} to {high}")
    return found


def jpeg_bytes(png: bytes) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def seed_colour(seed: int | None) -> tuple[int, int, int]:
    """Each image's colour encodes its seed, so tests can tell which image came from which request."""
    seed = seed or 0
    return (seed % 256, (seed // 256) % 256, 77)


@dataclass
class Recorded:
    kind: str  # submit | poll | sample
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any = None


@dataclass
class FakeJob:
    id: str
    body: dict[str, Any]
    polls: int = 0
    sample: bytes = b""


@dataclass
class FakeBfl:
    key: str = "bfl-secret-key-0123456789"
    mode: str = "ok"
    pending_polls: int = 0
    # Progress values reported on the Pending polls, in turn (e.g. 0.25 or 25).
    progress: list[float] = field(default_factory=list)
    rate_limited: int = 0
    retry_after: float = 0.05
    # BFL's "4MP" ceiling, taken as 2048x2048 (Replicate's flux-2-pro: "The maximum image size is 2048x2048").
    max_pixels: int = 2048 * 2048
    # Where polling URLs point (BFL routes them per cluster; clients must use the URL as given).
    polling_path: str = "/v1/get_result"
    # Hold each submit until this many are in flight at once (proves parallel submissions).
    hold_submits_until: int = 0
    stall_seconds: float = 1.0
    requests: list[Recorded] = field(default_factory=list)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._in_flight = 0
        self._all_in = asyncio.Event()
        self.app = Starlette(routes=[
            Route("/v1/{endpoint}", self.submit, methods=["POST"]),
            Route("/v1/get_result", self.poll, methods=["GET"]),
            Route("/cluster-7/v1/get_result", self.poll, methods=["GET"]),
            Route("/samples/{id}.{extension}", self.sample, methods=["GET"]),
        ])

    async def __aenter__(self) -> FakeBfl:
        port = free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        self._server, self._task = await serve_app(self.app, port, lifespan="off")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        await self._task

    # What the tests look at.
    @property
    def submits(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "submit"]

    @property
    def polls(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "poll"]

    @property
    def downloads(self) -> list[Recorded]:
        return [r for r in self.requests if r.kind == "sample"]

    def _record(self, kind: str, request: Request, body: Any = None) -> None:
        self.requests.append(Recorded(kind, request.method, request.url.path, dict(request.query_params),
                                      {k.lower(): v for k, v in request.headers.items()}, body))

    def _unauthorized(self, request: Request) -> Response | None:
        given = request.headers.get("x-key")
        if given != self.key:
            # Echo what we got, as some providers do: the client must redact it.
            return JSONResponse({"detail": f"Invalid or missing API key: {given}"}, status_code=401)
        return None

    async def submit(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self._record("submit", request, body)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return JSONResponse({"detail": "Too many active tasks", "retry_after": self.retry_after},
                                status_code=429)
        if self.mode == "server_error":
            return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
        if self.mode == "no_credits":
            return JSONResponse({"detail": "Insufficient credits"}, status_code=402)
        if self.mode == "reject":
            return JSONResponse({"detail": [{"loc": ["body", "width"], "msg": "Input should be a multiple of 16",
                                             "type": "value_error", "input": body.get("width")}]},
                                status_code=422)
        if self.mode == "bad_request":
            return JSONResponse({"detail": f"Bad request from x-key {request.headers.get('x-key')}\x00\n"
                                           "input_image could not be downloaded"}, status_code=400)
        if self.mode == "malformed_submit":
            return PlainTextResponse("<html>gateway hiccup</html>")
        if self.mode == "missing_id":
            return JSONResponse({})
        endpoint = request.path_params["endpoint"]
        if endpoint not in ENDPOINTS:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if not isinstance(body, dict):
            return JSONResponse({"detail": [{"loc": ["body"], "msg": "Input should be an object"}]}, status_code=422)
        if found := problems(endpoint, body, self.max_pixels):
            return JSONResponse({"detail": found}, status_code=422)
        if self.hold_submits_until:
            self._in_flight += 1
            if self._in_flight >= self.hold_submits_until:
                self._all_in.set()
            try:
                await asyncio.wait_for(self._all_in.wait(), 2.0)
            except TimeoutError:
                return JSONResponse({"detail": "submissions were not concurrent"}, status_code=409)
        job_id = f"req-{next(self._ids)}"
        self.jobs[job_id] = FakeJob(job_id, body)
        self.events.append(("submit", job_id))
        host = "http://127.0.0.2:9" if self.mode == "foreign_polling" else self.base_url
        if self.mode == "stall_submit":
            await asyncio.sleep(self.stall_seconds)
        return JSONResponse({"id": job_id, "polling_url": f"{host}{self.polling_path}?id={job_id}",
                             "cost": 3.0})

    async def poll(self, request: Request) -> Response:
        self._record("poll", request)
        if (denied := self._unauthorized(request)) is not None:
            return denied
        job = self.jobs.get(request.query_params.get("id", ""))
        if job is None:
            return JSONResponse({"id": request.query_params.get("id"), "status": "Task not found"})
        job.polls += 1
        if self.mode == "malformed_poll":
            return PlainTextResponse("not json at all")
        if self.mode == "no_status":
            return JSONResponse({"id": job.id})
        status = {"moderated": "Content Moderated", "request_moderated": "Request Moderated", "error": "Error",
                  "task_not_found": "Task not found"}.get(self.mode)
        if status:
            return JSONResponse({"id": job.id, "status": status, "result": None,
                                 "details": {"Moderation Reasons": ["Derivative Works"]}
                                 if "moderated" in self.mode else None})
        if self.mode == "stuck" or job.polls <= self.pending_polls:
            progress = self.progress[job.polls - 1] if job.polls - 1 < len(self.progress) else None
            return JSONResponse({"id": job.id, "status": "Pending", "result": None, "progress": progress})
        if self.mode == "no_sample":
            return JSONResponse({"id": job.id, "status": "Ready", "result": {"prompt": job.body["prompt"]}})
        width, height = job.body.get("width"), job.body.get("height")
        if not (width and height):
            width, height = AUTO_SIZE
        job.sample = png_bytes(width, height, seed_colour(job.body.get("seed")))
        if job.body.get("output_format", "jpeg") == "jpeg":
            job.sample = jpeg_bytes(job.sample)
        self.events.append(("ready", job.id))
        extension = "png" if job.body.get("output_format") == "png" else "jpeg"
        return JSONResponse({
            "id": job.id, "status": "Ready", "progress": None,
            "result": {"sample": f"{self.base_url}/samples/{job.id}.{extension}?se=2099&sig=abc",
                       "prompt": job.body["prompt"], "seed": job.body.get("seed"),
                       "start_time": 1.0, "end_time": 2.0, "duration": 1.0},
        })

    async def sample(self, request: Request) -> Response:
        self._record("sample", request)
        job = self.jobs.get(request.path_params["id"])
        self.events.append(("download", request.path_params["id"]))
        if job is None or not job.sample or self.mode == "expired":
            return PlainTextResponse("<Error><Code>AuthenticationFailed</Code></Error>", status_code=404)
        if self.mode == "not_image":
            return PlainTextResponse("this is not an image")
        return Response(job.sample, media_type=f"image/{request.path_params['extension']}")
