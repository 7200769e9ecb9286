"""Callbacks against real HTTP receivers on loopback: signed, retried, logged, surviving restarts."""

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from safelight.client import verify_callback
from tests.helpers import free_port, serve_app, start_server


class Receiver:
    """A callback endpoint whose answers the test scripts: each request pops the next behaviour."""

    def __init__(self, behaviours=()):
        self.behaviours = list(behaviours)
        self.received: list[tuple[dict, bytes]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def endpoint(self, request):
        body = await request.body()
        self.received.append((dict(request.headers), body))
        self.arrived.set()
        behaviour = self.behaviours.pop(0) if self.behaviours else 200
        if behaviour == "hang":
            # Hold the connection until the test lets go (or far past the sender's timeout).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), 30)
            behaviour = 200
        if behaviour == "redirect":
            return Response(status_code=302, headers={"Location": "http://169.254.169.254/latest/meta-data"})
        return JSONResponse({"code": 200, "msg": "success"}, status_code=behaviour)

    def app(self):
        return Starlette(routes=[Route("/cb", self.endpoint, methods=["POST"])])

    async def wait_for(self, count, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} callbacks, got {len(self.received)}")
            await asyncio.sleep(0.02)


@pytest.fixture
def fast_retries(settings):
    return settings.model_copy(update={"callback_retry_base_seconds": 0.05, "callback_retry_cap_seconds": 0.2,
                                       "callback_timeout_seconds": 1.0})


@contextlib.asynccontextmanager
async def hooked(receiver, settings, account):
    """A receiver and a Safelight server, with an account; yields what the tests use, stops both after."""
    receiver_port = free_port()
    recv_server, recv_task = await serve_app(receiver.app(), receiver_port, lifespan="off")
    settings, server, task = await run_server(settings)
    try:
        runtime = server.config.app.state.runtime
        created = await runtime.store.accounts.create_key(account, credits=100)
        yield settings, runtime, created, f"http://127.0.0.1:{receiver_port}/cb"
    finally:
        receiver.release.set()
        await stop(server, task)
        await stop(recv_server, recv_task)


async def run_server(settings):
    port = free_port()
    settings = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}"})
    server, task = await start_server(settings)
    return settings, server, task


async def stop(server, task):
    server.should_exit = True
    await task


async def create_task(base_url, key, callback_url, body=None):
    body = body or {"model": "google/imagen4-fast", "callBackUrl": callback_url, "input": {"prompt": "callback"}}
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        return (await client.post("/api/v1/jobs/createTask", json=body)).json()["data"]["taskId"]


async def delivery_log(base_url, key, task_id):
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as client:
        return (await client.get("/api/v1/jobs/callbacks", params={"taskId": task_id})).json()["data"]


async def wait_delivered(base_url, key, task_id, status="delivered", timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        deliveries = await delivery_log(base_url, key, task_id)
        if deliveries and deliveries[-1]["status"] == status:
            return deliveries
        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery not {status}: {deliveries}")


def kie_signature(secret: str, task_id: str, timestamp: str) -> str:
    # Written from kie's documentation, independently of the server's signing code.
    return base64.b64encode(hmac.new(secret.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
                            .digest()).decode()


def standard_signature(secret: str, webhook_id: str, timestamp: str, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    return "v1," + base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body,
                                             hashlib.sha256).digest()).decode()


async def test_success_callback_is_signed_both_ways_and_carries_the_record(fast_retries):
    receiver = Receiver()
    async with hooked(receiver, fast_retries, "hooks") as (settings, runtime, created, callback_url):
        secret = await runtime.store.accounts.webhook_key("hooks")
        assert secret.startswith("whsec_")
        task_id = await create_task(settings.public_url, created.key, callback_url)
        await receiver.wait_for(1)
        headers, body = receiver.received[0]
        payload = json.loads(body)
        assert payload["code"] == 200 and payload["msg"] == "Playground task completed successfully."
        data = payload["data"]
        assert data["taskId"] == task_id and data["state"] == "success" and data["creditsConsumed"] == 4
        assert json.loads(data["param"])["callBackUrl"] == callback_url
        assert json.loads(data["resultJson"])["resultUrls"][0].startswith(settings.public_url)
        assert isinstance(data["costTime"], int) and data["remainedCredits"] == 96
        timestamp = headers["x-webhook-timestamp"]
        assert abs(int(timestamp) - time.time()) < 30
        assert hmac.compare_digest(headers["x-webhook-signature"], kie_signature(secret, task_id, timestamp))
        assert headers["webhook-signature"] == standard_signature(secret, headers["webhook-id"],
                                                                  headers["webhook-timestamp"], body)
        assert verify_callback(headers, body, secret).task_id == task_id  # the SDK agrees
        deliveries = await wait_delivered(settings.public_url, created.key, task_id)
        assert deliveries[0]["webhookId"] == headers["webhook-id"]
        assert deliveries[0]["log"][0]["statusCode"] == 200


async def test_failure_callback_and_receiver_that_answers_500_then_200(fast_retries, image_server):
    receiver = Receiver([500, 503, 200])
    async with hooked(receiver, fast_retries, "flaky") as (settings, runtime, created, callback_url):
        body = {"model": "flux-2/pro-image-to-image", "callBackUrl": callback_url,
                "input": {"input_urls": [f"{image_server}/text.png"], "prompt": "will fail", "aspect_ratio": "1:1",
                          "resolution": "1K"}}
        task_id = await create_task(settings.public_url, created.key, None, body)
        deliveries = await wait_delivered(settings.public_url, created.key, task_id)
        assert [a["statusCode"] for a in deliveries[0]["log"]] == [500, 503, 200]
        ids = {headers["webhook-id"] for headers, _ in receiver.received}
        assert len(ids) == 1  # stable across retries
        payload = json.loads(receiver.received[-1][1])
        assert payload["code"] == 501 and payload["msg"] == "Playground task failed."
        assert payload["data"]["state"] == "fail" and payload["data"]["failCode"] == "400"
        assert payload["data"]["creditsConsumed"] == 0 and payload["data"]["resultJson"] is None


async def test_receiver_down_then_up_and_restart_in_the_middle_of_retries(fast_retries):
    receiver_port = free_port()  # nothing listens yet
    retrying = fast_retries.model_copy(update={"callback_retry_base_seconds": 0.1, "callback_retry_cap_seconds": 0.3})
    settings, server, task = await run_server(retrying)
    runtime = server.config.app.state.runtime
    created = await runtime.store.accounts.create_key("restart", credits=100)
    task_id = await create_task(settings.public_url, created.key, f"http://127.0.0.1:{receiver_port}/cb")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        deliveries = await delivery_log(settings.public_url, created.key, task_id)
        if deliveries and len(deliveries[0]["log"]) >= 2:
            break
        await asyncio.sleep(0.05)
    assert deliveries[0]["status"] == "pending" and "connect" in deliveries[0]["log"][0]["error"].lower()
    await stop(server, task)  # the server goes away mid-retries

    receiver = Receiver()
    recv_server, recv_task = await serve_app(receiver.app(), receiver_port, lifespan="off")
    # Same data directory, new process state: the outbox row is still owed.
    server, task = await start_server(settings)
    try:
        deliveries = await wait_delivered(settings.public_url, created.key, task_id)
        assert len(receiver.received) == 1
        assert receiver.received[0][0]["webhook-id"] == deliveries[0]["webhookId"]
        assert deliveries[0]["log"][-1]["statusCode"] == 200 and len(deliveries[0]["log"]) >= 3
    finally:
        await stop(server, task)
        await stop(recv_server, recv_task)


async def test_a_hanging_receiver_times_out_without_holding_the_worker(fast_retries):
    receiver = Receiver(["hang", 200])
    # A long callback timeout, so "the worker was not held" has a wide margin on a loaded machine.
    slow_timeout = fast_retries.model_copy(update={"callback_timeout_seconds": 5.0})
    async with hooked(receiver, slow_timeout, "hang") as (settings, runtime, created, callback_url):
        hook = callback_url
        first = await create_task(settings.public_url, created.key, hook)
        await receiver.wait_for(1)
        # While the receiver hangs, the worker keeps finishing tasks.
        started = time.monotonic()
        second = await create_task(settings.public_url, created.key, None,
                                   {"model": "z-image", "input": {"prompt": "unblocked", "aspect_ratio": "1:1"}})
        while (await runtime.store.tasks.get(second))["state"] != "success":  # noqa: ASYNC110 - polling the store
            await asyncio.sleep(0.01)
        assert time.monotonic() - started < 4.0  # the receiver hangs for 5 s
        deliveries = await wait_delivered(settings.public_url, created.key, first, timeout=30.0)
        first_try, second_try = deliveries[0]["log"][:2]
        assert "did not complete within" in first_try["error"] and second_try["statusCode"] == 200


async def test_redirects_are_not_followed_and_delivery_gives_up_after_max_attempts(fast_retries):
    receiver = Receiver(["redirect", "redirect", "redirect"])
    two_attempts = fast_retries.model_copy(update={"callback_max_attempts": 2})
    async with hooked(receiver, two_attempts, "redirect") as (settings, runtime, created, callback_url):
        task_id = await create_task(settings.public_url, created.key, callback_url)
        deliveries = await wait_delivered(settings.public_url, created.key, task_id, status="failed")
        assert [a["statusCode"] for a in deliveries[0]["log"]] == [302, 302]
        assert len(receiver.received) == 2  # the redirect target was never contacted


async def test_redeliver_queues_one_more_delivery(fast_retries):
    receiver = Receiver()
    async with hooked(receiver, fast_retries, "again") as (settings, runtime, created, callback_url):
        task_id = await create_task(settings.public_url, created.key, callback_url)
        await wait_delivered(settings.public_url, created.key, task_id)
        headers = {"Authorization": f"Bearer {created.key}"}
        async with httpx.AsyncClient(base_url=settings.public_url, headers=headers) as client:
            reply = (await client.post("/api/v1/jobs/callbacks/redeliver", json={"taskId": task_id})).json()
            assert reply["code"] == 200 and reply["data"]["webhookId"].startswith("msg_")
            await receiver.wait_for(2)
            no_hook = await create_task(settings.public_url, created.key, None,
                                        {"model": "z-image", "input": {"prompt": "x", "aspect_ratio": "1:1"}})
            refused = (await client.post("/api/v1/jobs/callbacks/redeliver", json={"taskId": no_hook})).json()
            assert refused["code"] == 422 and "no callBackUrl" in refused["msg"]
            other = await runtime.store.accounts.create_key("stranger", credits=1)
            stranger = {"Authorization": f"Bearer {other.key}"}
            assert (await client.get("/api/v1/jobs/callbacks", params={"taskId": task_id},
                                     headers=stranger)).json()["msg"] == "recordInfo is null"
        deliveries = await wait_delivered(settings.public_url, created.key, task_id)
        assert len(deliveries) == 2 and deliveries[0]["webhookId"] != deliveries[1]["webhookId"]


def test_retry_policy_is_exponential_with_full_jitter_for_the_whole_window():
    from safelight.delivery import RetryPolicy

    policy = RetryPolicy(base_seconds=5, cap_seconds=3600, window_seconds=24 * 3600, max_attempts=1000)
    delays = [policy.next_attempt_at(n, 0, 0) / 1000 for n in range(1, 14) for _ in range(50)]
    assert all(0 <= d <= 3600 for d in delays)
    assert max(policy.next_attempt_at(1, 0, 0) for _ in range(100)) <= 5000
    assert policy.next_attempt_at(5, 0, 24 * 3600 * 1000) is None  # window over
    assert RetryPolicy(max_attempts=3).next_attempt_at(3, 0, 0) is None


async def test_a_callback_to_a_refused_address_fails_at_once(fast_retries):
    strict = fast_retries.model_copy(update={"outbound_allow": ""})
    settings, server, task = await run_server(strict)
    try:
        runtime = server.config.app.state.runtime
        created = await runtime.store.accounts.create_key("ssrf", credits=100)
        # Bypass createTask's own check to reach the delivery-time guard directly.
        task_id = await runtime.store.tasks.create(account_id=created.account_id, model="google/imagen4-fast",
                                                   param=json.dumps({"model": "google/imagen4-fast",
                                                                     "input": {"prompt": "x"}}),
                                                   callback_url="http://169.254.169.254/hook", num_images=1, cost=4)
        deliveries = await wait_delivered(settings.public_url, created.key, task_id, status="failed")
        assert len(deliveries[0]["log"]) == 1 and deliveries[0]["log"][0]["error"].startswith("refused:")
    finally:
        await stop(server, task)


async def test_one_accounts_hanging_receivers_do_not_delay_anothers_callbacks(settings, database_url):
    """25 hanging receivers of account A, 16 delivery slots: B's callback still arrives at once, because
    one account holds at most `callback_per_account` slots and accounts take turns."""
    hanging, prompt = Receiver(["hang"] * 100), Receiver()
    hang_port, fast_port = free_port(), free_port()
    servers = [await serve_app(hanging.app(), hang_port, lifespan="off"),
               await serve_app(prompt.app(), fast_port, lifespan="off")]
    slow = settings.model_copy(update={"database_url": database_url, "callback_timeout_seconds": 10.0})
    settings, server, task = await run_server(slow)
    try:
        runtime = server.config.app.state.runtime
        a = await runtime.store.accounts.create_key("tenant-a", credits=100)
        b = await runtime.store.accounts.create_key("tenant-b", credits=100)
        for _ in range(25):
            await create_task(settings.public_url, a.key, f"http://127.0.0.1:{hang_port}/cb")
        await hanging.wait_for(settings.callback_per_account)
        await asyncio.sleep(0.3)  # A's deliveries have taken every slot they may
        assert len(hanging.received) == settings.callback_per_account

        task_id = await create_task(settings.public_url, b.key, f"http://127.0.0.1:{fast_port}/cb")
        row = await wait_finished(runtime, task_id)
        await prompt.wait_for(1, timeout=5.0)
        delivered = (await delivery_log(settings.public_url, b.key, task_id))[0]["deliveredTime"]
        assert delivered is not None and delivered - row["complete_time"] < 1000  # ms after B's task ended
    finally:
        hanging.release.set()
        await stop(server, task)
        for receiver_server, receiver_task in servers:
            await stop(receiver_server, receiver_task)


async def wait_finished(runtime, task_id, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = await runtime.store.tasks.get(task_id)
        if row["state"] in ("success", "fail"):
            return row
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} did not finish")
