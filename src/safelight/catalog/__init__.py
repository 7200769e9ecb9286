"""The public models, one module per family. Adding a model means adding its ModelSpec to its family's
`SPECS` (or a new family module, listed below)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from safelight.validation import describe_errors

from . import flux2, ideogram, imagen4, nano_banana, z_image
from .base import (
    BUCKETS,
    REFERENCE_ROLES,
    GenerationParams,
    ModelInput,
    ModelSpec,
    ReferenceRole,
    bucket_size,
    nearest_bucket,
)
from .passthrough import ANY_MODEL, MissingPriceError, PassThroughSpec, is_valid_model_id, pass_through_spec

FAMILIES = (z_image, flux2, imagen4, ideogram, nano_banana)
MODELS: dict[str, ModelSpec] = {spec.id: spec for family in FAMILIES for spec in family.SPECS}


class InvalidInputError(ValueError):
    """An `input` that breaks the model's schema; the message names the field and the rule."""


def get_model(model_id: str) -> ModelSpec | None:
    return MODELS.get(model_id)


def resolve_model(model_id: str, *, pass_through: bool) -> ModelSpec | None:
    """The catalog's model; or, when the server forwards unknown models (`[models."*"]`), a
    pass-through spec for any well-formed id the catalog lacks."""
    spec = MODELS.get(model_id)
    if spec is None and pass_through and is_valid_model_id(model_id):
        return pass_through_spec(model_id)
    return spec


def validate_input(spec: ModelSpec, raw: Any) -> ModelInput:
    if not isinstance(raw, dict):
        raise InvalidInputError("input must be an object")
    try:
        return spec.input_schema.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(describe_errors(exc, prefix="input")) from None


__all__ = [
    "ANY_MODEL",
    "BUCKETS",
    "MODELS",
    "GenerationParams",
    "InvalidInputError",
    "MissingPriceError",
    "ModelInput",
    "ModelSpec",
    "REFERENCE_ROLES",
    "ReferenceRole",
    "PassThroughSpec",
    "bucket_size",
    "describe_errors",
    "get_model",
    "nearest_bucket",
    "resolve_model",
    "validate_input",
]
