"""The worker: claims waiting tasks with a lease, runs them on their backend, records the outcome.

It is the only component that moves a task between states:
waiting -> queuing (claimed, inputs being fetched) -> generating (backend running) -> success | fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy.engine import RowMapping

from safelight.backends import Backend, BackendError, Job
from safelight.catalog import InputError as CatalogInputError
from safelight.catalog import get_model, validate_input
from safelight.storage import LocalStorage

from .inputs import InputError, InputLoader
from .progress import ProgressReporter

log = logging.getLogger(__name__)

# failCode values: kie uses HTTP-like strings; ours are stable and documented in the README.
FAIL_INPUT = "400"
FAIL_INTERNAL = "500"
FAIL_TIMEOUT = "504"


class Worker:
    def __init__(self, *, store, storage: LocalStorage, loader: InputLoader, backends: Sequence[Backend],
                 routes: Mapping[str, str], lease_seconds: float = 60.0, max_attempts: int = 3,
                 task_timeout_seconds: float = 600.0) -> None:
        self.store = store
        self.storage = storage
        self.loader = loader
        self.backends = {backend.name: backend for backend in backends}
        self.routes = dict(routes)
        self.lease_ms = int(lease_seconds * 1000)
        self.max_attempts = max_attempts
        self.task_timeout = task_timeout_seconds
        self.id = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._running: dict[str, dict[str, asyncio.Task]] = {name: {} for name in self.backends}
        self._loops: list[asyncio.Task] = []
        self._stopping = False

    def models_for(self, backend_name: str) -> list[str]:
        return [model for model, name in self.routes.items() if name == backend_name]

    @property
    def in_flight(self) -> int:
        return sum(len(running) for running in self._running.values())

    async def start(self) -> None:
        for backend in self.backends.values():
            await backend.start()
        await self.store.wakeup.listen()
        report = await self.store.tasks.requeue_expired(self.max_attempts)
        if report.requeued or report.failed:
            log.warning("recovered interrupted tasks: %d re-queued, %d failed after %d attempts",
                        len(report.requeued), len(report.failed), self.max_attempts)
        self._loops = [asyncio.create_task(self._claim_loop(), name="worker-claim"),
                       asyncio.create_task(self._heartbeat_loop(), name="worker-heartbeat")]
        log.info("worker %s serving %s", self.id,
                 {name: self.models_for(name) for name in self.backends})

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming, give running tasks `grace_seconds`, then hand the rest back to the queue."""
        self._stopping = True
        self.store.wakeup.poke()
        running = [task for tasks in self._running.values() for task in tasks.values()]
        if running:
            await asyncio.wait(running, timeout=grace_seconds)
        unfinished = [task_id for tasks in self._running.values() for task_id in tasks]
        for task in running:
            task.cancel()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*running, *self._loops, return_exceptions=True)
        if unfinished:
            await self.store.tasks.release(unfinished, self.id)
            log.warning("handed %d unfinished tasks back to the queue", len(unfinished))
        for backend in self.backends.values():
            await backend.close()

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
                    if (await self.store.tasks.requeue_expired(self.max_attempts)).requeued:
                        continue
            except Exception:  # the loop must survive a database hiccup
                log.exception("worker claim loop error; retrying")
                await asyncio.sleep(1)
            await self.store.wakeup.wait(max(0.0, next_sweep - loop.time()))

    async def _claim_all(self) -> None:
        for name, backend in self.backends.items():
            free = backend.concurrency - len(self._running[name])
            if free <= 0 or self._stopping:
                continue
            for row in await self.store.tasks.claim(self.models_for(name), free, self.id, self.lease_ms):
                task = asyncio.create_task(self._process(backend, row), name=f"task-{row['id']}")
                self._running[name][row["id"]] = task

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            ids = [task_id for tasks in self._running.values() for task_id in tasks]
            try:
                await self.store.tasks.extend_leases(ids, self.id, self.lease_ms)
            except Exception:
                log.exception("could not extend leases")

    async def _process(self, backend: Backend, row: RowMapping) -> None:
        task_id = row["id"]
        try:
            await asyncio.wait_for(self._run(backend, row), timeout=self.task_timeout)
        except TimeoutError:
            await self._fail(task_id, FAIL_TIMEOUT, f"generation took longer than {self.task_timeout:.0f} s")
        except asyncio.CancelledError:
            raise
        except InputError as exc:
            await self._fail(task_id, FAIL_INPUT, str(exc))
        except BackendError as exc:
            await self._fail(task_id, exc.fail_code, exc.message)
        except Exception:
            log.exception("task %s failed unexpectedly on %s", task_id, backend.name)
            await self._fail(task_id, FAIL_INTERNAL, "internal error while generating; credits refunded")
        finally:
            self._running[backend.name].pop(task_id, None)
            self.store.wakeup.poke()  # a slot is free

    async def _run(self, backend: Backend, row: RowMapping) -> None:
        task_id = row["id"]
        spec = get_model(row["model"])
        if spec is None:
            raise InputError(f"model {row['model']!r} is no longer served")
        try:
            model_input = validate_input(spec, json.loads(row["param"]).get("input"))
        except CatalogInputError as exc:
            raise InputError(str(exc)) from None
        params = spec.to_params(model_input)

        references = []
        for index, url in enumerate(params.reference_urls):
            field = f"input.{spec.url_fields[0]}[{index}]" if spec.url_fields else "input"
            references.append(await self.loader.load(field, url))

        if not await self.store.tasks.mark_generating(task_id, self.id, backend.name):
            return  # lease lost: another worker owns the task now
        reporter = ProgressReporter(asyncio.get_running_loop(),
                                    lambda pct: self.store.tasks.set_progress(task_id, self.id, pct))
        job = Job(task_id=task_id, params=params, seeds=pick_seeds(params.seed, params.num_images),
                  references=references, report_progress=reporter)
        images = await backend.generate(job)
        if len(images) != params.num_images:
            raise BackendError(FAIL_INTERNAL, f"backend {backend.name} returned {len(images)} images, "
                                              f"expected {params.num_images}")
        keys = []
        for index, image in enumerate(images):
            key = f"results/{task_id}/{index}.{image.extension}"
            await self.storage.put(key, image.data)
            keys.append(key)
        if not await self.store.tasks.succeed(task_id, self.id, files=keys, seeds=[i.seed for i in images]):
            log.warning("task %s finished after its lease was lost; result discarded", task_id)
            for key in keys:
                await self.storage.delete(key)

    async def _fail(self, task_id: str, code: str, message: str) -> None:
        with contextlib.suppress(Exception):
            if await self.store.tasks.fail(task_id, code, message, worker_id=self.id):
                log.info("task %s failed: %s %s", task_id, code, message)
                return
        log.warning("could not record failure of task %s (lease lost?)", task_id)


def pick_seeds(seed: int | None, count: int) -> list[int]:
    """One seed per image: the user's seed and its successors, or fresh random ones."""
    base = seed if seed is not None else random.randrange(2**32)
    return [base + index for index in range(count)]
