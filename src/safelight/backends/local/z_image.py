"""`diffusers.zimage`: Z-Image(-Turbo) through diffusers' ZImagePipeline.

Serves `z-image`; an operator may also route `google/imagen4-fast` here. Turbo runs 8 steps at
guidance 0 (one transformer forward per step), which also means it cannot use a negative prompt:
that needs the base model (`weights = "Tongyi-MAI/Z-Image"`, `steps = 28`, `guidance_scale = 4`).
"""

from __future__ import annotations

from typing import Any

from safelight.backends.base import Job

from .pipeline_backend import LocalPipelineBackend


class ZImageBackend(LocalPipelineBackend):
    type_name = "diffusers.zimage"
    models = frozenset({"z-image", "google/imagen4-fast"})
    pipeline_class = "ZImagePipeline"
    default_steps = 8  # Z-Image-Turbo: 8 DiT forwards (diffusers >= 0.39 counts them this way)
    default_guidance = 0.0

    def call_arguments(self, jobs: list[Job]) -> dict[str, Any]:
        first = jobs[0].params
        # One prompt per image: tasks of one batch differ in prompt, never in size (the batch key).
        prompts = [job.params.prompt for job in jobs for _ in job.seeds]
        arguments: dict[str, Any] = {"prompt": prompts, "width": first.width or 1024, "height": first.height or 1024}
        if self.guidance > 0:  # CFG runs only then; with guidance 0 the negative prompt is unused
            arguments["negative_prompt"] = [job.params.negative_prompt or "" for job in jobs for _ in job.seeds]
        return arguments
