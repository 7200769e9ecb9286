"""Models the catalog does not know, forwarded as sent to a kie-compatible upstream.

A routing file that says `[models."*"] route = ["kie"]` lets createTask accept any model id: its
`input` is stored verbatim and handed to the upstream unchanged, and the upstream validates it (a
refusal fails the task with failCode 422 and the upstream's message). Nothing here can check the
input, so nothing here guesses a price either: the operator names one in SAFELIGHT_PRICES, by model
id or as a `"*"` default, and without one the model is refused (505) rather than run unbilled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict

from .base import GenerationParams, ModelInput, ModelSpec

# The routing file's key, and SAFELIGHT_PRICES' default entry, for every model the catalog lacks.
ANY_MODEL = "*"
# Model ids as kie spells them: `flux-kontext-pro`, `google/veo3`, `bytedance/seedream-v4-edit`.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:+-]{0,127}$")


class PassThroughInput(ModelInput):
    """Any JSON object: the upstream owns the schema."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


class MissingPriceError(LookupError):
    """A pass-through model with no price in SAFELIGHT_PRICES."""


@dataclass(frozen=True)
class PassThroughSpec(ModelSpec):
    """A model id the catalog does not know, priced per task from SAFELIGHT_PRICES."""

    def price_for_tier(self, tier: str, overrides: Mapping[str, int] | None = None) -> int:
        overrides = overrides or {}
        for key in (self.id, ANY_MODEL):
            if key in overrides:
                return int(overrides[key])
        raise MissingPriceError(
            f"model {self.id} has no price on this server; the operator sets one in SAFELIGHT_PRICES "
            f'({{"{self.id}": <credits per task>}}, or a "{ANY_MODEL}" default)')

    def image_count(self, model_input: Any) -> int:
        # The upstream decides how many images a task makes; the price is per task.
        return 1

    def input_urls(self, model_input: Any) -> list[tuple[str, str]]:
        # The upstream fetches its inputs itself, under its own rules.
        return []


def is_valid_model_id(model_id: str) -> bool:
    return MODEL_ID.fullmatch(model_id) is not None


def pass_through_spec(model_id: str) -> PassThroughSpec:
    """The spec of an unknown model id (checked with `is_valid_model_id` first)."""

    def to_params(value: PassThroughInput) -> GenerationParams:
        fields = value.model_extra or {}
        prompt = fields.get("prompt")
        # Nothing here reads pixels or references: only a prompt for logs and the sandbox's label.
        return GenerationParams(model=model_id, prompt=prompt if isinstance(prompt, str) else "")

    return PassThroughSpec(
        id=model_id,
        title=model_id,
        description="Forwarded unchanged to a kie-compatible upstream, which validates the input.",
        input_schema=PassThroughInput,
        prices={},
        to_params=to_params,
    )
