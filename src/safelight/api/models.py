"""`GET /api/v1/models` (our extension): the models, their input schemas and prices."""

from __future__ import annotations

from fastapi import APIRouter, Request

from safelight.catalog import ANY_MODEL, MODELS

from .auth import admission_of, runtime_of
from .envelope import EnvelopeResponse, envelope

router = APIRouter(tags=["models"])


@router.get("/api/v1/models", summary="List models with input schema and price")
async def list_models(request: Request) -> EnvelopeResponse:
    disabled = await admission_of(request).disabled_models()
    overrides = runtime_of(request).settings.prices
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
    routing = runtime_of(request).routing
    if routing.passes_through:
        # Every model id the catalog lacks, forwarded unchanged; priced per task by the operator.
        price = overrides.get(ANY_MODEL)
        models.append({
            "id": ANY_MODEL,
            "title": "Any other model (pass-through)",
            "description": "Model ids this server does not know are forwarded unchanged to "
                           f"{', '.join(routing.route_for(ANY_MODEL))}, which validates the input.",
            "enabled": True,
            "passThrough": True,
            "prices": {} if price is None else {"default": price},
            "priceUnit": "credits per task",
            "inputSchema": {"type": "object"},
        })
    return envelope(models)
