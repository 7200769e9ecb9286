"""Prometheus metrics: every name a dashboard may rely on, defined once, fed by the layers.

Counters and histograms are bumped in memory where things happen (nothing waits on them). The
gauges that describe the shared queue come from the store: a background refresh reads them every
few seconds in each process (`StoreGauges`), and scrapes read that cache, so a scrape never
queries the database and createTask never waits for metrics.

Every process serves them: API processes at `GET /metrics`; a worker without the API on
`--metrics-port`. With SAFELIGHT_METRICS_TOKEN set, both ask for `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Seconds: a sandbox task takes milliseconds, a queue under load minutes, a FLUX.2 [dev] image a minute.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

TASKS_CREATED = Counter("safelight_tasks_created_total", "Tasks accepted by createTask (or another front door).",
                        ["model"])
TASKS_FINISHED = Counter("safelight_tasks_finished_total", "Tasks that reached success or fail.",
                         ["model", "backend", "state", "fail_code"])
TASK_QUEUE_SECONDS = Histogram("safelight_task_queue_seconds", "From create to a worker's first claim.",
                               ["model"], buckets=DURATION_BUCKETS)
TASK_RUN_SECONDS = Histogram("safelight_task_run_seconds", "From the first claim to success or fail.",
                             ["model", "backend"], buckets=DURATION_BUCKETS)
BACKEND_CALLS = Counter("safelight_backend_calls_total", "Backend attempts per task: success, fallback, fail or "
                        "skipped (circuit breaker open).", ["backend", "outcome"])
BACKEND_BREAKER_OPEN = Gauge("safelight_backend_breaker_open", "1 while this worker's circuit breaker of the backend "
                             "is open or half-open (tasks skip it), 0 while closed.", ["backend"])
API_REQUESTS = Counter("safelight_api_requests_total",
                       "HTTP requests by route and kie body code (kie answers business errors with HTTP 200).",
                       ["route", "code"])
API_REQUEST_SECONDS = Histogram("safelight_api_request_seconds", "HTTP request duration by route.", ["route"],
                                buckets=DURATION_BUCKETS)
CALLBACKS = Counter("safelight_callbacks_total", "Callback delivery attempts: delivered, retry or gave_up.",
                    ["outcome"])
CALLBACK_DELIVERY_SECONDS = Histogram("safelight_callback_delivery_seconds", "One callback POST, answer included.",
                                      buckets=DURATION_BUCKETS)


@dataclass
class StoreSnapshot:
    """Facts about the shared queue, read from the store by `StoreGauges.refresh`."""

    # (model, state) -> tasks, for waiting, queuing and generating.
    queue: Mapping[tuple[str, str], int] = field(default_factory=dict)
    callbacks_pending: int = 0
    # model -> live workers serving it.
    workers: Mapping[str, int] = field(default_factory=dict)


class StoreGauges(Collector):
    """The gauges read from the store, served from a cache that `refresh_store_gauges` keeps fresh.

    One instance is registered for the process; the runtime that runs last feeds it."""

    def __init__(self) -> None:
        self.snapshot: StoreSnapshot | None = None

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        if snapshot is None:
            return
        queue = GaugeMetricFamily("safelight_queue_tasks", "Unfinished tasks by model and state (from the store, "
                                  "refreshed every few seconds).", labels=["model", "state"])
        for (model, state), count in sorted(snapshot.queue.items()):
            queue.add_metric([model, state], count)
        yield queue
        pending = GaugeMetricFamily("safelight_callbacks_pending", "Callback deliveries not yet delivered or "
                                    "given up (from the store).")
        pending.add_metric([], snapshot.callbacks_pending)
        yield pending
        workers = GaugeMetricFamily("safelight_workers", "Live workers serving each model (heartbeats).",
                                    labels=["model"])
        for model, count in sorted(snapshot.workers.items()):
            workers.add_metric([model], count)
        yield workers


STORE_GAUGES = StoreGauges()
REGISTRY.register(STORE_GAUGES)


async def refresh_store_gauges(read: Callable[[], Awaitable[StoreSnapshot]], every_seconds: float = 5.0) -> None:
    """Read the store's gauges now and every `every_seconds` until cancelled; a failed read keeps
    the last snapshot and is logged."""
    while True:
        try:
            STORE_GAUGES.snapshot = await read()
        except Exception:
            log.warning("could not refresh the queue metrics from the store", exc_info=True)
        await asyncio.sleep(every_seconds)


class GpuMemory(Collector):
    """`safelight_gpu_memory_bytes{device,kind}` for the GPUs a local backend of this process uses.
    Reads torch only when this process has already imported it (a local backend loaded)."""

    def collect(self) -> Iterable[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        family = GaugeMetricFamily("safelight_gpu_memory_bytes", "GPU memory held by this process's PyTorch "
                                   "allocator.", labels=["device", "kind"])
        for index in range(torch.cuda.device_count()):
            device = f"cuda:{index}"
            family.add_metric([device, "allocated"], torch.cuda.memory_allocated(index))
            family.add_metric([device, "reserved"], torch.cuda.memory_reserved(index))
        yield family


REGISTRY.register(GpuMemory())


def exposition(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The scrape body and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def token_allows(token: str, authorization: str | None) -> bool:
    """Whether an `Authorization` header carries the metrics token (always true without one)."""
    if not token:
        return True
    scheme, _, offered = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), token.encode())
