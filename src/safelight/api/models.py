"""`GET /api/v1/models` (our extension): the models, their input schemas and prices."""

from __future__ import annotations

from fastapi import APIRouter, Request

from safelight.catalog import ANY_MODEL, MODELS
from safelight.routing import SANDBOX, Routing

from .auth import admission_of, runtime_of
from .envelope import EnvelopeResponse, envelope
from .shapes import ModelsReply

router = APIRouter(tags=["models"])


@router.get("/api/v1/models", summary="List models with input schema and price (no key needed)",
            responses={200: {"model": ModelsReply}})
async def list_models(request: Request) -> EnvelopeResponse:
    disabled = await admission_of(request).disabled_models()
    overrides = runtime_of(request).settings.prices
    routing = runtime_of(request).routing
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
            "sandbox": served_by_sandbox(routing, spec.id),
        })
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
            "sandbox": False,
        })
    return envelope(models)


def served_by_sandbox(routing: Routing, model: str) -> bool:
    """Whether every backend of the model's route is the sandbox: its images are labelled previews,
    never generations (the playground says so)."""
    route = routing.route_for(model)
    return bool(route) and all(routing.backends[name].type == SANDBOX for name in route)
