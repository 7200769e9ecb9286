"""Gemini image generation ("Nano Banana"), Google's replacement for Imagen 4 (spec/backends.md §C.1, §D.4).

`client.aio.models.generate_content(model, contents=prompt, config=GenerateContentConfig(
response_modalities=["IMAGE"], seed, image_config=ImageConfig(aspect_ratio, image_size)))`, on the
Gemini Developer API (`{base}/{version}/models/{model}:generateContent`, `x-goog-api-key`) or on
Vertex AI (`vertexai = true`: the publisher-model path, with an express-mode key, a static token
or Application Default Credentials, as for the `google` backend).

There is no negative-prompt field (it is folded into the prompt as "Avoid: ...") and no image
count: `num_images` becomes that many concurrent calls, call i with seed `job.seeds[i]`. One
moderated call fails the task (permanently); the images of the other calls are dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from pydantic import Field, model_validator

from safelight.backends.base import BackendError, GeneratedImage, Job
from safelight.backends.upstream.google import (
    MODERATED,
    GoogleCall,
    GoogleClient,
    GoogleOptions,
    call_google,
    image_of,
    open_client,
    provider_seed,
    safe_text,
)
from safelight.backends.upstream.provider import MALFORMED, ProviderBackend
from safelight.kie import FailCode

# finishReason values that mean the safety or policy filters stopped the image: the same prompt
# would be stopped again, so these fail permanently.
MODERATION_FINISH = frozenset({
    "SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "RECITATION",
    "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION",
})


class GeminiImageOptions(GoogleOptions):
    model: str = Field("gemini-3.1-flash-image", description="Gemini image model id.")
    vertexai: bool = Field(False, description="Use Vertex AI instead of the Gemini Developer API (which needs "
                                              "api_key_env).")
    location: str = Field("global", description="Vertex AI region; Gemini image models are served on `global`.")
    image_size: Literal["1K", "2K", "4K"] = Field("1K", description="ImageConfig.image_size.")
    thinking_level: Literal["MINIMAL", "LOW", "MEDIUM", "HIGH"] | None = Field(
        None, description="ThinkingConfig.thinking_level (Google suggests MINIMAL for Imagen-like latency); "
                          "unset sends none, for models that take no thinking config.")

    @model_validator(mode="after")
    def _developer_api_needs_a_key(self) -> GeminiImageOptions:
        if not self.vertexai and not self.api_key_env:
            raise ValueError("the Gemini Developer API needs api_key_env (or set vertexai = true)")
        return self


def _name(value: Any) -> str:
    """An SDK enum (or an unknown string the SDK kept) as its plain name."""
    return str(getattr(value, "value", value) or "")


class GeminiImageBackend(ProviderBackend[GoogleClient]):
    """Gemini image models; serves `google/imagen4-fast` (and `z-image` text-to-image as overflow)."""

    type_name = "gemini-image"
    models = frozenset({"google/imagen4-fast", "z-image"})
    Options = GeminiImageOptions

    async def open_client(self) -> GoogleClient:
        return await open_client(self.name, self.options, self.context, vertexai=self.options.vertexai)

    async def generate(self, job: Job) -> list[GeneratedImage]:
        client = self.started()
        params = job.params
        seeds = job.seeds or [0] * params.num_images
        text = params.prompt
        if params.negative_prompt:
            text += f"\n\nAvoid: {params.negative_prompt}"
        call = GoogleCall(self.name, self.options.model, client, self.options)
        done = 0

        async def one(seed: int) -> GeneratedImage:
            nonlocal done
            image = await self._one(call, text, params.aspect_ratio, seed)
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

    async def _one(self, call: GoogleCall, text: str, aspect_ratio: str, seed: int) -> GeneratedImage:
        from google.genai import types

        config = types.GenerateContentConfig(
            response_modalities=["IMAGE"],
            seed=provider_seed(seed),
            image_config=types.ImageConfig(aspect_ratio=None if aspect_ratio == "auto" else aspect_ratio,
                                           image_size=self.options.image_size),
            thinking_config=(types.ThinkingConfig(thinking_level=self.options.thinking_level)
                             if self.options.thinking_level else None),
        )
        sdk, model = call.client.sdk, self.options.model
        response = await call_google(call, f"Gemini {model}:generateContent",
                                     lambda: sdk.aio.models.generate_content(model=model, contents=text, config=config))
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
