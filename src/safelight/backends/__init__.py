"""Backends turn a Job into images: the sandbox, local pipelines and upstream providers."""

from .base import Backend, BackendError, GeneratedImage, Job
from .sandbox import SandboxBackend

__all__ = ["Backend", "BackendError", "GeneratedImage", "Job", "SandboxBackend"]
