"""Gemini image generation ("Nano Banana"): the nano-banana family, and the successor of Imagen 4
(spec/backends.md §C.1, §D.4).

`client.aio.models.generate_content(model, contents=[prompt, *images], config=GenerateContentConfig(
response_modalities=["IMAGE"], seed, image_config=ImageConfig(aspect_ratio, image_size)))`, on the
Gemini Developer API (`{base}/{version}/models/{model}:generateContent`, `x-goog-api-key`) or on
Vertex AI (`vertexai = true`: the publisher-model path, with an express-mode key, a static token
or Application Default Credentials, as for the `google` backend). Google's guide to all of it:
ai.google.dev/gemini-api/docs/image-generation.

Each public model has its Gemini model (`model_map` over DEFAULT_MODELS, else `model`):

- google/nano-banana, google/nano-banana-edit: Gemini 2.5 Flash Image (`gemini-2.5-flash-image`).
- nano-banana-2: Gemini 3.1 Flash Image (`gemini-3.1-flash-image`).
- nano-banana-pro: Gemini 3 Pro Image. kie calls it `gemini-3-pro-image-preview`; Google shut that
  preview id down on 2026-06-25 for the GA `gemini-3-pro-image` (ai.google.dev/gemini-api/docs/deprecations),
  which is the default here.
- google/imagen4-ultra: `gemini-3-pro-image`, Google's replacement for imagen-4.0-ultra-generate-001
  (firebase.google.com/docs/ai-logic/imagen-models-migration); google/imagen4-fast, google/imagen4
  and z-image: `model` (gemini-3.1-flash-image; the migration page now names gemini-nano-banana-2.1,
  thinking MINIMAL for fast and HIGH for imagen4, which `model` and `thinking_level` can select).

How the task's parameters travel (ImageConfig fields: the SDK's types.ImageConfig and Vertex's
aiplatform.v1.ImageConfig):

- Reference images (nano-banana-edit `image_urls`, nano-banana-2/pro `image_input`) are inline image
  parts after the prompt text, in input order, with the bytes and type the worker fetched.
- `aspect_ratio` -> ImageConfig.aspect_ratio; `auto` is left out, and Gemini then follows the first
  input image, or makes a square without one (the guide's "Aspect ratios and image size").
- `resolution` (nano-banana-2, nano-banana-pro) -> ImageConfig.image_size "1K" / "2K" / "4K". Gemini
  2.5 Flash Image has a single 1K size, so nano-banana and nano-banana-edit send none; the Imagen
  stand-ins send the `image_size` option.
- `output_format` -> ImageConfig.output_mime_type (image/png, image/jpeg) on Vertex AI, whose
  ImageConfig.ImageOutputOptions takes it; the Gemini Developer API has no such field (the SDK
  refuses it) and answers PNG, so there the worker re-encodes a jpeg task's image.
- nano-banana-2's `google_search` -> the Google Search tool (the guide's "Grounding with Google Search").
- The Imagen family's negative prompt has no field: it is folded into the prompt as "Avoid: ...".
  Nor is there an image count: `num_images` becomes that many concurrent calls, call i with seed
  `job.seeds[i]`. One moderated call fails the task (permanently); the other calls' images are dropped.
"""

from __future__ import annotations

import asyncio
import io
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from safelight.backends.base import BackendError, GeneratedImage, Job
from safelight.backends.upstream.google import (
    MODERATED,
    GoogleCall,
    GoogleClient,
    GoogleOptions,
    call_google,
    check_model_map,
    image_of,
    open_client,
    provider_seed,
    safe_text,
)
from safelight.backends.upstream.provider import MALFORMED, ProviderBackend
from safelight.catalog import get_model
from safelight.kie import FailCode

if TYPE_CHECKING:
    from google.genai import types

# finishReason values that mean the safety or policy filters stopped the image: the same prompt
# would be stopped again, so these fail permanently.
MODERATION_FINISH = frozenset({
    "SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "RECITATION",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
})

# The Gemini model of each public model, unless model_map names another; the models without an
# entry get the `model` option.
DEFAULT_MODELS: dict[str, str] = {
    "google/nano-banana": "gemini-2.5-flash-image",
    "google/nano-banana-edit": "gemini-2.5-flash-image",
    "nano-banana-2": "gemini-3.1-flash-image",
    "nano-banana-pro": "gemini-3-pro-image",
    "google/imagen4-ultra": "gemini-3-pro-image",
}
# Text-to-image models served as Imagen's successor: negative prompts folded in, the `image_size`
# and `thinking_level` options apply.
TEXT_MODELS = frozenset({"google/imagen4-fast", "google/imagen4", "google/imagen4-ultra", "z-image"})
# The nano-banana models whose kie input has `resolution` (ImageConfig.image_size).
SIZED_MODELS = frozenset({"nano-banana-2", "nano-banana-pro"})
SERVED = TEXT_MODELS | frozenset(DEFAULT_MODELS)
# The file types Vertex's ImageOutputOptions.mimeType is asked for (WebP is the worker's job).
OUTPUT_MIME = {"png": "image/png", "jpeg": "image/jpeg"}


class GeminiImageOptions(GoogleOptions):
    model: str = Field("gemini-3.1-flash-image", min_length=1, description=(
        "Gemini image model for the models DEFAULT_MODELS does not name (google/imagen4-fast, "
        "google/imagen4, z-image)"))
    model_map: dict[str, str] = Field(default_factory=dict, description=(
        "public model id -> Gemini model id, over the defaults (google/nano-banana and -edit: "
        "gemini-2.5-flash-image, nano-banana-2: gemini-3.1-flash-image, nano-banana-pro and "
        "google/imagen4-ultra: gemini-3-pro-image)"))
    vertexai: bool = Field(False, description="Use Vertex AI instead of the Gemini Developer API (which needs "
                                              "api_key_env).")
    location: str = Field("global", description="Vertex AI region; Gemini image models are served on `global`.")
    image_size: Literal["1K", "2K", "4K"] = Field("1K", description="ImageConfig.image_size for the Imagen "
                                                  "family and z-image (the nano-banana models follow the task).")
    thinking_level: Literal["MINIMAL", "LOW", "MEDIUM", "HIGH"] | None = Field(
        None, description="ThinkingConfig.thinking_level for the Imagen family and z-image (Google suggests "
                          "MINIMAL for Imagen-like latency); unset sends none, for models that take no thinking "
                          "config.")
    max_inline_mb: float = Field(100.0, gt=0, le=1000, description=(
        "largest total of reference images (base64) one request may carry inline; the Gemini API takes "
        "100 MB since January 2026. A task over it fails with a message naming the input field"))

    @field_validator("model_map")
    @classmethod
    def _served_models(cls, value: dict[str, str]) -> dict[str, str]:
        return check_model_map(value, SERVED)

    @model_validator(mode="after")
    def _developer_api_needs_a_key(self) -> GeminiImageOptions:
        if not self.vertexai and not self.api_key_env:
            raise ValueError("the Gemini Developer API needs api_key_env (or set vertexai = true)")
        return self

    def provider_model(self, public: str) -> str:
        """The Gemini model id for a public model: model_map, else the default, else `model`."""
        return self.model_map.get(public) or DEFAULT_MODELS.get(public) or self.model


def _name(value: Any) -> str:
    """An SDK enum (or an unknown string the SDK kept) as its plain name."""
    return str(getattr(value, "value", value) or "")


class GeminiImageBackend(ProviderBackend[GoogleClient]):
    """Gemini image models: the nano-banana family, the Imagen 4 family (and `z-image` text-to-image
    as overflow)."""

    type_name = "gemini-image"
    models = SERVED
    Options = GeminiImageOptions

    async def open_client(self) -> GoogleClient:
        return await open_client(self.name, self.options, self.context, vertexai=self.options.vertexai)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        client = self.started()
        params = job.params
        seeds = job.seeds or [0] * params.num_images
        model = self.options.provider_model(params.model)
        call = GoogleCall(self.name, model, client, self.options)
        contents = self._contents(call, job)
        done = 0

        async def one(seed: int) -> GeneratedImage:
            nonlocal done
            image = await self._one(call, contents, self._config(job, model, seed), seed)
            done += 1
            job.report_progress(int(100 * done / len(seeds)))
            return image

        results = await asyncio.gather(*(one(seed) for seed in seeds), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            # A permanent failure (moderation, bad input) decides the task: trying elsewhere won't help.
            permanent = [f for f in failures if isinstance(f, BackendError) and not f.transient]
            raise (permanent or failures)[0]
        return [r for r in results if isinstance(r, GeneratedImage)]

    def _contents(self, call: GoogleCall, job: Job) -> types.ContentListUnion:
        """The prompt, then each reference image as an inline part (ai.google.dev image-generation,
        "Image editing": `contents=[prompt, image]`; several images in the order the prompt names them)."""
        from google.genai import types

        params = job.params
        text = params.prompt
        if params.negative_prompt:
            text += f"\n\nAvoid: {params.negative_prompt}"
        if not params.reference_urls:
            return text
        files = job.reference_files
        if len(files) != len(params.reference_urls):  # decoded images only: send them as PNG
            files = [(_png(image), "image/png") for image in job.references]
        inline = sum(4 * ((len(data) + 2) // 3) for data, _mime in files)
        if inline > self.options.max_inline_mb * 1_000_000:
            spec = get_model(params.model)
            field = f"input.{spec.url_fields[0]}" if spec is not None and spec.url_fields else "input"
            raise call.fail(FailCode.INPUT, f"{field}: the images add up to {inline / 1e6:.1f} MB as sent inline; "
                            f"this provider takes at most {self.options.max_inline_mb:g} MB in one request",
                            f"{len(files)} reference images, {inline} bytes inline (max_inline_mb "
                            f"{self.options.max_inline_mb:g})", transient=False)
        parts: list[types.PartUnion] = [types.Part.from_text(text=text)]
        parts.extend(types.Part.from_bytes(data=data, mime_type=mime) for data, mime in files)
        return parts

    def _config(self, job: Job, model: str, seed: int) -> types.GenerateContentConfig:
        from google.genai import types

        params, options = job.params, self.options
        if params.model in TEXT_MODELS:
            image_size: str | None = options.image_size
            thinking = types.ThinkingConfig(thinking_level=options.thinking_level) if options.thinking_level else None
        else:
            image_size = params.resolution if params.model in SIZED_MODELS else None
            thinking = None
        # Vertex only: the Gemini Developer API has no output type (the SDK raises ValueError for it).
        mime = OUTPUT_MIME.get(params.output_format) if options.vertexai else None
        tools: types.ToolListUnion | None = (
            [types.Tool(google_search=types.GoogleSearch())] if params.options.get("google_search") else None)
        return types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            seed=provider_seed(seed),
            image_config=types.ImageConfig(aspect_ratio=None if params.aspect_ratio == "auto" else params.aspect_ratio,
                                           image_size=image_size, output_mime_type=mime),
            thinking_config=thinking,
            tools=tools,
        )

    async def _one(self, call: GoogleCall, contents: types.ContentListUnion, config: types.GenerateContentConfig,
                   seed: int) -> GeneratedImage:
        sdk, model = call.client.sdk, call.model
        response = await call_google(call, f"Gemini {model}:generateContent",
                                     lambda: sdk.aio.models.generate_content(model=model, contents=contents,
                                                                             config=config))
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            reason = _name(feedback.block_reason)
            raise call.fail(FailCode.MODERATED, f"{MODERATED} ({reason})", f"prompt blocked: {reason} "
                            f"{safe_text(feedback.block_reason_message or '', call.secrets)}", transient=False)
        candidate = response.candidates[0] if response.candidates else None
        parts = (candidate.content.parts if candidate and candidate.content else None) or []
        for part in parts:
            # Thinking models may send draft images marked `thought`; the answer is the first other one.
            if part.inline_data is not None and part.inline_data.data and not part.thought:
                return image_of(call, part.inline_data.data, seed)
        finish = _name(candidate.finish_reason) if candidate else ""
        if finish in MODERATION_FINISH:
            raise call.fail(FailCode.MODERATED, f"{MODERATED} ({finish})", f"no image, finishReason {finish}",
                            transient=False)
        said = " ".join(part.text for part in parts if part.text)
        raise call.fail(FailCode.GENERATION, MALFORMED, f"no image in the response (finishReason {finish or 'none'}, "
                        f"text {safe_text(said, call.secrets, 200)!r})", transient=True)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

