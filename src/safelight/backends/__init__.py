"""Backends turn a Job into images: the sandbox, local pipelines and upstream providers.

Types are imported on first use, so the API process never imports torch or a provider SDK.
"""

from __future__ import annotations

import importlib

from .base import (
    Backend,
    BackendConfig,
    BackendContext,
    BackendError,
    BackendStartError,
    GeneratedImage,
    Job,
)
from .sandbox import SandboxBackend

# Routing-file `type` -> "module:Class".
BACKEND_TYPES = {
    "sandbox": "safelight.backends.sandbox:SandboxBackend",
    "diffusers.zimage": "safelight.backends.local.z_image:ZImageBackend",
    "diffusers.flux2": "safelight.backends.local.flux2:Flux2Backend",
    "kie": "safelight.backends.upstream.kie:KieBackend",
    "bfl": "safelight.backends.upstream.bfl:BflBackend",
    "ideogram": "safelight.backends.upstream.ideogram:IdeogramBackend",
    "google": "safelight.backends.upstream.google:GoogleImagenBackend",
    "gemini-image": "safelight.backends.upstream.gemini_image:GeminiImageBackend",
}


def backend_class(type_name: str) -> type[Backend]:
    try:
        target = BACKEND_TYPES[type_name]
    except KeyError:
        raise KeyError(f"unknown backend type {type_name!r}; known: {', '.join(BACKEND_TYPES)}") from None
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{target} is not a Backend")
    return cls


__all__ = [
    "BACKEND_TYPES", "Backend", "BackendConfig", "BackendContext", "BackendError", "BackendStartError",
    "GeneratedImage", "Job", "SandboxBackend", "backend_class",
]
