"""The one small interface every backend implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from PIL import Image

from safelight.catalog import GenerationParams


@dataclass
class Job:
    """One task's work, as the worker hands it to a backend."""

    task_id: str
    params: GenerationParams
    # One seed per requested image; the worker picks them, so results are reproducible.
    seeds: list[int]
    # Decoded reference images, in input order (empty for text-to-image models).
    references: list[Image.Image] = field(default_factory=list)
    # Report progress 0-100; the worker throttles what reaches the store.
    report_progress: Callable[[int], None] = lambda _pct: None


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    seed: int | None
    content_type: str = "image/png"
    extension: str = "png"


class BackendError(Exception):
    """A generation failure with a stable failCode and a message the user can act on.

    `transient` failures (timeouts, 5xx, overload) may be retried elsewhere; permanent ones
    (moderation, input the model refuses) may not.
    """

    def __init__(self, fail_code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.fail_code = fail_code
        self.message = message
        self.transient = transient


class Backend:
    """Base class: a named way of producing images for some models."""

    kind: ClassVar[str] = "base"

    def __init__(self, name: str, *, concurrency: int = 1, max_batch: int = 1) -> None:
        self.name = name
        self.concurrency = concurrency
        self.max_batch = max_batch

    async def start(self) -> None:
        """Load weights, open clients. Raise here, at worker start, rather than on the first task."""

    async def generate(self, job: Job) -> list[GeneratedImage]:
        raise NotImplementedError

    async def close(self) -> None:
        """Release what start() acquired."""
