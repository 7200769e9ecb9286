"""Black Forest Labs API: FLUX.2 [pro] and [flex], text to image and editing with 1-8 reference
images (spec/backends.md §C.3, §D.3).

The flow is asynchronous. `POST {base_url}/v1/{endpoint}` with the `x-key` header answers
`{"id", "polling_url"}`; we poll that URL until the status is Ready and download `result.sample`
at once (signed URLs expire after 10 minutes). One request makes one image, so a task asking for N
images makes N submissions in parallel, each with its own seed.

Endpoints (docs.bfl.ai; black-forest-labs/skills `skills/bfl-api/references/endpoints.md`): the
`flux-2/pro-*` models go to `/v1/flux-2-pro`, the `flux-2/flex-*` models to `/v1/flux-2-flex`
(the `endpoint` option sends every task to one path instead, e.g. `flux-2-max`). Every FLUX.2
endpoint does both text to image and editing: the same body, with `input_image` … for an edit.
[flex]'s own `steps` (1-50, default 50) and `guidance` (1.5-10, default 4.5) are not sent: kie's
flex models have no such fields, so BFL's defaults apply.

Reference images are passed as URLs (`input_image`, `input_image_2` … `input_image_8`): BFL
downloads them itself, so they must be reachable from the internet. With
`send_references = "inline"` the bytes the worker already fetched are sent base64-encoded instead,
for references BFL cannot reach (uploads to a Safelight on a private network).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import Callable
from functools import partial
from ipaddress import ip_address
from typing import Any, Literal

import httpx
from pydantic import Field

from safelight.backends.base import (
    GeneratedImage,
    Job,
    read_secret,
)
from safelight.backends.upstream.provider import (
    NO_SUCH_ENDPOINT,
    REJECTED,
    PollingOptions,
    ProviderBackend,
    ProviderClient,
    Rule,
    StatusTable,
    download_result,
    gather_or_cancel,
    generated,
    malformed,
    rejection_reason,
)
from safelight.kie import FailCode

log = logging.getLogger("safelight.backends.upstream.bfl")

MAX_REFERENCES = 8
# Each model's endpoint under /v1/.
ENDPOINTS = {
    "flux-2/pro-image-to-image": "flux-2-pro",
    "flux-2/pro-text-to-image": "flux-2-pro",
    "flux-2/flex-image-to-image": "flux-2-flex",
    "flux-2/flex-text-to-image": "flux-2-flex",
}
# BFL's `output_format`: "jpeg" (its default) or "png" (endpoints.md). A task asking for WebP gets
# PNG, lossless, which the worker then encodes as WebP: one lossy encoding, not two.
OUTPUT_FORMATS = {"jpeg": "jpeg", "png": "png", "webp": "png"}
PENDING_STATUSES = frozenset({"Pending", "Queued", "Processing"})
MODERATED_STATUSES = frozenset({"Request Moderated", "Content Moderated"})
FAILED_STATUSES = frozenset({"Error", "Failed", "Task not found"})
MODERATED_MESSAGE = ("the prompt or a reference image was blocked by the provider's safety filter; "
                     "credits refunded")
GENERATION_FAILED = Rule(FailCode.GENERATION, True, "the provider failed to generate the image; credits refunded")

# HTTP status of the submit (other than 200; 401/402/403 and the retried ones are ProviderClient's).
SUBMIT_STATUSES = StatusTable({400: REJECTED, 413: REJECTED, 422: REJECTED, 404: NO_SUCH_ENDPOINT,
                               405: NO_SUCH_ENDPOINT}, default=GENERATION_FAILED)
# HTTP status of a poll (other than 200).
POLL_STATUSES = StatusTable({404: Rule(FailCode.GENERATION, True, "the provider lost the request; credits refunded")},
                            default=GENERATION_FAILED)


class BflOptions(PollingOptions):
    """Options of a `[backends.NAME]` table with `type = "bfl"`."""

    renamed = {"poll_deadline_seconds": "deadline_seconds"}

    base_url: str = Field("https://api.bfl.ai", pattern=r"^https?://[^/?#]+/?$",
                          description="API host; api.eu.bfl.ai and api.us.bfl.ai are regional alternatives")
    api_key_env: str = Field("BFL_API_KEY", min_length=1, description="environment variable holding the x-key")
    endpoint: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]*$", description=(
        "model path under /v1/ for every task (flux-2-max, ...); unset, pro models go to flux-2-pro and "
        "flex models to flux-2-flex"))
    safety_tolerance: int = Field(2, ge=0, le=5, description=(
        "BFL moderation level, 0 (strict) to 5 (permissive). Tasks with nsfw_checker=true use min(this, 2)"))
    max_pixels: int = Field(4_000_000, ge=64 * 64, description=(
        "largest output BFL accepts (4 MP; docs.bfl.ai); bigger bucket sizes (2K) are scaled down, keeping the "
        "aspect ratio"))
    poll_interval_seconds: float = Field(0.5, gt=0, description="first poll delay; grows x1.5 per poll")
    max_poll_interval_seconds: float = Field(5.0, gt=0, description="cap on the poll delay")
    deadline_seconds: float = Field(300.0, gt=0, description="give up on one image (failCode 504) after this long")
    download_timeout_seconds: float = Field(60.0, gt=0, description="deadline for downloading one result")
    send_references: Literal["url", "inline"] = Field(
        "url", description='"url": BFL downloads the input URLs; "inline": send the fetched bytes as base64')


class BflBackend(ProviderBackend[ProviderClient]):
    """FLUX.2 [pro] and [flex] (or another FLUX.2 endpoint) on the Black Forest Labs API."""

    type_name = "bfl"
    models = frozenset(ENDPOINTS)
    Options = BflOptions

    async def open_client(self) -> ProviderClient:
        key = read_secret(self.context, self.name, self.options.api_key_env)
        return ProviderClient(self.name, self.options.base_url, headers={"x-key": key}, secrets=[key],
                              options=self.options)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        self.started()
        count = job.params.num_images
        progress = [0.0] * count

        def report(index: int, fraction: float) -> None:
            progress[index] = min(max(fraction, 0.0), 1.0)
            job.report_progress(int(100 * sum(progress) / count))

        seeds = [job.seeds[i] if i < len(job.seeds) else None for i in range(count)]
        return await gather_or_cancel([self._one(job, seeds[i], partial(report, i)) for i in range(count)])

    def request_body(self, job: Job, seed: int | None) -> dict[str, Any]:
        params = job.params
        body: dict[str, Any] = {"prompt": params.prompt}
        if self.options.send_references == "inline":
            references = [base64.b64encode(data).decode() for data, _mime in job.reference_files]
        else:
            references = list(params.reference_urls)
        for index, reference in enumerate(references[:MAX_REFERENCES]):
            body["input_image" if index == 0 else f"input_image_{index + 1}"] = reference
        if params.width and params.height:  # None = "auto": the output follows the first reference
            body["width"], body["height"] = fit_pixels(params.width, params.height, self.options.max_pixels)
        if seed is not None:
            body["seed"] = seed
        tolerance = self.options.safety_tolerance
        body["safety_tolerance"] = min(tolerance, 2) if params.nsfw_checker else tolerance
        body["output_format"] = OUTPUT_FORMATS[params.output_format]
        return body

    def endpoint(self, job: Job) -> str:
        return self.options.endpoint or ENDPOINTS[job.params.model]

    async def _one(self, job: Job, seed: int | None, report: Callable[[float], None]) -> GeneratedImage:
        client = self.started()
        endpoint = self.endpoint(job)
        response = await client.request("POST", f"/v1/{endpoint}", json=self.request_body(job, seed))
        if response.status_code != 200:
            raise client.fail_by(SUBMIT_STATUSES.rule(response.status_code),
                                 f"task {job.task_id}: POST /v1/{endpoint} answered HTTP "
                                 f"{response.status_code}: {response.text[:300]}",
                                 rejection_reason(response, client.redact))
        submitted = client.json_of(response, "submit")
        request_id = submitted.get("id") if isinstance(submitted, dict) else None
        polling_url = submitted.get("polling_url") if isinstance(submitted, dict) else None
        if not isinstance(request_id, str) or not request_id:
            raise malformed(client, f"task {job.task_id}: submit answered without an id: {response.text[:200]!r}")
        if not isinstance(polling_url, str) or not polling_url:
            polling_url = str(httpx.URL("/v1/get_result", params={"id": request_id}))
        elif not self.polling_url_allowed(polling_url):
            # The x-key header goes with every poll: never send it to a host that is not BFL's.
            raise malformed(client, f"task {job.task_id}: polling_url {polling_url.split('?')[0]!r} is not on "
                                    f"the API host's domain")
        log.debug("backend %s: task %s submitted as %s", self.name, job.task_id, request_id)
        result = await self._poll(job, client, polling_url, request_id, report)

        sample = result.get("sample") if isinstance(result, dict) else None
        if not isinstance(sample, str) or not sample:
            raise malformed(client, f"task {job.task_id}: request {request_id} is Ready without result.sample")
        data, mime = await download_result(self.context, self.name, sample,
                                           timeout=self.options.download_timeout_seconds)
        report(1.0)
        result_seed = result.get("seed")
        if isinstance(result_seed, int) and not isinstance(result_seed, bool):
            seed = result_seed
        return generated(data, mime, seed)

    async def _poll(self, job: Job, client: ProviderClient, polling_url: str, request_id: str,
                    report: Callable[[float], None]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.deadline_seconds
        delay = self.options.poll_interval_seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise client.fail(FailCode.TIMEOUT, "the provider did not finish the image in time; credits refunded",
                                  f"task {job.task_id}: request {request_id} still not Ready after "
                                  f"{self.options.deadline_seconds:g} s", transient=True)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, self.options.max_poll_interval_seconds)
            response = await client.request("GET", polling_url)
            if response.status_code != 200:
                raise client.fail_by(POLL_STATUSES.rule(response.status_code),
                                     f"task {job.task_id}: poll of {request_id} answered HTTP "
                                     f"{response.status_code}: {response.text[:300]}")
            body = client.json_of(response, "poll")
            status = body.get("status") if isinstance(body, dict) else None
            if not isinstance(status, str):
                raise malformed(client, f"task {job.task_id}: poll of {request_id} has no status: "
                                        f"{response.text[:200]!r}")
            if status == "Ready":
                return body.get("result") or {}
            if status in MODERATED_STATUSES:
                raise client.fail(FailCode.MODERATED, MODERATED_MESSAGE,
                                  f"task {job.task_id}: request {request_id}: {status}: "
                                  f"{str(body.get('details'))[:300]}", transient=False)
            if status in FAILED_STATUSES:
                raise client.fail_by(GENERATION_FAILED, f"task {job.task_id}: request {request_id}: {status}: "
                                     f"{str(body.get('details') or body.get('result'))[:300]}")
            if status not in PENDING_STATUSES:
                log.debug("backend %s: request %s has unknown status %r; still polling", self.name, request_id,
                          status[:50])
            fraction = progress_fraction(body.get("progress"))
            if fraction is not None:
                report(min(fraction, 0.99))

    def polling_url_allowed(self, url: str) -> bool:
        """A polling URL must be on the API host or, for named hosts, its parent domain: the global
        endpoint api.bfl.ai hands out polling URLs on cluster hosts such as api.us1.bfl.ai."""
        try:
            target, base = httpx.URL(url), httpx.URL(self.options.base_url)
        except httpx.InvalidURL:
            return False
        if not target.is_absolute_url:
            return True  # httpx joins it to the base URL: same host
        if target.scheme != base.scheme or target.userinfo:
            return False
        if target.host == base.host:
            return target.port == base.port
        try:
            ip_address(base.host)
            return False
        except ValueError:
            pass
        labels = base.host.split(".")
        return len(labels) >= 2 and target.host.endswith("." + ".".join(labels[-2:])) and target.port is None


def fit_pixels(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled down to at most max_pixels, keeping the aspect ratio, multiples of 16."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(64, int(width * scale) // 16 * 16), max(64, int(height * scale) // 16 * 16)


def progress_fraction(value: Any) -> float | None:
    """BFL's optional `progress`, as 0..1 (it may come as a fraction or a percentage)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        return None
    return value if value <= 1 else min(value / 100, 1.0)
