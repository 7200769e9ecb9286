"""`GET /api/v1/models` (our extension): the models, their input schemas and prices."""

from __future__ import annotations

from fastapi import APIRouter, Request

from safelight.catalog import MODELS

from .auth import runtime_of
from .envelope import envelope

router = APIRouter(tags=["models"])


@router.get("/api/v1/models", summary="List models with input schema and price")
async def list_models(request: Request):
    runtime = runtime_of(request)
    disabled = await runtime.disabled_models()
    overrides = runtime.settings.prices
    models = []
    for spec in MODELS.values():
        prices = {tier: spec.price_for_tier(tier, overrides) for tier in spec.prices}
        models.append({
            "id": spec.id,
            "title": spec.title,
            "description": spec.description,
            "enabled": spec.id not in disabled,
            "prices": prices,
            "priceUnit": "credits per image",
            "inputSchema": spec.input_schema.model_json_schema(),
        })
    return envelope(models)
