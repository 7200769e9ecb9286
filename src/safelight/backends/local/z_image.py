"""`diffusers.zimage`: Z-Image(-Turbo) through diffusers' ZImagePipeline.

Serves `z-image`, and the other catalog models that are text to image only, which an operator may
route here: the Imagen 4 family, `ideogram/v3-text-to-image`, `flux-2/pro-text-to-image`,
`flux-2/flex-text-to-image` and `google/nano-banana`. Models that may take input images
(nano-banana-2, nano-banana-pro) are not served here even when a task sends none: routing is per
model, and a task with references would have nowhere to go; route them to `diffusers.flux2`, which
does both. Sizes are the catalog's buckets; Ideogram's style type becomes a prompt hint; what Z-Image
cannot do (Ideogram's MagicPrompt, rendering speed, Gemini's search grounding) is not emulated.
Turbo runs 8 steps at guidance 0 (one transformer forward per step), which also means it cannot
use a negative prompt: that needs the base model (`weights = "Tongyi-MAI/Z-Image"`, `steps = 28`,
`guidance_scale = 4`).
"""

from __future__ import annotations

from typing import Any

from safelight.backends.base import Job

from .pipeline_backend import LocalPipelineBackend

# Ideogram v3's style types, as prompt hints (AUTO and GENERAL add nothing).
IDEOGRAM_V3_STYLE_HINTS = {"REALISTIC": ", photorealistic", "DESIGN": ", graphic design, clean typography"}


def prompt_of(job: Job) -> str:
    params = job.params
    if params.model == "ideogram/v3-text-to-image":
        return params.prompt + IDEOGRAM_V3_STYLE_HINTS.get(str(params.options.get("style", "AUTO")), "")
    return params.prompt


class ZImageBackend(LocalPipelineBackend):
    type_name = "diffusers.zimage"
    models = frozenset({
        "z-image", "google/imagen4-fast", "google/imagen4", "google/imagen4-ultra", "ideogram/v3-text-to-image",
        "flux-2/pro-text-to-image", "flux-2/flex-text-to-image", "google/nano-banana",
    })
    pipeline_class = "ZImagePipeline"
    default_steps = 8  # Z-Image-Turbo: 8 DiT forwards (diffusers >= 0.39 counts them this way)
    default_guidance = 0.0

    def call_arguments(self, jobs: list[Job]) -> dict[str, Any]:
        first = jobs[0].params
        # One prompt per image: tasks of one batch differ in prompt, never in size (the batch key).
        prompts = [prompt_of(job) for job in jobs for _ in job.seeds]
        arguments: dict[str, Any] = {"prompt": prompts, "width": first.width or 1024, "height": first.height or 1024}
        if self.guidance > 0:  # CFG runs only then; with guidance 0 the negative prompt is unused
            arguments["negative_prompt"] = [job.params.negative_prompt or "" for job in jobs for _ in job.seeds]
        return arguments
