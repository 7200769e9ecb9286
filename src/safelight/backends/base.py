"""The one small interface every backend implements."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from safelight.catalog import GenerationParams
from safelight.kie import FailCode
from safelight.validation import config_error

if TYPE_CHECKING:
    from safelight.net import OutboundPolicy


@dataclass
class Job:
    """One task's work, as the worker hands it to a backend."""

    task_id: str
    params: GenerationParams
    # One seed per requested image; the worker picks them, so results are reproducible.
    seeds: list[int]
    # Decoded reference images, in input order (empty for text-to-image models).
    references: list[Image.Image] = field(default_factory=list)
    # The same references as fetched, for providers that want the original file bytes.
    reference_files: list[tuple[bytes, str]] = field(default_factory=list)
    # The task's `input` exactly as the client sent it, for kie-compatible pass-through.
    raw_input: Mapping[str, Any] = field(default_factory=dict)
    # Report progress 0-100; the worker throttles what reaches the store.
    report_progress: Callable[[int], None] = lambda _pct: None
    # Set (from any thread) when the task was cancelled: a backend that can stop early should.
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes
    seed: int | None
    content_type: str = "image/png"
    extension: str = "png"


class BackendError(Exception):
    """A generation failure with a stable failCode and a message the user can act on.

    `transient` failures (timeouts, 5xx, overload, an operator-side provider problem) may be
    retried on the next backend of the route; permanent ones (moderation, input the model
    refuses) may not. `detail` is for the operator's log only: it never reaches the task record.
    """

    def __init__(self, fail_code: FailCode, message: str, *, transient: bool = False, detail: str = "") -> None:
        super().__init__(message)
        self.fail_code = fail_code
        self.message = message
        self.transient = transient
        self.detail = detail


class BackendStartError(RuntimeError):
    """A backend cannot start (missing weights, key or package). The message is for the operator
    and names what is missing; the CLI prints it instead of a stack trace."""


@dataclass
class BackendContext:
    """What a backend may use from the server: the outbound policy for downloading provider
    results, size limits, and the environment its credentials are read from."""

    policy: OutboundPolicy | None = None
    max_download_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 50_000_000
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)


class BackendConfig(BaseModel):
    """One `[backends.NAME]` table of the routing file: the shared keys; everything else is the
    type's own options, which the backend type validates (`Backend.Options`)."""

    model_config = ConfigDict(extra="allow")

    type: str
    concurrency: int = Field(1, ge=1, le=1024, description="calls in flight on this backend, per worker process")
    max_batch: int = Field(1, ge=1, le=64, description="tasks run together in one call")
    breaker_failures: int = Field(5, ge=0, le=1000, description=(
        "consecutive transient failures that open this backend's circuit breaker (tasks skip it for "
        "breaker_cooldown_seconds); 0 disables the breaker"))
    breaker_cooldown_seconds: float = Field(30.0, gt=0, le=86400, description=(
        "how long an open breaker skips the backend before one trial task is let through"))

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Backend:
    """Base class: a named way of producing images for some models."""

    # The routing file's `type` of this class.
    type_name: ClassVar[str] = "base"
    # Public model ids this type can serve; None means any model.
    models: ClassVar[frozenset[str] | None] = None
    # The type's own options from its routing-file table, validated at load time.
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, name: str | None = None, config: BackendConfig | None = None,
                 context: BackendContext | None = None, *, concurrency: int | None = None,
                 max_batch: int | None = None) -> None:
        config = config or BackendConfig(type=self.type_name)
        self.name = name or self.type_name
        self.concurrency = concurrency or config.concurrency
        self.max_batch = max_batch or config.max_batch
        self.breaker_failures = config.breaker_failures
        self.breaker_cooldown_seconds = config.breaker_cooldown_seconds
        self.options: Any = self.parse_options(self.name, config.options)
        self.context = context or BackendContext()

    @classmethod
    def parse_options(cls, name: str, options: Mapping[str, Any]) -> BaseModel:
        try:
            return cls.Options.model_validate(dict(options))
        except ValidationError as exc:
            raise ValueError(config_error(exc, f"backends.{name}")) from None

    @classmethod
    def check_options(cls, name: str, config: BackendConfig) -> None:
        """Validate a routing-file table without building the backend (no imports of torch)."""
        cls.parse_options(name, config.options)

    @classmethod
    def offers_safety_checker(cls, options: Mapping[str, Any]) -> bool:
        """Whether `nsfw_checker: true` can be honoured. Without one, createTask answers 505."""
        return False

    @property
    def has_safety_checker(self) -> bool:
        return self.offers_safety_checker(self.options.model_dump())

    def preflight(self) -> None:
        """Cheap checks run before the server starts: credentials present, weights complete."""
        env_name = getattr(self.options, "api_key_env", None)
        if env_name and not self.context.env.get(env_name):
            raise BackendStartError(f"backend {self.name}: environment variable {env_name} (api_key_env) "
                                    "is empty or unset")

    async def start(self) -> None:
        """Load weights, open clients. Raise here, at worker start, rather than on the first task.

        The worker calls it once before any generate(); generate() never starts the backend itself."""

    async def generate(self, job: Job) -> list[GeneratedImage]:
        raise NotImplementedError

    async def generate_batch(self, jobs: list[Job]) -> list[list[GeneratedImage] | BackendError]:
        """Run compatible jobs together (same model and size). The default runs them in turn.

        An item may be a BackendError when only that job failed (a safety check); an exception
        raised here fails, or moves on, the whole batch."""
        return [await self.generate(job) for job in jobs]

    async def close(self) -> None:
        """Release what start() acquired."""


# What happened inside the current backend call that the task's attempt log should say even when
# the call succeeds ("createTask answer lost after sending; re-sent with the same Idempotency-Key").
# The worker collects them around generate(); tasks a backend starts inherit the same list.
_call_notes: ContextVar[list[str] | None] = ContextVar("safelight_backend_call_notes", default=None)


@contextlib.contextmanager
def collecting_notes() -> Iterator[list[str]]:
    """Collect the notes backends make during the calls inside this block (the worker's side)."""
    notes: list[str] = []
    token = _call_notes.set(notes)
    try:
        yield notes
    finally:
        _call_notes.reset(token)


def note(text: str) -> None:
    """Add a line to the attempt log of the task(s) the current backend call serves (the backend's
    side); outside a worker's call it is dropped."""
    notes = _call_notes.get()
    if notes is not None:
        notes.append(text)


def read_secret(context: BackendContext, backend: str, env_name: str) -> str:
    """A provider key from the environment; the error names the variable, never a value."""
    value = context.env.get(env_name, "")
    if not value:
        raise BackendError(FailCode.UNAVAILABLE, "provider unavailable", transient=True,
                           detail=f"backend {backend}: environment variable {env_name} is empty or unset")
    return value
