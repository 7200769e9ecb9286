"""What both local diffusers backends share: options, weight checks and loading, the device
thread, batching with per-image generators, progress, the optional safety checker, and output in the
task's file type (PNG, JPEG or WebP).

torch and diffusers are imported only inside methods that run at worker start or later, so the
API process (and `safelight models`) never needs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from safelight.backends.base import (
    Backend,
    BackendConfig,
    BackendError,
    BackendStartError,
    GeneratedImage,
    Job,
)
from safelight.backends.images import encode_image
from safelight.catalog import BUCKETS
from safelight.kie import FailCode

if TYPE_CHECKING:
    import torch

log = logging.getLogger("safelight.backends.local")
T = TypeVar("T")

WEIGHT_SUFFIXES = (".safetensors", ".bin")


class LocalOptions(BaseModel):
    """Routing-file options of a local diffusers backend."""

    model_config = ConfigDict(extra="forbid")

    weights: str = Field(description="a directory in Hugging Face layout, or a repo id already in the local HF cache")
    allow_download: bool = Field(False, description="fetch missing weights from the Hub at start (off: never)")
    device: str = Field("cuda", description='"cuda", "cuda:1", "cpu", ...')
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    steps: int | None = Field(None, ge=1, le=200, description="denoising steps; None = the pipeline's default")
    guidance_scale: float | None = Field(None, ge=0, le=30)
    max_sequence_length: int | None = Field(None, ge=8, le=1024)
    compile: bool = Field(False, description="torch.compile the transformer's repeated blocks, warmed up at start")
    compile_buckets: list[str] = Field(["1:1"], description="aspect ratios (1K buckets) to warm up when compile is on")
    fp8: bool = Field(False, description="FP8 weights and activations for the transformer via torchao (Hopper+)")
    cpu_offload: bool = Field(False, description="keep components in RAM and move each to the GPU when used")
    attention_backend: str | None = Field(None, description='diffusers attention backend, e.g. "_native_cudnn"')
    safety_checker: str | None = Field(
        None, description="directory of a diffusers StableDiffusionSafetyChecker (with its preprocessor_config.json); "
                          "enables nsfw_checker for this backend")

    @field_validator("compile_buckets")
    @classmethod
    def _known_buckets(cls, value: list[str]) -> list[str]:
        unknown = [aspect for aspect in value if aspect not in BUCKETS["1K"]]
        if unknown:
            raise ValueError(f"unknown aspect ratio {unknown[0]!r}; known: {', '.join(BUCKETS['1K'])}")
        return value


def resolve_weights(weights: str, allow_download: bool) -> Path:
    """The local directory of `weights`: the path itself, or the repo's snapshot in the HF cache."""
    path = Path(weights).expanduser()
    if path.is_dir() or weights.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise BackendStartError(f"weights directory {path} does not exist")
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(weights, local_files_only=not allow_download))
    except LocalEntryNotFoundError:
        raise BackendStartError(
            f"weights {weights!r} are not a directory and not in the local Hugging Face cache; download them "
            f"first (`huggingface-cli download {weights}`), point `weights` at a directory, or set "
            f"allow_download = true") from None
    except Exception as exc:
        raise BackendStartError(f"weights {weights!r} could not be resolved: {type(exc).__name__}: {exc}") from None


def missing_files(directory: Path) -> list[str]:
    """What a diffusers pipeline directory lacks, as relative paths for the operator: model_index.json;
    for every component it lists, the folder and its config; for models a weights file, and every
    shard a `*.safetensors.index.json` names; for tokenizers the tokenizer files and a chat template
    (both pipelines format prompts with one)."""
    index_path = directory / "model_index.json"
    if not index_path.is_file():
        return ["model_index.json"]
    try:
        index = json.loads(index_path.read_text())
    except ValueError:
        return ["model_index.json (not valid JSON)"]
    missing = []
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = directory / component
        class_name = str(spec[1])
        if not folder.is_dir():
            missing.append(f"{component}/")
        elif "Tokenizer" in class_name or "Processor" in class_name:
            missing += _missing_tokenizer_files(folder, component)
        elif "Scheduler" in class_name:
            if not (folder / "scheduler_config.json").is_file():
                missing.append(f"{component}/scheduler_config.json")
        else:
            missing += _missing_model_files(folder, component)
    return missing


def _missing_model_files(folder: Path, component: str) -> list[str]:
    missing = [] if (folder / "config.json").is_file() else [f"{component}/config.json"]
    if not any(path.suffix in WEIGHT_SUFFIXES for path in folder.iterdir()):
        return [*missing, f"{component}/*.safetensors"]
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (ValueError, AttributeError):
            missing.append(f"{component}/{index.name} (unreadable)")
            continue
        missing += [f"{component}/{shard}" for shard in sorted(shards) if not (folder / shard).is_file()]
    return missing


def _missing_tokenizer_files(folder: Path, component: str) -> list[str]:
    if not (folder / "tokenizer_config.json").is_file():
        return [f"{component}/tokenizer_config.json"]
    missing = []
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        missing.append(f"{component}/tokenizer.json")
    has_template = any((folder / name).is_file() for name in ("chat_template.jinja", "chat_template.json"))
    if not has_template:
        try:
            has_template = bool(json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template"))
        except (ValueError, AttributeError):
            has_template = False
    if not has_template:
        missing.append(f"{component}/chat_template.jinja")
    return missing


class LocalPipelineBackend(Backend):
    """A diffusers pipeline, loaded once per worker process, run on its own thread.

    One pipeline object is never called concurrently: all calls go through a single-thread
    executor, which is also what keeps CUDA work off the event loop. Throughput comes from
    batching compatible tasks (max_batch), not from concurrency.
    """

    Options: ClassVar[type[BaseModel]] = LocalOptions
    pipeline_class: ClassVar[str] = ""
    default_steps: ClassVar[int] = 8
    default_guidance: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A pipeline object is never shared across concurrent calls (check_options refuses more).
        self.concurrency = 1
        self.pipeline: Any = None
        self.safety: tuple[Any, Any] | None = None
        self._executor: ThreadPoolExecutor | None = None
        # Calls stopped early because every task in them was cancelled (visible to tests and logs).
        self.cancelled_calls = 0

    @classmethod
    def check_options(cls, name: str, config: BackendConfig) -> None:
        super().check_options(name, config)
        if config.concurrency != 1:
            raise ValueError(f"backends.{name}.concurrency: a local pipeline runs one call at a time; "
                             "use max_batch for throughput, or one worker process per GPU")

    @classmethod
    def offers_safety_checker(cls, options: Mapping[str, Any]) -> bool:
        return bool(options.get("safety_checker"))

    @property
    def steps(self) -> int:
        return self.options.steps or self.default_steps

    @property
    def guidance(self) -> float:
        return self.default_guidance if self.options.guidance_scale is None else self.options.guidance_scale

    def preflight(self) -> Path:  # type: ignore[override]
        """Cheap checks before anything heavy: the weights resolve and are complete."""
        try:
            directory = resolve_weights(self.options.weights, self.options.allow_download)
        except BackendStartError as exc:
            raise BackendStartError(f"backend {self.name}: {exc}") from None
        missing = missing_files(directory)
        if missing:
            raise BackendStartError(f"backend {self.name}: weights directory {directory} is incomplete; "
                                    f"missing: {', '.join(missing)}")
        if self.options.safety_checker:
            checker = Path(self.options.safety_checker).expanduser()
            lacking = [name for name in ("config.json", "preprocessor_config.json") if not (checker / name).is_file()]
            if lacking:
                raise BackendStartError(f"backend {self.name}: safety checker directory {checker} lacks "
                                        f"{', '.join(lacking)}")
        return directory

    async def start(self) -> None:
        directory = self.preflight()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"safelight-{self.name}")
        started = time.perf_counter()
        await self._on_thread(self._load, directory)
        log.info("backend %s loaded %s from %s on %s in %.1f s", self.name, self.pipeline_class, directory,
                 self.options.device, time.perf_counter() - started)
        if self.options.compile:
            started = time.perf_counter()
            await self._on_thread(self._warm_up)
            log.info("backend %s compiled and warmed up in %.1f s", self.name, time.perf_counter() - started)

    async def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self.pipeline = None

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError(f"backend {self.name} was not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- loading (device thread) ---

    def torch_dtype(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.options.dtype)
        return dtype

    def _load(self, directory: Path) -> None:
        try:
            import diffusers
        except ImportError as exc:
            raise BackendStartError(f"backend {self.name} needs the GPU extra: pip install 'safelight[gpu]' "
                                    f"({exc})") from None
        cls = getattr(diffusers, self.pipeline_class)
        try:
            pipeline = cls.from_pretrained(directory, dtype=self.torch_dtype(),
                                           local_files_only=not self.options.allow_download)
        except (OSError, ValueError) as exc:
            raise BackendStartError(f"backend {self.name}: could not load {self.pipeline_class} from {directory}: "
                                    f"{exc}") from None
        self.use_pipeline(pipeline)

    def use_pipeline(self, pipeline: Any) -> None:
        """Place a loaded pipeline on its device with the configured speed-ups. Public so that the
        benchmark can hand over a full-size random-weight pipeline built directly on the GPU."""
        import torch

        pipeline.set_progress_bar_config(disable=True)
        if self.options.fp8:
            try:
                from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_
            except ImportError:
                raise BackendStartError(f"backend {self.name}: fp8 = true needs torchao "
                                        "(pip install 'safelight[fp8]')") from None
            quantize_(pipeline.transformer, Float8DynamicActivationFloat8WeightConfig())
        if self.options.cpu_offload:
            pipeline.enable_model_cpu_offload(device=torch.device(self.options.device))
        else:
            pipeline.to(self.options.device)
        if self.options.attention_backend:
            pipeline.transformer.set_attention_backend(self.options.attention_backend)
        if self.options.compile:
            # Regional compilation: one block class compiled once and reused, so start-up takes
            # seconds rather than minutes; fixed size buckets keep the graphs from recompiling.
            pipeline.transformer.compile_repeated_blocks(fullgraph=True)
        self.pipeline = pipeline
        if self.options.safety_checker:
            self.safety = self._load_safety_checker(Path(self.options.safety_checker).expanduser())

    def _load_safety_checker(self, directory: Path) -> tuple[Any, Any]:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        # Any: transformers types `.to()` through a decorator mypy reads as taking the model first.
        checker: Any = StableDiffusionSafetyChecker.from_pretrained(directory, local_files_only=True)
        checker.to(self.options.device if not self.options.cpu_offload else "cpu")
        return checker, CLIPImageProcessor.from_pretrained(directory, local_files_only=True)

    def _warm_up(self) -> None:
        """Run each configured size bucket at batch 1 and max_batch once, so the compiled graphs
        exist before the first task."""
        from safelight.catalog import GenerationParams

        for aspect in self.options.compile_buckets:
            width, height = BUCKETS["1K"][aspect]
            for batch in sorted({1, self.max_batch}):
                params = GenerationParams(model="warm-up", prompt="a lighthouse at dusk", width=width, height=height,
                                          num_images=batch)
                self._run([Job(task_id="warm-up", params=params, seeds=list(range(batch)))])

    # --- generation ---

    async def generate(self, job: Job) -> list[GeneratedImage]:
        result = (await self.generate_batch([job]))[0]
        if isinstance(result, BackendError):
            raise result
        return result

    async def generate_batch(self, jobs: list[Job]) -> list[list[GeneratedImage] | BackendError]:
        try:
            return await self._on_thread(self._run, jobs)
        except BackendError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "OutOfMemoryError":
                raise BackendError(FailCode.GENERATION, "the GPU ran out of memory for this request; credits refunded",
                                   transient=True, detail=f"backend {self.name}: {exc}") from None
            raise

    def call_arguments(self, jobs: list[Job]) -> dict[str, Any]:
        """Pipeline keyword arguments for a batch (prompts, sizes, references); per model family."""
        raise NotImplementedError

    def _run(self, jobs: list[Job]) -> list[list[GeneratedImage] | BackendError]:
        import torch

        seeds = [seed for job in jobs for seed in job.seeds]
        # One generator per image: each image's noise depends only on its own seed, so a batched
        # result equals the unbatched one with the same seed.
        generator_device = "cpu" if self.options.cpu_offload else self.options.device
        generators = [torch.Generator(generator_device).manual_seed(seed % 2**63) for seed in seeds]
        steps = self.steps
        stopped_at: list[int] = []

        def on_step_end(pipeline: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if all(job.cancelled.is_set() for job in jobs):
                # Every task of this call was cancelled: diffusers skips the remaining steps.
                pipeline._interrupt = True
                if not stopped_at:
                    stopped_at.append(step + 1)
                return callback_kwargs
            percent = 5 + int(90 * (step + 1) / steps)
            for job in jobs:
                job.report_progress(percent)
            return callback_kwargs

        arguments = self.call_arguments(jobs)
        if self.options.max_sequence_length:
            arguments["max_sequence_length"] = self.options.max_sequence_length
        with torch.inference_mode():
            output = self.pipeline(num_inference_steps=steps, guidance_scale=self.guidance, generator=generators,
                                   callback_on_step_end=on_step_end, output_type="pil", **arguments)
        if stopped_at:
            self.cancelled_calls += 1
            log.info("backend %s: stopped after step %d of %d, every task of the call was cancelled", self.name,
                     stopped_at[0], steps)
            raise BackendError(FailCode.CANCELLED, "cancelled",
                               detail=f"backend {self.name}: stopped after step {stopped_at[0]} of {steps}")
        images = list(output.images)
        if len(images) != len(seeds):
            raise BackendError(FailCode.GENERATION,
                               "the pipeline returned the wrong number of images; credits refunded",
                               detail=f"backend {self.name}: {len(images)} images for {len(seeds)} seeds")
        flagged = self._check_safety(images, jobs)
        results: list[list[GeneratedImage] | BackendError] = []
        for job in jobs:
            mine, images = images[:len(job.seeds)], images[len(job.seeds):]
            if job.task_id in flagged:
                results.append(BackendError(FailCode.MODERATED, "the image was blocked by this server's safety "
                                            "checker (nsfw_checker); credits refunded"))
                continue
            results.append([encode_image(image, job.params.output_format, seed)
                            for image, seed in zip(mine, job.seeds, strict=True)])
        return results

    def _check_safety(self, images: list[Image.Image], jobs: list[Job]) -> set[str]:
        """Task ids (of jobs with nsfw_checker) whose images the safety checker flags."""
        wanted = [job for job in jobs if job.params.nsfw_checker]
        if not wanted or self.safety is None:
            return set()
        import numpy as np
        import torch

        checker, processor = self.safety
        flagged: set[str] = set()
        offset = 0
        for job in jobs:
            count = len(job.seeds)
            if job.params.nsfw_checker:
                mine = images[offset:offset + count]
                clip_input = processor(mine, return_tensors="pt").pixel_values.to(checker.device, checker.dtype)
                arrays = np.stack([np.asarray(image, dtype=np.float32) / 255.0 for image in mine])
                with torch.inference_mode():
                    _, has_nsfw = checker(images=arrays, clip_input=clip_input)
                if any(has_nsfw):
                    flagged.add(job.task_id)
            offset += count
        return flagged
