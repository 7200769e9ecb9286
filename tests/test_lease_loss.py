"""A worker that lost its lease must not touch the new owner's results (issue 11, finding 1).

Worker A runs in a thread with its own event loop and its own store connection. Its backend
generates, then blocks that whole loop (heartbeat included), as SIGSTOP would. The lease
expires, worker B re-claims the task and finishes it; then A is released, finishes late, finds
its success refused, and cleans up. B's files must all still be served.
"""

from __future__ import annotations

import asyncio
import json
import threading

import httpx

from safelight.backends import Backend, GeneratedImage, Job, SandboxBackend
from safelight.catalog import MODELS
from safelight.kie import TaskState
from safelight.net import OutboundPolicy
from safelight.runtime import Role
from safelight.storage import LocalStorage, UrlSigner
from safelight.store import Store
from safelight.worker import InputLoader, Worker
from tests.helpers import free_port, png_bytes, start_server, wait_state

LEASE_SECONDS = 1.0
BODY = {"model": "google/imagen4-fast", "input": {"prompt": "stolen lease", "num_images": "4"}}


class PausedBackend(Backend):
    """Generates, then freezes its event loop until released (a stopped process)."""

    type_name = "paused"

    def __init__(self) -> None:
        super().__init__("paused")
        self.generated = threading.Event()
        self.release = threading.Event()

    async def generate(self, job: Job) -> list[GeneratedImage]:
        images = [GeneratedImage(png_bytes(8, 8, (255, 0, 0)), seed) for seed in job.seeds]
        self.generated.set()
        self.release.wait(30)  # blocks the loop: no heartbeat, no lease renewal
        return images


def run_worker_a(database_url: str, settings, backend: PausedBackend, done: threading.Event) -> None:
    async def main() -> None:
        store = Store(database_url)
        storage = LocalStorage(settings.files_dir)
        signer_secret = await store.state.secret_key()

        loader = InputLoader(storage=storage, signer=UrlSigner(signer_secret, settings.public_url),
                             policy=OutboundPolicy(), max_bytes=1 << 20, max_pixels=1 << 20)
        worker = Worker(store=store, storage=storage, loader=loader, backends=[backend],
                        routes={model: "paused" for model in MODELS}, lease_seconds=LEASE_SECONDS)
        await worker.start()
        try:
            await asyncio.to_thread(done.wait, 60)
        finally:
            await worker.stop(grace_seconds=5)
            await store.close()

    asyncio.run(main())


async def test_a_late_worker_leaves_the_new_owners_files_alone(settings, database_url):
    port = free_port()
    settings = settings.model_copy(update={"database_url": database_url, "port": port, "lease_seconds": LEASE_SECONDS,
                                           "public_url": f"http://127.0.0.1:{port}"})
    # The API, without a worker of its own: worker A must claim the task first.
    server, serving = await start_server(settings, roles=[Role.DELIVERY])
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("lease", credits=100)).key
    paused, a_done = PausedBackend(), threading.Event()
    thread = threading.Thread(target=run_worker_a, args=(database_url, settings, paused, a_done), daemon=True)
    thread.start()
    worker_b = None
    try:
        async with httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}) as c:
            task_id = (await c.post("/api/v1/jobs/createTask", json=BODY)).json()["data"]["taskId"]
            assert await asyncio.to_thread(paused.generated.wait, 10), "worker A never generated"

            # Worker B (sandbox) re-claims the task once A's lease has expired, and finishes it.
            worker_b = runtime.build_worker({"sandbox": SandboxBackend()})
            worker_b.routes = {model: ["sandbox"] for model in MODELS}
            await worker_b.start()
            row = await wait_state(runtime, task_id, timeout=15)
            assert row["state"] == TaskState.SUCCESS and row["lease_owner"] is None
            b_files = json.loads(row["result"])["files"]

            # A wakes up, writes its own files, finds its success refused, and removes only what it wrote.
            paused.release.set()
            await asyncio.sleep(1.0)
            a_done.set()
            await asyncio.to_thread(thread.join, 15)
            assert not thread.is_alive()

            record = (await c.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()["data"]
            urls = json.loads(record["resultJson"])["resultUrls"]
            assert len(urls) == 4 and json.loads(row["result"])["files"] == b_files
            for url in urls:
                response = await c.get(url)
                assert response.status_code == 200, url
                assert response.content != png_bytes(8, 8, (255, 0, 0))  # B's sandbox image, not A's
            # Nothing of A's is left behind either.
            task_dir = runtime.storage.root / "results" / task_id
            assert sorted(p.relative_to(task_dir).as_posix() for p in task_dir.rglob("*.png")) == sorted(
                key.removeprefix(f"results/{task_id}/") for key in b_files)
    finally:
        paused.release.set()
        a_done.set()
        if worker_b is not None:
            await worker_b.stop()
        server.should_exit = True
        await serving
        await asyncio.to_thread(thread.join, 15)
