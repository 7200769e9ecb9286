"""Scale-out on S3 for real: two API replicas (`serve --no-worker`) and two workers (`worker`), each
a process of its own with its own data directory, on one PostgreSQL database and one bucket (moto on
loopback). The workers get no SAFELIGHT_PUBLIC_URL, and nobody may fetch loopback URLs, so every
input must be recognised as one of our files and read from the bucket.

The replicas hand out both kinds of link, as during a rolling change of SAFELIGHT_FILE_URLS:
api-1 Safelight's own (proxied), api-2 presigned S3 URLs. So uploads of both kinds are inputs,
and results of both kinds are checked. (Each mode on its own, in one process: test_s3_api.py.)

200 tasks with uploaded inputs, created across both replicas, must all succeed, and every result
URL must work from either replica (and a presigned one straight from the bucket).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import httpx
from PIL import Image

from safelight.store import Store
from tests.helpers import free_port, png_bytes
from tests.storage.conftest import Bucket

TASKS = 200
CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
DOWNLOAD = "/api/v1/common/download-url"


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.name} (exit {self.popen.poll()}) ---\n" + "\n".join(text)


class Cluster:
    """The four processes; `logs()` is what a failure shows."""

    def __init__(self, tmp_path: Path, database_url: str, bucket: Bucket) -> None:
        self.tmp_path, self.database_url, self.bucket = tmp_path, database_url, bucket
        self.processes: list[Process] = []
        self.api_urls: list[str] = []

    def env(self, name: str, file_urls: str | None) -> dict[str, str]:
        # Nothing inherited that could make a process find another's files or public URL.
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("SAFELIGHT_", "AWS_"))}
        env.update(self.bucket.env())
        if file_urls is None:
            del env["SAFELIGHT_FILE_URLS"]  # a worker hands out no links; it needs none set
        else:
            env["SAFELIGHT_FILE_URLS"] = file_urls
        env.update({"SAFELIGHT_DATABASE_URL": self.database_url,
                    "SAFELIGHT_DATA_DIR": str(self.tmp_path / name),  # each its own; nothing shared on disk
                    "SAFELIGHT_OUTBOUND_ALLOW": "",  # production default: loopback (moto, the API) is refused
                    "SAFELIGHT_BOOTSTRAP_DEMO_KEY": "false",
                    "SAFELIGHT_SANDBOX_CONCURRENCY": "8",
                    "HF_HUB_OFFLINE": "1"})
        return env

    def start(self, name: str, *args: str, file_urls: str | None = None) -> None:
        log_path = self.tmp_path / f"{name}.log"
        log = log_path.open("wb")
        try:
            popen = subprocess.Popen([sys.executable, "-m", "safelight.cli", *args], env=self.env(name, file_urls),
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        except BaseException:
            log.close()
            raise
        self.processes.append(Process(name, popen, log_path, log))

    def start_api(self, name: str, file_urls: str) -> None:
        port = free_port()
        self.api_urls.append(f"http://127.0.0.1:{port}")
        self.start(name, "serve", "--no-worker", "--port", str(port), "--log-level", "warning", file_urls=file_urls)

    def stop(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes:
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
            process.log.close()

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    def assert_running(self) -> None:
        dead = [process for process in self.processes if process.popen.poll() is not None]
        assert not dead, f"a process exited early\n{self.logs()}"

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for base in self.api_urls:
            while True:
                self.assert_running()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{base}/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, f"{base} did not come up\n{self.logs()}"
                await asyncio.sleep(0.1)


@contextlib.contextmanager
def cluster(tmp_path: Path, database_url: str, bucket: Bucket) -> Iterator[Cluster]:
    running = Cluster(tmp_path, database_url, bucket)
    try:
        running.start_api("api-1", "proxied")
        running.start_api("api-2", "presigned")
        running.start("worker-1", "worker", "--log-level", "warning")
        running.start("worker-2", "worker", "--log-level", "warning")
        yield running
    finally:
        running.stop()


@contextlib.asynccontextmanager
async def store_at(url: str) -> AsyncIterator[Store]:
    store = Store(url)
    try:
        yield store
    finally:
        await store.close()


def swap_origin(url: str, base: str) -> str:
    """The same link, asked of another replica."""
    parts, origin = urlsplit(url), urlsplit(base)
    return urlunsplit((origin.scheme, origin.netloc, parts.path, parts.query, ""))


async def test_two_api_replicas_and_two_workers_share_nothing_but_the_database_and_the_bucket(
        postgres_url, bucket, tmp_path):
    async with store_at(postgres_url) as store:
        await store.migrate()  # once, before the processes start (they would serialise on a lock anyway)
        key = (await store.accounts.create_key("scale-out", credits=100_000)).key

        with cluster(tmp_path, postgres_url, bucket) as running:
            headers = {"Authorization": f"Bearer {key}"}
            limits = httpx.Limits(max_connections=32)
            async with httpx.AsyncClient(headers=headers, timeout=30, limits=limits) as client:
                await running.wait_ready(client)
                apis = running.api_urls

                # One upload per replica; every task uses one of them, often the other replica's.
                uploads = []
                for index, base in enumerate(apis):
                    reply = (await client.post(f"{base}/api/file-base64-upload", json={
                        "base64Data": base64.b64encode(png_bytes(64, 48, (index * 90, 40, 200))).decode(),
                        "uploadPath": "refs", "fileName": f"from-{index}.png"})).json()
                    assert reply["code"] == 200, reply
                    uploads.append(reply["data"]["downloadUrl"])
                assert uploads[0].startswith(f"{apis[0]}/files/uploads/")  # api-1: proxied
                assert uploads[1].startswith(f"{bucket.endpoint}/{bucket.name}/safelight/uploads/")  # api-2: presigned

                gate = asyncio.Semaphore(16)

                async def create(index: int) -> str:
                    base = apis[index % 2]
                    if index % 4 == 3:
                        body = {"model": "google/imagen4-fast", "input": {"prompt": f"task {index}",
                                                                          "aspect_ratio": "1:1"}}
                    else:
                        body = {"model": "flux-2/pro-image-to-image", "input": {
                            "prompt": f"task {index}", "input_urls": [uploads[(index // 2) % 2]],
                            "aspect_ratio": "1:1", "resolution": "1K"}}
                    async with gate:
                        reply = (await client.post(f"{base}{CREATE}", json=body)).json()
                    assert reply["code"] == 200, (index, reply)
                    return reply["data"]["taskId"]

                started = time.monotonic()
                task_ids = await asyncio.gather(*(create(index) for index in range(TASKS)))

                deadline = time.monotonic() + 90
                while (counts := await store.tasks.count_by_state()).get("success", 0) + counts.get("fail", 0) < TASKS:
                    running.assert_running()
                    assert time.monotonic() < deadline, f"tasks still unfinished: {counts}\n{running.logs()}"
                    await asyncio.sleep(0.2)
                generated = time.monotonic() - started

                kinds: list[str] = []

                async def fetch_everywhere(url: str) -> bytes:
                    """The file behind a result link, asked of every replica (and of the bucket, if presigned)."""
                    contents = set()
                    kinds.append("presigned" if "X-Amz-Signature=" in url else "proxied")
                    if url.startswith(f"{bucket.endpoint}/{bucket.name}/safelight/results/"):  # presigned
                        direct = await client.get(url, headers={"Authorization": ""})
                        assert direct.status_code == 200, url
                        contents.add(direct.content)
                        for base in apis:  # each replica recognises it and links to the file its own way
                            fresh = (await client.post(f"{base}{DOWNLOAD}", json={"url": url})).json()
                            assert fresh["code"] == 200, fresh
                            fetched = await client.get(fresh["data"])
                            assert fetched.status_code == 200, (fresh, fetched.text[:200])
                            contents.add(fetched.content)
                    else:
                        assert url.startswith(f"{apis[0]}/files/results/"), url
                        for base in apis:
                            fetched = await client.get(swap_origin(url, base))
                            assert fetched.status_code == 200, (url, base, fetched.text[:200])
                            contents.add(fetched.content)
                    assert len(contents) == 1
                    return contents.pop()

                async def check(index: int, task_id: str) -> None:
                    async with gate:
                        record = (await client.get(f"{apis[index % 2]}{RECORD}", params={"taskId": task_id})).json()
                        data = record["data"]
                        assert data["state"] == "success", (data, running.logs())
                        (url,) = json.loads(data["resultJson"])["resultUrls"]
                        content = await fetch_everywhere(url)
                        assert Image.open(io.BytesIO(content)).size == (1024, 1024)

                await asyncio.gather(*(check(index, task_id) for index, task_id in enumerate(task_ids)))
                checked = time.monotonic() - started - generated
                assert sorted(set(kinds)) == ["presigned", "proxied"]
                print(f"{TASKS} tasks generated in {generated:.1f} s, results checked in {checked:.1f} s")

            running.assert_running()

    # The results are in the bucket, and no process wrote one to its own disk.
    results = [key for key in bucket.object_keys() if key.startswith("safelight/results/")]
    assert len(results) == TASKS
    assert not list(tmp_path.glob("*/files/results/*")) and not list(tmp_path.glob("*/files/uploads/*"))
