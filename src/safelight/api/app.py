"""The ASGI application: kie-compatible routes around one Runtime."""

from __future__ import annotations

import contextlib
import gc
import logging

from fastapi import FastAPI

from safelight import __version__
from safelight.config import Settings

from . import account, callbacks, files, jobs, models, uploads
from .envelope import envelope, install_error_handlers
from .runtime import Runtime

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, migrate: bool = True, preflight: bool = False) -> FastAPI:
    """The ASGI app. Raises RoutingError for a bad routing file, and with `preflight` BackendStartError
    when a routed backend lacks its weights or key, before anything is served."""
    settings = settings or Settings()
    runtime = Runtime(settings)
    if preflight:
        runtime.preflight()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start(migrate=migrate)
        # Everything loaded so far lives as long as the process. Freezing it keeps the garbage
        # collector from re-scanning ~10^5 framework objects on every full collection, which
        # otherwise stalls the event loop for 70-80 ms (measured: bench/api.py p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Safelight",
        version=__version__,
        description="Self-hosted image generation speaking the kie.ai Market job API.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (jobs, callbacks, account, models, files, uploads):
        app.include_router(module.router)

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return envelope({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz():
        counts = await runtime.store.tasks.count_by_state()
        worker = runtime.worker
        return envelope({"tasks": counts, "worker": worker.id if worker else None,
                         "inFlight": worker.in_flight if worker else 0})

    return app
