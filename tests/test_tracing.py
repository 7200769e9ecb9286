"""OpenTelemetry (the [otel] extra): one trace per task, from createTask through the claim and the
backend attempt to the callback, joined through the trace context stored with the task."""

from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from tests.helpers import free_port, serve_app  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    # The global provider can be set once per process: the first test module to need it sets it.
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)
    yield
    provider.shutdown()


async def test_one_trace_per_task_across_claim_backend_and_callback(live_server):
    received = asyncio.Event()

    async def callback(_request):
        received.set()
        return JSONResponse({"ok": True})

    port = free_port()
    receiver, serving = await serve_app(Starlette(routes=[Route("/cb", callback, methods=["POST"])]), port,
                                        lifespan="off")
    try:
        EXPORTER.clear()
        async with live_server.client() as client:
            reply = (await client.post("/api/v1/jobs/createTask", json={
                "model": "z-image", "callBackUrl": f"http://127.0.0.1:{port}/cb",
                "input": {"prompt": "traced", "aspect_ratio": "1:1"}})).json()
        task_id = reply["data"]["taskId"]
        await asyncio.wait_for(received.wait(), 10)
        deadline = time.monotonic() + 5
        names: dict[str, list] = {}
        while time.monotonic() < deadline:
            names = {}
            for span in EXPORTER.get_finished_spans():
                names.setdefault(span.name, []).append(span)
            if {"safelight.create_task", "safelight.claim", "safelight.backend", "safelight.callback"} <= set(names):
                break
            await asyncio.sleep(0.05)
        created = names["safelight.create_task"][0]
        trace_id = created.context.trace_id
        for name in ("safelight.claim", "safelight.backend", "safelight.callback"):
            (span,) = [s for s in names[name] if s.attributes.get("task_id") == task_id]
            assert span.context.trace_id == trace_id, name
            assert span.parent is not None and span.parent.span_id == created.context.span_id
        row = await live_server.runtime.store.tasks.get(task_id)
        assert row["trace_context"].split("-")[1] == f"{trace_id:032x}"
        assert names["safelight.backend"][0].attributes["backend"] == "sandbox"
    finally:
        receiver.should_exit = True
        await serving
