"""The worker: claims waiting tasks with a lease, runs them on their route of backends, records the outcome.

It is the only component that moves a task between states:
waiting -> queuing (claimed, inputs being fetched) -> generating (backend running) -> success | fail.

Each public model has a route: backends tried in order. A transient failure (overload, 5xx, timeout,
an operator-side provider problem) moves the task to the next backend; a permanent one (moderation,
input the model refuses) ends it. Compatible tasks (same model and size) are claimed together, up to
the first backend's max_batch, and run in one call. A backend that keeps failing transiently is skipped
for a cool-down (its circuit breaker, breaker.py); a task whose remaining route is all skipped fails with
503, refunded, rather than waiting out every timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy.engine import RowMapping

from safelight import metrics, tracing
from safelight.backends import Backend, BackendError, GeneratedImage, Job
from safelight.backends.base import collecting_notes
from safelight.backends.images import conform_all
from safelight.catalog import ANY_MODEL, MODELS, InvalidInputError, resolve_model, validate_input
from safelight.kie import FailCode, TaskState
from safelight.storage import Storage
from safelight.store import Store, now_ms
from safelight.store.workers import HEARTBEAT_SECONDS

from .breaker import Breaker, Permit
from .inputs import InputFetchError, InputLoader
from .progress import ProgressReporter

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """How one backend attempt ended, as the attempt log records it."""

    SUCCESS = "success"
    FALLBACK = "fallback"  # a transient failure; the next backend of the route is tried
    FAIL = "fail"  # the task (or batch) ends here
    SKIPPED = "skipped"  # not tried: the backend's circuit breaker is open


@dataclass
class Attempt:
    """The result of running a batch of jobs on one backend."""

    outcome: Outcome
    # The jobs this worker still held when the backend ran (a lost lease drops a job).
    jobs: list[Job]
    results: list[list[GeneratedImage] | BackendError]
    error: BackendError | None = None
    # What the backend noted during the call (a lost answer re-sent), for the attempt log.
    notes: list[str] = field(default_factory=list)


# What a task whose remaining route is all skipped (open circuit breakers) fails with.
ROUTE_UNAVAILABLE = "provider unavailable; credits refunded"


class Worker:
    def __init__(self, *, store: Store, storage: Storage, loader: InputLoader,
                 backends: Mapping[str, Backend] | Sequence[Backend], routes: Mapping[str, Sequence[str] | str],
                 lease_seconds: float = 60.0, max_claims: int = 3, task_timeout_seconds: float = 600.0) -> None:
        self.store = store
        self.storage = storage
        self.loader = loader
        if not isinstance(backends, Mapping):
            backends = {backend.name: backend for backend in backends}
        self.backends = dict(backends)
        self.routes = {model: [route] if isinstance(route, str) else list(route)
                       for model, route in routes.items() if route}
        self.lease_ms = int(lease_seconds * 1000)
        self.max_claims = max_claims
        self.task_timeout = task_timeout_seconds
        self.id = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Names this process's result files apart from any other claimant's of the same task.
        self.file_token = uuid.uuid4().hex[:12]
        # task id -> the claim this worker holds it under (tasks.claims when claimed).
        self._claims: dict[str, int] = {}
        # task id -> set when the task ends elsewhere (cancel): backends stop early.
        self._cancel_flags: dict[str, threading.Event] = {}
        # task id -> the traceparent stored with it (tracing), so its spans join the task's trace.
        self._traces: dict[str, str | None] = {}
        # Calls in flight per backend, across primaries and fallbacks ("BFL allows 24 in flight").
        self._slots = {name: asyncio.Semaphore(backend.concurrency) for name, backend in self.backends.items()}
        # Claimed batches per primary backend: claiming stops when the primary has no free slot.
        self._claimed = {name: 0 for name in self.backends}
        self._running: dict[str, asyncio.Task[None]] = {}  # task id -> the asyncio task running its batch
        # task id -> backends tried so far; written with the task's final state, in the same statement.
        self._attempts: dict[str, list[dict[str, Any]]] = {}
        self._loops: list[asyncio.Task[None]] = []
        # One circuit breaker per backend; a change of state is published at once with a heartbeat.
        self.breakers = {name: Breaker(name, backend.breaker_failures, backend.breaker_cooldown_seconds,
                                       on_change=self._breaker_changed) for name, backend in self.backends.items()}
        self._beats: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._started_at = now_ms()

    def models_for(self, backend_name: str) -> list[str]:
        """Models whose route starts at this backend (the ones it claims for)."""
        return [model for model, route in self.routes.items() if route[0] == backend_name]

    @property
    def running(self) -> bool:
        """Started, not stopping, and its claim loop alive."""
        return bool(self._loops) and not self._stopping and not self._loops[0].done()

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        for name in self._used_backends():
            await self.backends[name].start()
        await self.store.wakeup.listen()
        report = await self.store.tasks.requeue_expired(self.max_claims)
        if report.requeued or report.failed:
            log.warning("recovered interrupted tasks: %d re-queued, %d failed after %d claims",
                        len(report.requeued), len(report.failed), self.max_claims)
        await self._beat()
        self._loops = [asyncio.create_task(self._claim_loop(), name="worker-claim"),
                       asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")]
        log.info("worker %s serving %s", self.id, {model: route for model, route in self.routes.items()})

    def _used_backends(self) -> list[str]:
        return list(dict.fromkeys(name for route in self.routes.values() for name in route))

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming, give running tasks `grace_seconds`, then hand the rest back to the queue."""
        self._stopping = True
        self.store.wakeup.poke()
        running = list(set(self._running.values()))
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
        unfinished = list(self._running)
        for task in running:
            task.cancel()
        for loop in [*self._loops, *self._beats]:
            loop.cancel()
        await asyncio.gather(*running, *self._loops, *self._beats, return_exceptions=True)
        if unfinished:
            await self.store.tasks.release(unfinished, self.id)
            log.warning("handed %d unfinished tasks back to the queue", len(unfinished))
        for name in self._used_backends():
            with contextlib.suppress(Exception):
                await self.backends[name].close()
        with contextlib.suppress(Exception):
            await self.store.workers.gone(self.id)

    async def _claim_loop(self) -> None:
        sweep_every = self.lease_ms / 2000
        loop = asyncio.get_running_loop()
        next_sweep = loop.time() + sweep_every
        while not self._stopping:
            try:
                await self._claim_all()
                if loop.time() >= next_sweep:
                    # Other workers' crashes surface as expired leases; this is the only timer here.
                    next_sweep = loop.time() + sweep_every
                    if (await self.store.tasks.requeue_expired(self.max_claims)).requeued:
                        continue
            except Exception:  # the loop must survive a database hiccup
                log.exception("worker claim loop error; retrying")
                await asyncio.sleep(1)
            await self.store.wakeup.wait(max(0.0, next_sweep - loop.time()))

    async def _claim_all(self) -> None:
        for name, backend in self.backends.items():
            models = self.models_for(name)
            if not models:
                continue
            # A pass-through route ("*") claims every model the catalog does not know.
            others_than = list(MODELS) if ANY_MODEL in models else None
            models = [model for model in models if model != ANY_MODEL]
            while not self._stopping and self._claimed[name] < backend.concurrency:
                if backend.max_batch > 1:
                    batches = [await self.store.tasks.claim_batch(models, backend.max_batch, self.id, self.lease_ms,
                                                                  others_than=others_than)]
                else:
                    free = backend.concurrency - self._claimed[name]
                    batches = [[row] for row in await self.store.tasks.claim(models, free, self.id, self.lease_ms,
                                                                             others_than=others_than)]
                batches = [batch for batch in batches if batch]
                if not batches:
                    break
                for batch in batches:
                    self._claimed[name] += 1
                    task = asyncio.create_task(self._process(name, batch), name=f"batch-{batch[0]['id']}")
                    for row in batch:
                        self._running[row["id"]] = task

    async def _heartbeat_loop(self) -> None:
        """Renew the leases of running tasks (every third of a lease) and this worker's heartbeat row."""
        every = min(self.lease_ms / 3000, HEARTBEAT_SECONDS)
        while True:
            await asyncio.sleep(every)
            try:
                await self.store.tasks.extend_leases(list(self._running), self.id, self.lease_ms)
                await self._beat()
            except Exception:
                log.exception("could not extend leases or write the heartbeat")

    async def _beat(self) -> None:
        breakers = {name: self.breakers[name].view().to_json() for name in self._used_backends()}
        await self.store.workers.beat(self.id, host=socket.gethostname(), pid=os.getpid(), models=list(self.routes),
                                      in_flight=self.in_flight, started_at=self._started_at, breakers=breakers)

    def _breaker_changed(self, _breaker: Breaker) -> None:
        """Publish a breaker's new state now rather than at the next heartbeat."""
        if not self._loops or self._stopping:
            return

        async def beat() -> None:
            try:
                await self._beat()
            except Exception:
                log.warning("could not publish a circuit breaker change", exc_info=True)

        task = asyncio.get_running_loop().create_task(beat(), name="worker-breaker-beat")
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)

    async def _process(self, primary: str, rows: list[RowMapping]) -> None:
        open_ids = {row["id"] for row in rows}  # tasks of this batch not yet finished
        claims = []
        for row in rows:
            self._traces[row["id"]] = row["trace_context"]
            claims.append(tracing.start_span("safelight.claim", parent=row["trace_context"], task_id=row["id"],
                                             model=row["model"], worker=self.id, claim=row["claims"]))
        for row in rows:
            self._cancel_flags[row["id"]] = threading.Event()
        batch = asyncio.current_task()
        assert batch is not None
        watcher = asyncio.create_task(self._watch_for_cancel(open_ids, batch), name=f"cancel-watch-{rows[0]['id']}")
        try:
            async with asyncio.timeout(self.task_timeout):
                await self._run(rows, open_ids)
        except TimeoutError:
            for task_id in list(open_ids):
                await self._fail(task_id, FailCode.TIMEOUT, f"generation took longer than {self.task_timeout:.0f} s",
                                 open_ids)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s failed unexpectedly", sorted(open_ids))
            for task_id in list(open_ids):
                await self._fail(task_id, FailCode.INTERNAL, "internal error while generating; credits refunded",
                                 open_ids)
        finally:
            watcher.cancel()
            for row in rows:
                self._running.pop(row["id"], None)
                self._attempts.pop(row["id"], None)
                self._claims.pop(row["id"], None)
                self._traces.pop(row["id"], None)
                self._cancel_flags.pop(row["id"], None)
            for claim in claims:
                claim.end()
            self._claimed[primary] -= 1
            self.store.wakeup.poke()  # a slot is free

    async def _watch_for_cancel(self, open_ids: set[str], batch: asyncio.Task[Any]) -> None:
        """Stop work on tasks that ended elsewhere (cancelled, or a deadline passed): tell their
        backend (Job.cancelled), and cancel the batch once none of its tasks is left. Woken by the
        tasks' own events, so a cancel reaches this worker from any API process."""
        changed = asyncio.Event()
        with contextlib.ExitStack() as stack:
            for task_id in list(open_ids):
                stack.enter_context(self.store.task_events.subscribe(task_id, changed))
            while open_ids:
                await changed.wait()
                changed.clear()
                states = await self.store.tasks.states(list(open_ids))
                ended = [task_id for task_id in list(open_ids) if states.get(task_id) in TaskState.TERMINAL]
                for task_id in ended:
                    open_ids.discard(task_id)
                    flag = self._cancel_flags.get(task_id)
                    if flag is not None:
                        flag.set()
                    log.info("task %s ended elsewhere (%s); stopping its work", task_id, states[task_id],
                             extra={"task_id": task_id})
                # Only tasks ended elsewhere stop the batch: this worker's own endings leave it alone.
                if ended and not open_ids:
                    batch.cancel()
                    return

    async def _prepare(self, row: RowMapping) -> Job:
        """A claimed task's Job: its input re-validated, its references fetched and decoded."""
        spec = resolve_model(row["model"], pass_through=ANY_MODEL in self.routes)
        if spec is None:
            raise InputFetchError(f"model {row['model']!r} is no longer served")
        raw_input = json.loads(row["param"]).get("input")
        try:
            model_input = validate_input(spec, raw_input)
        except InvalidInputError as exc:
            raise InputFetchError(str(exc)) from None
        params = spec.to_params(model_input)
        references, files = [], []
        for index, url in enumerate(params.reference_urls):
            if params.reference_fields:
                field = params.reference_fields[index]
            else:
                field = f"input.{spec.url_fields[0]}[{index}]" if spec.url_fields else "input"
            data, mime, image = await self.loader.load(field, url)
            references.append(image)
            files.append((data, mime))
        task_id = row["id"]
        self._claims[task_id] = int(row["claims"])
        reporter = ProgressReporter(asyncio.get_running_loop(),
                                    lambda pct: self.store.tasks.set_progress(task_id, self.id, pct))
        return Job(task_id=task_id, params=params, seeds=pick_seeds(params.seed, params.num_images),
                   references=references, reference_files=files, raw_input=raw_input or {},
                   report_progress=reporter, cancelled=self._cancel_flags.get(task_id) or threading.Event())

    async def _run(self, rows: list[RowMapping], open_ids: set[str]) -> None:
        jobs: list[Job] = []
        for row in rows:
            try:
                jobs.append(await self._prepare(row))
            except InputFetchError as exc:
                await self._fail(row["id"], FailCode.INPUT, str(exc), open_ids)
        if not jobs:
            return
        route = self._route_for(jobs[0])
        if not route:
            for job in jobs:
                await self._fail(job.task_id, FailCode.NOT_SERVED, f"nsfw_checker is not available for "
                                 f"{job.params.model} on this server", open_ids)
            return
        last_error: BackendError | None = None
        for position, name in enumerate(route):
            breaker = self.breakers[name]
            permit = breaker.allow()
            if permit is Permit.SKIP:
                for job in jobs:
                    self._record_attempt(job.task_id, name, Outcome.SKIPPED, FailCode.UNAVAILABLE,
                                         breaker.skip_reason())
                continue
            try:
                attempt = await self._try_backend(name, jobs, last=position == len(route) - 1)
            finally:
                breaker.release(permit)
            jobs = attempt.jobs
            if attempt.outcome is Outcome.FALLBACK:
                assert attempt.error is not None
                last_error = attempt.error
                log.warning("backend %s failed transiently for %d task(s) (%s); trying %s",
                            name, len(jobs), attempt.error.fail_code, route[position + 1])
                continue
            if attempt.outcome is Outcome.FAIL:
                assert attempt.error is not None
                for job in jobs:
                    await self._fail(job.task_id, attempt.error.fail_code, attempt.error.message, open_ids)
                return
            backend = self.backends[name]
            for job, images in zip(jobs, attempt.results, strict=True):
                if isinstance(images, BackendError):  # one task of a batch refused (its safety check)
                    self._record_attempt(job.task_id, name, Outcome.FAIL, images.fail_code,
                                         images.detail or images.message)
                    await self._fail(job.task_id, images.fail_code, images.message, open_ids)
                    continue
                self._record_attempt(job.task_id, name, Outcome.SUCCESS, "", "; ".join(attempt.notes))
                await self._finish(job, images, backend, open_ids)
            return
        # The rest of the route was skipped (open circuit breakers): fail now, refunded, rather than
        # wait; the error of a backend tried before says more than the skips.
        code, message = (last_error.fail_code, last_error.message) if last_error else (FailCode.UNAVAILABLE,
                                                                                        ROUTE_UNAVAILABLE)
        for job in jobs:
            await self._fail(job.task_id, code, message, open_ids)

    async def _try_backend(self, name: str, jobs: list[Job], *, last: bool) -> Attempt:
        """Run the jobs on one backend, within its concurrency slots; a transient failure on a
        backend that is not the route's last is a fallback, any other failure ends the tasks."""
        async with self._slots[name]:
            held = await self.store.tasks.mark_generating([job.task_id for job in jobs], self.id, name)
            jobs = [job for job in jobs if job.task_id in held]
            if not jobs:  # leases lost: other workers own these tasks now
                return Attempt(Outcome.SUCCESS, [], [])
            spans = [tracing.start_span("safelight.backend", parent=self._traces.get(job.task_id), backend=name,
                                        task_id=job.task_id, batch=len(jobs)) for job in jobs]
            breaker = self.breakers[name]
            try:
                with collecting_notes() as notes:
                    results = await self._generate(self.backends[name], jobs)
            except BackendError as exc:
                outcome = Outcome.FALLBACK if exc.transient and not last else Outcome.FAIL
                detail = "; ".join([*notes, exc.detail or exc.message])
                if exc.transient:
                    breaker.failure(exc.detail or exc.message)
                for job, span in zip(jobs, spans, strict=True):
                    self._record_attempt(job.task_id, name, outcome, exc.fail_code, detail)
                    span.end(error=f"{exc.fail_code} {outcome}")
                return Attempt(outcome, jobs, [], exc)
            except BaseException as exc:
                for span in spans:
                    span.end(error=type(exc).__name__)
                raise
            breaker.success()
            for span, result in zip(spans, results, strict=True):
                span.end(error=result.fail_code if isinstance(result, BackendError) else None)
        return Attempt(Outcome.SUCCESS, jobs, results, notes=notes)

    def _route_for(self, job: Job) -> list[str]:
        """The model's route; for nsfw_checker tasks only the backends that can honour it (the batch
        key keeps such tasks apart from the others). createTask already refused them if none can."""
        route = self.routes[job.params.model if job.params.model in MODELS else ANY_MODEL]
        if job.params.nsfw_checker:
            route = [name for name in route if self.backends[name].has_safety_checker]
        return route

    async def _generate(self, backend: Backend, jobs: list[Job]) -> list[list[GeneratedImage] | BackendError]:
        if len(jobs) == 1:
            return [await backend.generate(jobs[0])]
        results: list[list[GeneratedImage] | BackendError] = []
        for start in range(0, len(jobs), backend.max_batch):
            chunk = jobs[start:start + backend.max_batch]
            results.extend(await backend.generate_batch(chunk) if len(chunk) > 1
                           else [await backend.generate(chunk[0])])
        return results

    async def _finish(self, job: Job, images: list[GeneratedImage], backend: Backend, open_ids: set[str]) -> None:
        task_id = job.task_id
        # A pass-through model makes as many images as its upstream decides (at least one).
        expected = job.params.num_images if job.params.model in MODELS else max(1, len(images))
        if len(images) != expected:
            await self._fail(task_id, FailCode.INTERNAL, f"backend {backend.name} returned {len(images)} images, "
                                                     f"expected {job.params.num_images}; credits refunded", open_ids)
            return
        try:  # the stored files have the type the task asked for, whatever the backend returned
            images = await conform_all(images, job.params.output_format, max_pixels=self.loader.max_pixels)
        except BackendError as exc:
            log.warning("task %s: backend %s: %s", task_id, backend.name, exc.detail)
            await self._fail(task_id, exc.fail_code, exc.message, open_ids)
            return
        # Files are keyed by this claim: a worker that lost its lease (paused, partitioned) and
        # finishes late writes beside the new owner's files, never over them, and removes only its own.
        directory = f"results/{task_id}/{self._claims.get(task_id, 0)}-{self.file_token}"
        keys = [f"{directory}/{index}.{image.extension}" for index, image in enumerate(images)]
        # Written side by side: on S3 each put is a round trip.
        await asyncio.gather(*(self.storage.put(key, image.data) for key, image in zip(keys, images, strict=True)))
        open_ids.discard(task_id)
        if not await self.store.tasks.succeed(task_id, self.id, files=keys, seeds=[i.seed for i in images],
                                              backend_attempts=self._attempts.get(task_id)):
            log.warning("task %s finished after its lease was lost; its result files are removed", task_id)
            await self.storage.delete_prefix(directory)

    def _record_attempt(self, task_id: str, backend: str, outcome: Outcome, code: str, detail: str) -> None:
        metrics.BACKEND_CALLS.labels(backend, outcome).inc()
        entry = {"backend": backend, "outcome": str(outcome), "failCode": str(code), "detail": detail[:500],
                 "at": now_ms()}
        self._attempts.setdefault(task_id, []).append(entry)

    async def _fail(self, task_id: str, code: FailCode, message: str, open_ids: set[str] | None = None) -> None:
        if open_ids is not None:
            open_ids.discard(task_id)
        with contextlib.suppress(Exception):
            if await self.store.tasks.fail(task_id, code, message, worker_id=self.id,
                                           backend_attempts=self._attempts.get(task_id)):
                log.info("task %s failed: %s %s", task_id, code, message)
                return
        log.warning("could not record failure of task %s (lease lost?)", task_id)


def pick_seeds(seed: int | None, count: int) -> list[int]:
    """One seed per image: the user's seed and its successors, or fresh random ones."""
    base = seed if seed is not None else random.randrange(2**32)
    return [base + index for index in range(count)]
