"""The ASGI application: kie-compatible routes around one Runtime."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Iterable

from fastapi import FastAPI, Request
from starlette.responses import Response

from safelight import __version__
from safelight.admission import Admission
from safelight.config import Settings
from safelight.metrics import exposition, token_allows
from safelight.runtime import SERVE_ROLES, Role, Runtime, load_configured_routing, preflight

from . import account, admin, callbacks, files, jobs, models, openai_images, stream, uploads, web
from .auth import ApiKeys
from .envelope import EnvelopeResponse, envelope, install_error_handlers
from .middleware import BodyTimeout, BodyTimeoutMiddleware, RequestLogMiddleware, UnexpectedErrorMiddleware
from .openapi import SafelightAPI
from .ratelimit import rate_limiter_for

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, roles: Iterable[Role] = SERVE_ROLES, migrate: bool = True,
               check_backends: bool = False) -> FastAPI:
    """The ASGI app, running `roles` (the API, plus by default a worker, delivery and retention).

    The routing file is read here, so a bad one raises RoutingError before anything is served;
    with `check_backends`, a routed backend lacking its weights or key raises BackendStartError."""
    settings = settings or Settings()
    roles = frozenset({Role.API, *roles})
    routing = load_configured_routing(settings)
    if check_backends:
        preflight(settings, routing, roles)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.open(settings, roles, routing=routing, migrate=migrate)
        app.state.runtime = runtime
        app.state.admission = Admission(settings=settings, store=runtime.store, routing=routing,
                                        policy=runtime.policy, signer=runtime.signer)
        app.state.api_keys = ApiKeys(runtime.store)
        app.state.rate_limiter = rate_limiter_for(runtime.store, settings.rate_limit_per_key,
                                                  settings.rate_limit_window_seconds)
        # Everything loaded so far lives as long as the process. Freezing it keeps the garbage
        # collector from re-scanning ~10^5 framework objects on every full collection, which
        # otherwise stalls the event loop for 70-80 ms (measured: bench/api.py p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await runtime.close()

    app = SafelightAPI(
        title="Safelight",
        version=__version__,
        description="Self-hosted image generation speaking the kie.ai Market job API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    # Added innermost first: a slow body is cut (408) before any other handling sees it.
    app.add_middleware(UnexpectedErrorMiddleware, passthrough=(BodyTimeout,))
    app.add_middleware(BodyTimeoutMiddleware, total_seconds=settings.body_timeout_seconds,
                       idle_seconds=settings.body_idle_timeout_seconds)
    app.add_middleware(RequestLogMiddleware)
    # openai_images last: its /v1/{path} catch-all answers OpenAI's 404 for the OpenAI routes it lacks.
    for module in (jobs, stream, callbacks, account, models, files, uploads, admin, web, openai_images):
        app.include_router(module.router)
    app.mount("/ui", web.web_files(), name="ui")  # the pages' static files (src/safelight/web/)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> EnvelopeResponse:
        return envelope({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> EnvelopeResponse:
        """This process: the database answers and its roles run (HTTP 503 otherwise). Task counts are
        in /metrics."""
        runtime: Runtime = app.state.runtime
        readiness = await runtime.readiness()
        ready = readiness["ready"]
        return envelope(readiness, 200 if ready else 503, "ready" if ready else "not ready",
                        http_status=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        if not token_allows(settings.metrics_token, request.headers.get("authorization")):
            return envelope(None, 401, "send Authorization: Bearer <SAFELIGHT_METRICS_TOKEN>", http_status=401)
        body, content_type = exposition()
        return Response(body, media_type=content_type)

    return app
