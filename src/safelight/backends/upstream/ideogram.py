"""Ideogram API v3 with a character reference (spec/backends.md §C.2, §D.5).

`POST {base_url}/v1/ideogram-v3/generate` with the `Api-Key` header and a multipart/form-data
body is synchronous: the answer lists the images (`data[i].url`, `is_image_safe`, `seed`). The
URLs are temporary, so they are downloaded at once. Ideogram answers at about 1 MP whatever the
preset (16x9 comes back near 1312x736); the bytes are kept as returned, not resized.
"""

from __future__ import annotations

import io
from typing import Any

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
from safelight.kie import FailCode

GENERATE_PATH = "/v1/ideogram-v3/generate"
# kie's `image_size` presets -> Ideogram aspect ratios (Ideogram writes them with an "x").
ASPECT_RATIOS = {
    "square": "1x1",
    "square_hd": "1x1",
    "portrait_4_3": "3x4",
    "portrait_16_9": "9x16",
    "landscape_4_3": "4x3",
    "landscape_16_9": "16x9",
}
RENDERING_SPEEDS = {"TURBO": "TURBO", "BALANCED": "DEFAULT", "QUALITY": "QUALITY"}
MAX_SEED = 2**31 - 1  # Ideogram's seed range is 0..2147483647
MAX_REFERENCE_BYTES = 10 * 1024 * 1024
SAFETY_MESSAGE = ("the prompt or reference image was blocked by the provider's safety filter "
                  "(it failed Ideogram's safety check); credits refunded")

WRONG_HOST = Rule(FailCode.UNAVAILABLE, True, PROVIDER_UNAVAILABLE, hint="check the backend's base_url")
# HTTP status of the generate call (other than 200; 401/402/403 and the retried ones are ProviderClient's).
STATUSES = StatusTable(
    {
        400: REJECTED,
        422: Rule(FailCode.MODERATED, False, SAFETY_MESSAGE),  # Ideogram's answer to a failed safety check
        404: WRONG_HOST,
        405: WRONG_HOST,
    },
    default=Rule(FailCode.GENERATION, True, "the provider failed to generate the images; credits refunded"),
)


class IdeogramOptions(ProviderOptions):
    """Options of a `[backends.NAME]` table with `type = "ideogram"`."""

    base_url: str = Field("https://api.ideogram.ai", pattern=r"^https?://[^/?#]+/?$", description="API host")
    api_key_env: str = Field("IDEOGRAM_API_KEY", min_length=1, description="environment variable holding the Api-Key")
    timeout_seconds: float = Field(180.0, gt=0, le=3600, description="per generate request; the call is synchronous")
    retries: int = Field(2, ge=0, le=10, description="extra attempts on 429, 5xx, timeouts and connection errors "
                         "(a retried call may be billed)")
    download_timeout_seconds: float = Field(60.0, gt=0, description="deadline for downloading one result")


class IdeogramBackend(ProviderBackend[ProviderClient]):
    """Ideogram v3 "character reference" generation."""

    type_name = "ideogram"
    models = frozenset({"ideogram/character"})
    Options = IdeogramOptions

    async def open_client(self) -> ProviderClient:
        key = read_secret(self.context, self.name, self.options.api_key_env)
        return ProviderClient(self.name, self.options.base_url, headers={"Api-Key": key}, secrets=[key],
                              options=self.options)

    def form_fields(self, job: Job) -> dict[str, str]:
        params, extra = job.params, job.params.options
        fields = {
            "prompt": params.prompt,
            "rendering_speed": RENDERING_SPEEDS[extra.get("rendering_speed", "BALANCED")],
            "style_type": extra.get("style", "AUTO"),
            "magic_prompt": "ON" if extra.get("expand_prompt", True) else "OFF",
            "aspect_ratio": ASPECT_RATIOS[extra.get("image_size", "square_hd")],
            "num_images": str(params.num_images),
        }
        if job.seeds:
            # One seed per call; Ideogram returns the seed of each image, which is what we report.
            fields["seed"] = str(job.seeds[0] % (MAX_SEED + 1))
        if params.negative_prompt:
            fields["negative_prompt"] = params.negative_prompt
        return fields

    async def generate(self, job: Job) -> list[GeneratedImage]:
        client = self.started()
        wanted = job.params.num_images
        data, mime = reference_file(job)
        files = [("character_reference_images", (f"reference.{EXTENSIONS.get(mime, 'png')}", data, mime))]
        response = await client.request("POST", GENERATE_PATH, data=self.form_fields(job), files=files)
        status = response.status_code
        if status != 200:
            raise client.fail_by(STATUSES.rule(status), f"task {job.task_id}: POST {GENERATE_PATH} answered HTTP "
                                 f"{status}: {response.text[:300]}", rejection_reason(response, client.redact))
        body = client.json_of(response, "generate")
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

        images = await gather_or_cancel([fetch(i, item) for i, item in enumerate(safe[:wanted])])
        job.report_progress(100)
        return images


def reference_file(job: Job) -> tuple[bytes, str]:
    """The first reference as file bytes: as fetched when the worker kept them, else re-encoded."""
    if job.reference_files:
        data, mime = job.reference_files[0]
    elif job.references:
        buffer = io.BytesIO()
        image = job.references[0]
        if image.mode in ("RGBA", "LA", "P"):
            image.save(buffer, format="PNG")
            mime = "image/png"
        else:
            image.convert("RGB").save(buffer, format="JPEG", quality=95)
            mime = "image/jpeg"
        data = buffer.getvalue()
    else:
        raise BackendError(FailCode.INPUT, "ideogram/character needs a reference image in input.reference_image_urls")
    if len(data) > MAX_REFERENCE_BYTES:
        raise BackendError(FailCode.INPUT, "the reference image is larger than 10 MB, the provider's limit; "
                                       "send a smaller image")
    return data, mime
