"""OpenTelemetry tracing, optional (`pip install 'safelight[otel]'`): off, and free, when not installed.

One trace per task across processes: createTask opens it, and its context (a W3C `traceparent`)
is stored with the task row, so the worker that claims the task, each backend attempt and each
callback delivery join the same trace, whichever process they run in. Spans are exported over
OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard OTEL_* variables apply).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the [otel] extra is not installed: every function here does nothing
    trace = None  # type: ignore[assignment]

TRACER_NAME = "safelight"


def enabled() -> bool:
    """Tracing records only with the API installed and a real tracer provider set (by
    configure_tracing or the application); otherwise every span here is skipped for free."""
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def configure_tracing(service_name: str) -> None:
    """Export spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set and the SDK is installed.
    Without it, spans go wherever the application (or a test) set the global tracer provider."""
    if trace is None or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
                    "pip install 'safelight[otel]'")
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)


@contextlib.contextmanager
def span(name: str, *, parent: str | None = None, **attributes: Any) -> Iterator[None]:
    """A span named `name`, child of the current one, or of the stored `parent` traceparent."""
    if not enabled():
        yield
        return
    token = None
    if parent:
        token = otel_context.attach(propagate.extract({"traceparent": parent}))
    try:
        tracer = trace.get_tracer(TRACER_NAME)
        with tracer.start_as_current_span(name, attributes={k: v for k, v in attributes.items() if v is not None}):
            yield
    finally:
        if token is not None:
            otel_context.detach(token)


class Span:
    """A span started by `start_span`, ended explicitly (for work that is not one block of code)."""

    def __init__(self, handle: Any = None) -> None:
        self._handle = handle

    def end(self, error: str | None = None) -> None:
        if self._handle is None:
            return
        if error:
            from opentelemetry.trace import Status, StatusCode

            self._handle.set_status(Status(StatusCode.ERROR, error))
        self._handle.end()


def start_span(name: str, *, parent: str | None, **attributes: Any) -> Span:
    """A span child of the stored `parent` traceparent, ended by `Span.end()`."""
    if not enabled():
        return Span()
    parent_context = propagate.extract({"traceparent": parent}) if parent else None
    handle = trace.get_tracer(TRACER_NAME).start_span(
        name, context=parent_context, attributes={k: v for k, v in attributes.items() if v is not None})
    return Span(handle)


def traceparent() -> str | None:
    """The current span's context as a W3C traceparent, to store with the task; None without tracing."""
    if not enabled():
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")
