"""What an operator sees: Prometheus metrics that move, JSON logs, heartbeats, readiness, and a
server that refuses a taken port at once (issue 12)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from safelight.metrics import STORE_GAUGES
from safelight.runtime import Role, Runtime
from tests.helpers import free_port, start_server

CREATE = "/api/v1/jobs/createTask"
Z_IMAGE = {"model": "z-image", "input": {"prompt": "observed", "aspect_ratio": "1:1"}}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(scrape: dict, name: str, **labels: str) -> float:
    return scrape.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict:
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_every_metric_name_appears_and_moves(live_server):
    runtime = live_server.runtime
    async with live_server.client() as client:
        before = await scrape(client)
        task_id = (await client.post(CREATE, json=Z_IMAGE)).json()["data"]["taskId"]
        await live_server.wait_terminal(task_id)
        poor = await runtime.store.accounts.create_key("poor", credits=0)
        async with live_server.client(key=poor.key) as broke:
            assert (await broke.post(CREATE, json=Z_IMAGE)).json()["code"] == 402
        STORE_GAUGES.snapshot = await runtime.store_snapshot()  # the background refresh runs every 5 s
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("safelight_tasks_created_total", model="z-image") == 1
    assert moved("safelight_tasks_finished_total", model="z-image", backend="sandbox", state="success",
                 fail_code="") == 1
    assert moved("safelight_task_queue_seconds_count", model="z-image") == 1
    assert moved("safelight_task_run_seconds_count", model="z-image", backend="sandbox") == 1
    assert moved("safelight_backend_calls_total", backend="sandbox", outcome="success") == 1
    assert moved("safelight_api_requests_total", route="/api/v1/jobs/createTask", code="200") == 1
    assert moved("safelight_api_requests_total", route="/api/v1/jobs/createTask", code="402") == 1
    assert moved("safelight_api_request_seconds_count", route="/api/v1/jobs/createTask") == 2
    # The in-process worker wrote its heartbeat: one live worker serves each model.
    assert value(after, "safelight_workers", model="z-image") >= 1
    assert ("safelight_callbacks_pending", frozenset()) in after
    assert not any(name == "safelight_queue_tasks" and value_ for (name, _), value_ in after.items())


async def test_queue_and_callback_gauges_and_counters(settings):
    """Without a worker, tasks wait: the queue gauge says so; a callback outcome is counted."""
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}",
                                      "callback_timeout_seconds": 2.0})
    server, task = await start_server(own, roles=[Role.DELIVERY])
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("q", credits=100)).key
    try:
        async with httpx.AsyncClient(base_url=own.public_url, headers={"Authorization": f"Bearer {key}"}) as c:
            before = await scrape(c)
            for _ in range(3):
                assert (await c.post(CREATE, json={**Z_IMAGE, "callBackUrl": "http://127.0.0.1:9/cb"})).json()[
                    "code"] == 200
            STORE_GAUGES.snapshot = await runtime.store_snapshot()
            waiting = await scrape(c)
            assert value(waiting, "safelight_queue_tasks", model="z-image", state="waiting") == 3
            # A worker fails them (no backend can take them here): three callbacks become owed.
            task_ids = [row["id"] for row in await runtime.store.tasks.claim(["z-image"], 3, "w", 60_000)]
            for task_id in task_ids:
                assert await runtime.store.tasks.fail(task_id, "500", "test", worker_id="w")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                after = await scrape(c)
                if value(after, "safelight_callbacks_total", outcome="retry") - value(
                        before, "safelight_callbacks_total", outcome="retry") >= 3:
                    break
                await asyncio.sleep(0.1)
            assert value(after, "safelight_callbacks_total", outcome="retry") - value(
                before, "safelight_callbacks_total", outcome="retry") >= 3
            assert value(after, "safelight_callback_delivery_seconds_count") - value(
                before, "safelight_callback_delivery_seconds_count") >= 3
            assert value(after, "safelight_tasks_finished_total", model="z-image", backend="none", state="fail",
                         fail_code="500") - value(before, "safelight_tasks_finished_total", model="z-image",
                                                  backend="none", state="fail", fail_code="500") == 3
            STORE_GAUGES.snapshot = await runtime.store_snapshot()
            assert value(await scrape(c), "safelight_callbacks_pending") == 3
    finally:
        server.should_exit = True
        await task


async def test_the_metrics_token(settings):
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}",
                                      "metrics_token": "s3cret"})
    server, task = await start_server(own, roles=())
    try:
        async with httpx.AsyncClient(base_url=own.public_url) as c:
            assert (await c.get("/metrics")).status_code == 401
            assert (await c.get("/metrics", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await c.get("/metrics", headers={"Authorization": "Bearer s3cret"})).status_code == 200
    finally:
        server.should_exit = True
        await task


async def test_heartbeats_readiness_and_models_nobody_serves(settings):
    """An API process without a worker: tasks wait for a model nobody serves, and it says so; a worker
    appears (heartbeat) and serves it."""
    api = await Runtime.open(settings, roles=[Role.API])
    try:
        account = (await api.store.accounts.create_key("waiting", credits=10)).account_id
        await api.store.tasks.create(account_id=account, model="z-image", param=json.dumps(Z_IMAGE),
                                     callback_url=None, num_images=1, cost=1)
        assert await api.unserved_models() == ["z-image"]
        readiness = await api.readiness()
        assert readiness["ready"] and readiness["roles"] == ["api"]

        worker = await Runtime.open(settings, roles=[Role.WORKER], migrate=False)
        try:
            live = await api.store.workers.live(30_000)
            assert [w.id for w in live] == [worker.worker.id] and "z-image" in live[0].models
            assert await api.unserved_models() == []
            assert (await worker.readiness())["ready"]
        finally:
            await worker.close()
        assert await api.store.workers.live(30_000) == []  # a stopped worker removes its row
    finally:
        await api.close()


def test_json_logs_a_taken_port_and_the_banner(tmp_path):
    """`serve` with SAFELIGHT_LOG_FORMAT=json: every log line is JSON, task lines carry task_id, the access
    log carries the kie code. A second `serve` on the same port stops at once with one line."""
    port = free_port()
    env = {**os.environ, "SAFELIGHT_DATA_DIR": str(tmp_path / "data"), "SAFELIGHT_LOG_FORMAT": "json"}
    env.pop("SAFELIGHT_DATABASE_URL", None)
    serve = [sys.executable, "-m", "safelight.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(serve, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = ""
        deadline = time.monotonic() + 30
        while "SAFELIGHT_BASE_URL" not in banner and time.monotonic() < deadline:
            banner += process.stdout.readline()
        key = re.search(r"SAFELIGHT_API_KEY=(sl_[\w-]+)", banner).group(1)
        assert f"export SAFELIGHT_BASE_URL=http://127.0.0.1:{port}" in banner
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):  # until uvicorn serves
            try:
                httpx.get(f"{base}/healthz")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}"}
        task_id = httpx.post(f"{base}{CREATE}", json=Z_IMAGE, headers=headers).json()["data"]["taskId"]
        for _ in range(200):
            if httpx.get(f"{base}/api/v1/jobs/recordInfo", params={"taskId": task_id},
                         headers=headers).json()["data"]["state"] == "success":
                break
            time.sleep(0.02)
        assert httpx.post(f"{base}{CREATE}", json={"model": "nope", "input": {}}, headers=headers).json()[
            "code"] == 422

        second = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 2
        assert second.stdout == "" and len(second.stderr.strip().splitlines()) == 1
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
        time.sleep(0.3)
    finally:
        process.terminate()
        _, logs = process.communicate(timeout=15)
        process.stdout.close()
    lines = [json.loads(line) for line in logs.splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    states = [line["state"] for line in lines if line.get("task_id") == task_id and "state" in line]
    assert states == ["waiting", "queuing", "generating", "success"]
    access = [line for line in lines if line["logger"] == "safelight.access" and line["path"] == CREATE]
    assert [line["code"] for line in access] == [200, 422] and all(line["status"] == 200 for line in access)
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's own lines, as JSON too


def test_a_worker_serves_metrics_on_its_own_port(tmp_path):
    port = free_port()
    env = {**os.environ, "SAFELIGHT_DATA_DIR": str(tmp_path / "data"), "SAFELIGHT_METRICS_TOKEN": "t"}
    env.pop("SAFELIGHT_DATABASE_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "safelight.cli", "worker", "--metrics-port", str(port),
                                "--metrics-host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        for _ in range(150):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.1)
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer t"})
        assert response.status_code == 200 and "safelight_tasks_created_total" in response.text
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_readyz_says_what_is_wrong(settings):
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(own)
    try:
        async with httpx.AsyncClient(base_url=own.public_url) as c:
            ready = (await c.get("/readyz")).json()
            assert ready["code"] == 200 and ready["data"]["ready"] is True
            assert set(ready["data"]) == {"ready", "roles", "problems", "unservedModels"}  # no task counts
            runtime = server.config.app.state.runtime
            await runtime.worker.stop()
            broken = await c.get("/readyz")
            assert broken.status_code == 503 and broken.json()["data"]["problems"] == ["the worker is not running"]
    finally:
        server.should_exit = True
        await task

