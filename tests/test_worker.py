"""The worker: event-driven wake-up, per-backend concurrency, crash recovery, failures and refunds."""

import asyncio
import time

from safelight.backends import Backend, BackendError, GeneratedImage, SandboxBackend
from safelight.catalog import MODELS
from safelight.worker import Worker
from safelight.worker.progress import ProgressReporter
from tests.helpers import create_task as create
from tests.helpers import png_bytes, wait_state


class ScriptedBackend(Backend):
    """A backend whose behaviour the test controls; it records how many jobs ran at once."""

    type_name = "scripted"

    def __init__(self, *, concurrency=2, delay=0.0, error=None):
        super().__init__("scripted", concurrency=concurrency)
        self.delay, self.error = delay, error
        self.running = self.peak = self.calls = 0

    async def generate(self, job):
        self.calls += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            for step in range(4):
                await asyncio.sleep(self.delay / 4)
                job.report_progress(25 * (step + 1))
            if self.error:
                raise self.error
            return [GeneratedImage(png_bytes(8, 8), seed) for seed in job.seeds]
        finally:
            self.running -= 1


def make_worker(runtime, backend, **kw):
    return Worker(store=runtime.store, storage=runtime.storage, loader=runtime.input_loader(), backends=[backend],
                  routes={model: backend.name for model in MODELS}, lease_seconds=kw.pop("lease_seconds", 60),
                  **kw)


async def test_worker_wakes_at_once_when_a_task_is_created(runtime):
    worker = make_worker(runtime, SandboxBackend(concurrency=2))
    await worker.start()
    try:
        await asyncio.sleep(0.1)  # the claim loop is now parked on its wake-up, 30 s from its next sweep
        started = time.monotonic()
        task_id = await create(runtime)
        await wait_state(runtime, task_id, ("generating", "success"))
        assert time.monotonic() - started < 5.0  # a missed wake-up would wait for the 30 s sweep
    finally:
        await worker.stop()


async def test_concurrency_per_backend_is_respected(runtime):
    backend = ScriptedBackend(concurrency=2, delay=0.2)
    worker = make_worker(runtime, backend)
    await worker.start()
    try:
        ids = [await create(runtime) for _ in range(6)]
        rows = [await wait_state(runtime, task_id) for task_id in ids]
        assert all(row["state"] == "success" for row in rows)
        assert backend.peak == 2 and backend.calls == 6
    finally:
        await worker.stop()


async def test_backend_errors_fail_the_task_with_its_code_and_refund(runtime):
    worker = make_worker(runtime, ScriptedBackend(error=BackendError("501", "content was moderated")))
    await worker.start()
    try:
        row = await wait_state(runtime, await create(runtime))
        assert (row["state"], row["fail_code"], row["fail_msg"]) == ("fail", "501", "content was moderated")
        assert await runtime.store.accounts.balance(runtime.test_account) == 1000
    finally:
        await worker.stop()


async def test_unexpected_errors_fail_with_500_and_no_internals(runtime):
    worker = make_worker(runtime, ScriptedBackend(error=RuntimeError("secret internal detail")))
    await worker.start()
    try:
        row = await wait_state(runtime, await create(runtime))
        assert row["fail_code"] == "500" and "secret" not in row["fail_msg"]
        assert await runtime.store.accounts.ledger_sum(runtime.test_account) == 1000
    finally:
        await worker.stop()


async def test_slow_tasks_time_out(runtime):
    worker = make_worker(runtime, ScriptedBackend(delay=5), task_timeout_seconds=0.3)
    await worker.start()
    try:
        row = await wait_state(runtime, await create(runtime))
        assert row["fail_code"] == "504" and "longer than" in row["fail_msg"]
    finally:
        await worker.stop()


async def test_progress_is_recorded_while_generating(runtime):
    worker = make_worker(runtime, ScriptedBackend(concurrency=1, delay=1.2))
    await worker.start()
    try:
        task_id = await create(runtime)
        seen = set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = await runtime.store.tasks.get(task_id)
            if row["state"] == "generating" and row["progress"]:
                seen.add(row["progress"])
            if row["state"] == "success":
                break
            await asyncio.sleep(0.05)
        assert seen and all(0 < pct <= 100 for pct in seen)
        assert row["progress"] == 100
    finally:
        await worker.stop()


async def test_progress_writes_are_throttled():
    writes = []

    async def write(pct):
        writes.append(pct)

    reporter = ProgressReporter(asyncio.get_running_loop(), write, min_interval=0.5)
    for pct in range(100):
        reporter(pct)
        await asyncio.sleep(0.005)  # ~0.6 s of reports
    await asyncio.sleep(0.01)
    assert 1 <= len(writes) <= 2


async def test_crash_mid_task_is_recovered_on_start(runtime):
    task_id = await create(runtime)
    # A worker claimed it and died: its lease is in the past.
    await runtime.store.tasks.claim(["google/imagen4-fast"], 1, "crashed-worker", lease_ms=-1)
    worker = make_worker(runtime, SandboxBackend())
    await worker.start()
    try:
        row = await wait_state(runtime, task_id)
        assert row["state"] == "success" and row["claims"] == 2
    finally:
        await worker.stop()


async def test_tasks_that_crash_too_often_fail_with_refund(runtime):
    task_id = await create(runtime)
    for _ in range(3):
        await runtime.store.tasks.claim(["google/imagen4-fast"], 1, "crashed", lease_ms=-1)
        await runtime.store.tasks.requeue_expired(max_claims=99)
    await runtime.store.tasks.claim(["google/imagen4-fast"], 1, "crashed", lease_ms=-1)
    worker = make_worker(runtime, SandboxBackend(), max_claims=3)
    await worker.start()
    try:
        row = await wait_state(runtime, task_id)
        assert row["state"] == "fail" and "interrupted" in row["fail_msg"]
        assert await runtime.store.accounts.balance(runtime.test_account) == 1000
    finally:
        await worker.stop()


async def test_graceful_stop_hands_running_tasks_back(runtime):
    worker = make_worker(runtime, ScriptedBackend(concurrency=1, delay=10))
    await worker.start()
    task_id = await create(runtime)
    await wait_state(runtime, task_id, ("generating",))
    await worker.stop(grace_seconds=0.1)
    row = await runtime.store.tasks.get(task_id)
    assert (row["state"], row["claims"]) == ("waiting", 0)
    # and a new worker picks it up
    worker = make_worker(runtime, SandboxBackend())
    await worker.start()
    try:
        assert (await wait_state(runtime, task_id))["state"] == "success"
    finally:
        await worker.stop()
