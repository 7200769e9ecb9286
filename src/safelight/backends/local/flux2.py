"""`diffusers.flux2`: FLUX.2 through diffusers, either klein (Flux2KleinPipeline, 4B distilled,
Apache-2.0, 4 steps) or [dev] (Flux2Pipeline, 32B, non-commercial licence, 28-50 steps).

Serves the FLUX.2 family (`flux-2/pro-image-to-image` and `flux-2/flex-image-to-image` with 1-8
reference images, `flux-2/pro-text-to-image` and `flux-2/flex-text-to-image`) and the Gemini image
models, which edit from references or generate from text alone: `google/nano-banana-edit`
(`image_urls`), `nano-banana-2` and `nano-banana-pro` (`image_input`, optional) and
`google/nano-banana`. An operator may also route `ideogram/character` here, with the reference
portrait as image 1. Models that need a mask (`ideogram/v3-edit`, `ideogram/character-edit`) or a
remix strength or reframe canvas (`ideogram/*-remix`, `ideogram/v3-reframe`) are not served: the
pipeline could not honour them. With no fixed size (aspect_ratio `auto` with references) the pipeline
is given no size and follows the first reference (at most 1 MP).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field

from safelight.backends.base import BackendError, GeneratedImage, Job

from .pipeline_backend import LocalOptions, LocalPipelineBackend

VARIANTS = {
    # pipeline class, default steps, default guidance
    "klein": ("Flux2KleinPipeline", 4, 1.0),
    "dev": ("Flux2Pipeline", 28, 4.0),
}

IDEOGRAM_STYLE_HINTS = {"REALISTIC": ", photorealistic", "FICTION": ", illustrated, stylised fiction", "AUTO": ""}


class Flux2Options(LocalOptions):
    variant: Literal["klein", "dev"] = Field("klein", description="klein: Flux2KleinPipeline; dev: Flux2Pipeline")
    text_encoder_out_layers: list[int] | None = Field(
        None, description="hidden-state layers stacked into the prompt embedding; None = the pipeline's default")


class Flux2Backend(LocalPipelineBackend):
    type_name = "diffusers.flux2"
    models = frozenset({
        "flux-2/pro-image-to-image", "flux-2/flex-image-to-image", "flux-2/pro-text-to-image",
        "flux-2/flex-text-to-image", "ideogram/character", "google/nano-banana", "google/nano-banana-edit",
        "nano-banana-2", "nano-banana-pro",
    })
    Options: ClassVar[type[BaseModel]] = Flux2Options

    @property
    def pipeline_class(self) -> str:  # type: ignore[override]
        return VARIANTS[self.options.variant][0]

    @property
    def steps(self) -> int:
        return self.options.steps or VARIANTS[self.options.variant][1]

    @property
    def guidance(self) -> float:
        if self.options.guidance_scale is not None:
            return float(self.options.guidance_scale)
        return VARIANTS[self.options.variant][2]

    async def generate_batch(self, jobs: list[Job]) -> list[list[GeneratedImage] | BackendError]:
        # Each task brings its own reference images, and the pipeline takes one image list per
        # call, so tasks run one call each; a task's num_images still share that call.
        results: list[list[GeneratedImage] | BackendError] = []
        for job in jobs:
            results.extend(await super().generate_batch([job]))
        return results

    def call_arguments(self, jobs: list[Job]) -> dict[str, Any]:
        (job,) = jobs
        params = job.params
        prompt = params.prompt
        if params.model == "ideogram/character":
            style = IDEOGRAM_STYLE_HINTS.get(str(params.options.get("style", "AUTO")), "")
            prompt = f"{prompt}{style}. Keep the character from image 1 exactly: same face, hair and build."
        arguments: dict[str, Any] = {"prompt": prompt, "num_images_per_prompt": len(job.seeds)}
        if job.references:
            arguments["image"] = [image.convert("RGB") for image in job.references]
        if params.width and params.height:  # None: "auto", the output follows the first reference
            arguments["width"], arguments["height"] = params.width, params.height
        if self.options.text_encoder_out_layers:
            arguments["text_encoder_out_layers"] = tuple(self.options.text_encoder_out_layers)
        return arguments
