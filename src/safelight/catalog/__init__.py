"""The public models. Adding a model means adding one module here and listing its SPEC below."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from safelight.validation import describe_errors

from . import flux2, ideogram, imagen4, z_image
from .base import BUCKETS, GenerationParams, ModelInput, ModelSpec, bucket_size, nearest_bucket

MODELS: dict[str, ModelSpec] = {spec.id: spec for spec in (z_image.SPEC, flux2.SPEC, imagen4.SPEC, ideogram.SPEC)}


class InvalidInputError(ValueError):
    """An `input` that breaks the model's schema; the message names the field and the rule."""


def get_model(model_id: str) -> ModelSpec | None:
    return MODELS.get(model_id)


def validate_input(spec: ModelSpec, raw: Any) -> ModelInput:
    if not isinstance(raw, dict):
        raise InvalidInputError("input must be an object")
    try:
        return spec.input_schema.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(describe_errors(exc, prefix="input")) from None


__all__ = [
    "BUCKETS",
    "MODELS",
    "GenerationParams",
    "InvalidInputError",
    "ModelInput",
    "ModelSpec",
    "bucket_size",
    "describe_errors",
    "get_model",
    "nearest_bucket",
    "validate_input",
]
