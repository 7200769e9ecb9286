"""Beyond polling (issue 13): Prefer: wait, the event stream, cancel and Cancel-After, idempotent
creates, the task list and queuePosition. Without the new headers and routes, kie's bytes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from safelight.backends import Backend, GeneratedImage, Job
from safelight.catalog import MODELS
from safelight.kie import TaskState
from safelight.runtime import Role, Runtime
from tests.helpers import free_port, png_bytes, start_server, wait_state

CREATE = "/api/v1/jobs/createTask"
RECORD = "/api/v1/jobs/recordInfo"
Z_IMAGE = {"model": "z-image", "input": {"prompt": "extension", "aspect_ratio": "1:1"}}


class Server:
    """A Safelight API on loopback with an account; `roles` () means no worker: tasks stay waiting."""

    def __init__(self, settings, roles=(), **overrides) -> None:
        self.port = free_port()
        self.settings = settings.model_copy(update={"port": self.port, "public_url": f"http://127.0.0.1:{self.port}",
                                                    **overrides})
        self.roles = roles

    async def __aenter__(self) -> Server:
        self.server, self.task = await start_server(self.settings, roles=self.roles)
        self.runtime: Runtime = self.server.config.app.state.runtime
        created = await self.runtime.store.accounts.create_key("ext", credits=1000)
        self.key, self.account_id = created.key, created.account_id
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.settings.public_url, timeout=90,
                                 headers={"Authorization": f"Bearer {key or self.key}"})


# --- Prefer: wait -----------------------------------------------------------------------------------


async def test_prefer_wait_returns_the_finished_record(live_server):
    async with live_server.client() as client:
        started = time.monotonic()
        response = await client.post(CREATE, json=Z_IMAGE, headers={"Prefer": "wait=30"})
        took = time.monotonic() - started
    body = response.json()
    assert response.headers["preference-applied"] == "wait=30"
    assert body["code"] == 200 and body["data"]["state"] == "success", body
    assert set(body["data"]) >= {"taskId", "model", "state", "param", "resultJson", "costTime", "progress"}
    assert json.loads(body["data"]["resultJson"])["resultUrls"]
    assert took < 20  # woken by the task's end, not the 30 s limit


async def test_prefer_wait_that_times_out_answers_the_task_id(settings):
    async with Server(settings) as server, server.client() as client:
        started = time.monotonic()
        response = await client.post(CREATE, json=Z_IMAGE, headers={"Prefer": "wait=1"})
        assert time.monotonic() - started >= 1.0
        assert response.headers["preference-applied"] == "wait=1"
        assert list(response.json()["data"]) == ["taskId"]
        # "wait" alone means 60; out-of-range values are clamped to 1..60.
        plain = await client.post(CREATE, json=Z_IMAGE, headers={"Prefer": "respond-async"})
        assert "preference-applied" not in plain.headers and list(plain.json()["data"]) == ["taskId"]
        bad = (await client.post(CREATE, json=Z_IMAGE, headers={"Prefer": "wait=soon"})).json()
        assert bad["code"] == 422 and "Prefer: wait" in bad["msg"]


async def test_without_the_extensions_the_bytes_are_kies(live_server):
    async with live_server.client() as client:
        response = await client.post(CREATE, json=Z_IMAGE)
        assert "preference-applied" not in response.headers
        assert list(response.json()) == ["code", "msg", "data"] and list(response.json()["data"]) == ["taskId"]
        record = await live_server.wait_terminal(response.json()["data"]["taskId"])
        assert "queuePosition" not in record


# --- queuePosition and the list ----------------------------------------------------------------------


async def test_queue_position_and_the_list(settings):
    async with Server(settings) as server, server.client() as client:
        ids = [(await client.post(CREATE, json=Z_IMAGE)).json()["data"]["taskId"] for _ in range(3)]
        other = (await client.post(CREATE, json={"model": "google/imagen4-fast", "input": {"prompt": "x"}})).json()
        positions = [(await client.get(RECORD, params={"taskId": i})).json()["data"]["queuePosition"] for i in ids]
        assert positions == [0, 1, 2]
        assert (await client.get(RECORD, params={"taskId": other["data"]["taskId"]})).json()["data"][
            "queuePosition"] == 0  # another model's queue

        pages, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            data = (await client.get("/api/v1/jobs/list", params=params)).json()["data"]
            pages.append([item["taskId"] for item in data["items"]])
            cursor = data["nextCursor"]
            if cursor is None:
                break
        assert pages == [[other["data"]["taskId"], ids[2]], [ids[1], ids[0]]]  # newest first
        only = (await client.get("/api/v1/jobs/list", params={"model": "google/imagen4-fast"})).json()["data"]
        assert [item["taskId"] for item in only["items"]] == [other["data"]["taskId"]]
        assert (await client.get("/api/v1/jobs/list", params={"state": "success"})).json()["data"]["items"] == []
        assert (await client.get("/api/v1/jobs/list", params={"limit": 101})).json()["code"] == 422
        assert (await client.get("/api/v1/jobs/list", params={"state": "done"})).json()["code"] == 422
        assert (await client.get("/api/v1/jobs/list", params={"cursor": "!!"})).json()["code"] == 422
        stranger = await server.runtime.store.accounts.create_key("stranger", credits=0)
        async with server.client(stranger.key) as theirs:
            assert (await theirs.get("/api/v1/jobs/list")).json()["data"] == {"items": [], "nextCursor": None}


# --- cancel and Cancel-After -------------------------------------------------------------------------


async def test_cancel_a_waiting_task_refunds_and_sends_its_callback(settings):
    received: list[dict] = []
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.helpers import serve_app

    async def callback(request):
        received.append(json.loads(await request.body()))
        return JSONResponse({})

    port = free_port()
    receiver, serving = await serve_app(Starlette(routes=[Route("/cb", callback, methods=["POST"])]), port,
                                        lifespan="off")
    try:
        async with Server(settings, roles=[Role.DELIVERY]) as server, server.client() as client:
            task_id = (await client.post(CREATE, json={**Z_IMAGE, "callBackUrl": f"http://127.0.0.1:{port}/cb"})
                       ).json()["data"]["taskId"]
            assert await server.runtime.store.accounts.balance(server.account_id) == 999
            reply = (await client.post("/api/v1/jobs/cancel", json={"taskId": task_id})).json()
            assert reply["code"] == 200
            assert (reply["data"]["state"], reply["data"]["failCode"], reply["data"]["failMsg"]) == (
                "fail", "499", "cancelled")
            assert await server.runtime.store.accounts.balance(server.account_id) == 1000
            again = (await client.post("/api/v1/jobs/cancel", json={"taskId": task_id})).json()
            assert again["code"] == 422 and "already ended (fail)" in again["msg"]
            assert (await client.post("/api/v1/jobs/cancel", json={"taskId": "0" * 32})).json() == {
                "code": 422, "msg": "recordInfo is null", "data": None}
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.05)
            assert received and received[0]["code"] == 501 and received[0]["data"]["failCode"] == "499"
    finally:
        receiver.should_exit = True
        await serving


class SlowBackend(Backend):
    """Generates for a long time, noticing cancellation (as a provider's polling does)."""

    type_name = "slow"

    def __init__(self) -> None:
        super().__init__("slow")
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()

    async def generate(self, job: Job) -> list[GeneratedImage]:
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.stopped.set()
            raise
        return [GeneratedImage(png_bytes(8, 8), seed) for seed in job.seeds]


async def test_cancel_a_generating_task_stops_its_backend(settings):
    async with Server(settings) as server, server.client() as client:
        backend = SlowBackend()
        worker = server.runtime.build_worker({"slow": backend})
        worker.routes = {model: ["slow"] for model in MODELS}
        await worker.start()
        try:
            task_id = (await client.post(CREATE, json=Z_IMAGE)).json()["data"]["taskId"]
            await asyncio.wait_for(backend.started.wait(), 10)
            reply = (await client.post("/api/v1/jobs/cancel", json={"taskId": task_id})).json()
            assert reply["data"]["state"] == "fail" and reply["data"]["failCode"] == "499"
            await asyncio.wait_for(backend.stopped.wait(), 10)  # the worker heard of it and stopped the backend
            assert worker.in_flight == 0
            row = await server.runtime.store.tasks.get(task_id)
            assert (row["state"], row["fail_code"], row["credits_consumed"]) == ("fail", "499", 0)
        finally:
            await worker.stop()


async def test_cancel_after_holds_without_any_worker(settings):
    async with Server(settings) as server, server.client() as client:
        task_id = (await client.post(CREATE, json=Z_IMAGE, headers={"Cancel-After": "1s"})).json()["data"]["taskId"]
        row = await wait_state(server.runtime, task_id, timeout=10)
        assert (row["state"], row["fail_code"]) == ("fail", "499")
        assert row["fail_msg"] == "cancelled: its deadline passed (Cancel-After 1 s)"
        assert await server.runtime.store.accounts.balance(server.account_id) == 1000
        for bad in ("0", "soon", "-5s", "1h", "20000m"):
            reply = (await client.post(CREATE, json=Z_IMAGE, headers={"Cancel-After": bad})).json()
            assert reply["code"] == 422 and "Cancel-After must be" in reply["msg"], bad
        assert (await client.post(CREATE, json=Z_IMAGE, headers={"Cancel-After": "2m"})).json()["code"] == 200


# --- idempotent creates ------------------------------------------------------------------------------


async def test_idempotent_creates_under_concurrent_duplicates(settings, database_url):
    async with Server(settings, database_url=database_url) as server, server.client() as client:
        headers = {"Idempotency-Key": "order-42"}
        answers = await asyncio.gather(*(client.post(CREATE, json=Z_IMAGE, headers=headers) for _ in range(50)))
        ids = {answer.json()["data"]["taskId"] for answer in answers}
        assert len(ids) == 1 and all(answer.json()["code"] == 200 for answer in answers)
        assert await server.runtime.store.accounts.balance(server.account_id) == 999  # charged once
        assert sum((await server.runtime.store.tasks.count_by_state()).values()) == 1

        changed = (await client.post(CREATE, json={**Z_IMAGE, "input": {**Z_IMAGE["input"], "prompt": "other"}},
                                     headers=headers)).json()
        assert changed["code"] == 422 and "already used for a different request" in changed["msg"]
        fresh = (await client.post(CREATE, json=Z_IMAGE, headers={"Idempotency-Key": "order-43"})).json()
        assert fresh["data"]["taskId"] not in ids
        for bad in ("", "x" * 256, "tab\there", "ünicode".encode()):  # non-ASCII arrives as raw bytes
            reply = (await client.post(CREATE, json=Z_IMAGE, headers={"Idempotency-Key": bad})).json()
            assert reply["code"] == 422 and "Idempotency-Key must be" in reply["msg"]
        # Another account's same key is its own.
        other = await server.runtime.store.accounts.create_key("other", credits=10)
        async with server.client(other.key) as theirs:
            theirs_id = (await theirs.post(CREATE, json=Z_IMAGE, headers=headers)).json()["data"]["taskId"]
        assert theirs_id not in ids


async def test_a_refused_idempotent_create_leaves_its_key_free(settings):
    async with Server(settings) as server:
        poor = await server.runtime.store.accounts.create_key("poor", credits=0)
        async with server.client(poor.key) as client:
            headers = {"Idempotency-Key": "k"}
            assert (await client.post(CREATE, json=Z_IMAGE, headers=headers)).json()["code"] == 402
            await server.runtime.store.accounts.add_credits("poor", 5)
            assert (await client.post(CREATE, json=Z_IMAGE, headers=headers)).json()["code"] == 200


# --- the event stream --------------------------------------------------------------------------------


async def sse_events(client: httpx.AsyncClient, task_id: str) -> AsyncIterator[tuple[str, dict]]:
    async with client.stream("GET", "/api/v1/jobs/stream", params={"taskId": task_id}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event:
                yield event, json.loads(line.split(":", 1)[1])
                event = None


async def test_the_stream_works_across_processes(settings, postgres_url, tmp_path):
    """Created on replica A, streamed from replica B, run by a worker in a third runtime: all on PostgreSQL."""
    common = {"database_url": postgres_url}
    async with Server(settings, **common) as a, Server(settings, **common) as b:
        async with a.client() as client_a:
            task_id = (await client_a.post(CREATE, json=Z_IMAGE)).json()["data"]["taskId"]
        events: list[tuple[str, dict]] = []

        async def follow() -> None:
            async with b.client(a.key) as client_b:
                async for item in sse_events(client_b, task_id):
                    events.append(item)

        following = asyncio.create_task(follow())
        for _ in range(100):  # the first event (waiting) is out: the stream is open
            if events:
                break
            await asyncio.sleep(0.05)
        worker = await Runtime.open(settings.model_copy(update=common), roles=[Role.WORKER], migrate=False)
        try:
            await asyncio.wait_for(following, 20)
        finally:
            await worker.close()
    names = [name for name, _ in events]
    assert names[0] == "state" and events[0][1]["state"] == "waiting" and events[0][1]["queuePosition"] == 0
    assert names[-1] == "done" and events[-1][1]["state"] == "success" and events[-1][1]["taskId"] == task_id
    assert set(names) <= {"state", "progress", "done"} and names.count("done") == 1
    assert json.loads(events[-1][1]["resultJson"])["resultUrls"]


async def test_the_stream_of_another_accounts_task_is_null(live_server):
    async with live_server.client() as client:
        task_id = (await client.post(CREATE, json=Z_IMAGE)).json()["data"]["taskId"]
    stranger = await live_server.runtime.store.accounts.create_key("stranger", credits=0)
    async with live_server.client(key=stranger.key) as client:
        reply = await client.get("/api/v1/jobs/stream", params={"taskId": task_id})
    assert reply.json() == {"code": 422, "msg": "recordInfo is null", "data": None}


@pytest.mark.parametrize("state", [TaskState.SUCCESS])
async def test_a_finished_tasks_stream_is_one_done_event(live_server, state):
    async with live_server.client() as client:
        task_id = (await client.post(CREATE, json=Z_IMAGE)).json()["data"]["taskId"]
        await live_server.wait_terminal(task_id)
        events = [item async for item in sse_events(client, task_id)]
    assert [name for name, _ in events] == ["done"] and events[0][1]["state"] == state
