"""The admin JSON API (/api/admin/...) on a live server: who may use it, what it shows of the queue, tasks,
failures, callbacks, accounts, keys and the server, every change it makes, and the audit row of each."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from safelight.api.auth import KEY_CACHE_TTL_SECONDS
from safelight.runtime import SERVE_NO_WORKER_ROLES, SERVE_ROLES, Runtime
from tests.helpers import free_port, serve_app, start_server

IMAGEN = {"model": "google/imagen4-fast", "input": {"prompt": "a lighthouse"}}
ZIMAGE = {"model": "z-image", "input": {"prompt": "a fox", "aspect_ratio": "1:1"}}


@dataclass
class Admin:
    base_url: str
    runtime: Runtime
    user_key: str
    account_id: int
    admin_key: str
    admin_id: int
    actor: str

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=10)

    def admin(self) -> httpx.AsyncClient:
        return self.client(self.admin_key)

    def user(self, key: str | None = None) -> httpx.AsyncClient:
        return self.client(key or self.user_key)


@contextlib.asynccontextmanager
async def admin_server(settings, tmp_path, monkeypatch, *, database_url: str | None = None, worker: bool = True,
                       **overrides: Any) -> AsyncIterator[Admin]:
    """A whole Safelight whose z-image route is one provider that cannot be reached (its tasks fail for
    real, 503 with the attempt logged); every other model runs on the sandbox. With a user key on an
    account of 1000 credits, and an admin key named ops."""
    monkeypatch.setenv("KIE_API_KEY", "kie-test-key")
    config = tmp_path / "safelight.toml"
    config.write_text(f"""
[backends.dead]
type = "kie"
base_url = "http://127.0.0.1:{free_port()}"
retries = 0

[models."z-image"]
route = ["dead"]
""")
    port = free_port()
    update: dict[str, Any] = {"routing_file": str(config), "port": port, "public_url": f"http://127.0.0.1:{port}",
                              **overrides}
    if database_url:
        update["database_url"] = database_url
    settings = settings.model_copy(update=update)
    server, task = await start_server(settings, roles=SERVE_ROLES if worker else SERVE_NO_WORKER_ROLES)
    runtime: Runtime = server.config.app.state.runtime
    try:
        user = await runtime.store.accounts.create_key("tester", credits=1000)
        admin = await runtime.store.accounts.create_admin_key("ops")
        yield Admin(settings.public_url, runtime, user.key, user.account_id, admin.key, admin.key_id,
                    f"admin key ops ({admin.prefix})")
    finally:
        server.should_exit = True
        await task


async def ok(response: httpx.Response) -> Any:
    body = response.json()
    assert response.status_code == 200 and body["code"] == 200, (response.status_code, body)
    return body["data"]


def refused(response: httpx.Response, status: int, *words: str) -> str:
    """The refusal's msg, after checking its HTTP status, its envelope code and the words it must name."""
    body = response.json()
    assert (response.status_code, body["code"], body["data"]) == (status, status, None), body
    for word in words:
        assert word in body["msg"], body["msg"]
    return str(body["msg"])


async def create(client: httpx.AsyncClient, body: dict[str, Any] = IMAGEN) -> str:
    created = (await client.post("/api/v1/jobs/createTask", json=body)).json()
    assert created["code"] == 200, created
    return str(created["data"]["taskId"])


async def all_pages(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await ok(await client.get(path, params={**params, **({"cursor": cursor} if cursor else {})}))
        items.extend(page["items"])
        cursor = page["nextCursor"]
        if cursor is None:
            return items


async def eventually(check, timeout: float = 5.0):
    """Poll `check` (an async callable) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {check.__name__}")
        await asyncio.sleep(0.05)


async def audit(client: httpx.AsyncClient, action: str | None = None) -> list[dict[str, Any]]:
    return await all_pages(client, "/api/admin/audit", **({"action": action} if action else {}))


# --- who may use it ------------------------------------------------------------------------------


ADMIN_ROUTES = [
    ("GET", "/api/admin/queue"), ("GET", "/api/admin/tasks"), ("GET", "/api/admin/tasks/0123"),
    ("GET", "/api/admin/callbacks"), ("GET", "/api/admin/accounts"), ("GET", "/api/admin/ledger"),
    ("GET", "/api/admin/keys"), ("GET", "/api/admin/server"), ("GET", "/api/admin/audit"),
    ("POST", "/api/admin/keys"), ("POST", "/api/admin/keys/1/revoke"), ("PUT", "/api/admin/keys/1/limits"),
    ("POST", "/api/admin/accounts/tester/credits"), ("POST", "/api/admin/accounts/tester/webhook-secret"),
    ("POST", "/api/admin/callbacks/msg_x/redeliver"), ("POST", "/api/admin/tasks/0123/cancel"),
    ("POST", "/api/admin/maintenance"), ("POST", "/api/admin/models"),
]


async def test_only_an_admin_key_opens_the_admin_api_and_an_admin_key_creates_no_tasks(live_server):
    runtime = live_server.runtime
    admin = await runtime.store.accounts.create_admin_key("ops")
    async with httpx.AsyncClient(base_url=live_server.base_url, timeout=10) as anonymous, \
            live_server.client() as user, live_server.client(admin.key) as operator, \
            live_server.client("sla_not-a-key") as stranger:
        for method, path in ADMIN_ROUTES:
            refused(await anonymous.request(method, path, json={}), 401, "Authorization: Bearer")
            refused(await stranger.request(method, path, json={}), 401, "not valid")
            refused(await user.request(method, path, json={}), 403,
                    "this route needs an admin key; user keys cannot administer the server")
        assert (await ok(await operator.get("/api/admin/queue")))["states"]["waiting"] == 0

        # An admin key is not a user key: kie's code 401 (HTTP 200) on createTask and every user route.
        for response in (await operator.post("/api/v1/jobs/createTask", json=IMAGEN),
                         await operator.get("/api/v1/chat/credit")):
            body = response.json()
            assert (response.status_code, body["code"]) == (200, 401), body
            assert "admin key" in body["msg"]
        assert await runtime.store.tasks.count_by_state() == {}

        # A sandbox-only server says so; the routes are in the OpenAPI document under the admin tag.
        assert (await ok(await operator.get("/api/admin/server")))["sandbox"] is True
        document = (await anonymous.get("/openapi.json")).json()
        for method, path in ADMIN_ROUTES:
            template = path.replace("0123", "{task_id}").replace("/keys/1/", "/keys/{key_id}/") \
                .replace("/accounts/tester/", "/accounts/{account}/").replace("msg_x", "{delivery_id}")
            operation = document["paths"][template][method.lower()]
            assert operation["tags"] == ["admin"], (method, template)
            reply = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
            assert set(document["components"]["schemas"][reply]["properties"]) == {"code", "msg", "data"}
            assert {"400", "401", "403"} <= set(operation["responses"]), (method, template)


# --- the queue and the task list -----------------------------------------------------------------


async def test_queue_counts_and_the_task_list_filters_pages_and_cancels(settings, tmp_path, monkeypatch,
                                                                       database_url):
    async with admin_server(settings, tmp_path, monkeypatch, database_url=database_url, worker=False) as srv:
        other = await srv.runtime.store.accounts.create_key("other", credits=100)
        async with srv.user() as user, srv.user(other.key) as other_user, srv.admin() as admin:
            first = await create(user)
            mine = [first, await create(user), await create(user), await create(user, ZIMAGE)]
            theirs = await create(other_user)

            queue = await ok(await admin.get("/api/admin/queue"))
            assert queue["states"] == {"waiting": 5, "queuing": 0, "generating": 0, "success": 0, "fail": 0}
            assert queue["unfinishedByModel"] == [
                {"model": "google/imagen4-fast", "state": "waiting", "count": 4},
                {"model": "z-image", "state": "waiting", "count": 1}]
            assert queue["oldestWaiting"]["taskId"] == first
            assert queue["oldestWaiting"]["model"] == "google/imagen4-fast"
            assert 0 <= queue["oldestWaiting"]["ageMs"] < 60_000
            assert queue["workers"] == []  # this server runs no worker
            assert queue["callbacks"] == {"pending": 0, "failed": 0}

            everything = await ok(await admin.get("/api/admin/tasks"))
            assert [item["taskId"] for item in everything["items"]] == [theirs, *reversed(mine)]  # newest first
            assert everything["nextCursor"] is None
            item = everything["items"][-1]
            assert item["account"] == "tester" and item["accountId"] == srv.account_id
            assert item["state"] == "waiting" and item["backendAttempts"] == [] and item["callBackUrl"] is None
            assert item["creditsReserved"] > 0 and item["creditsConsumed"] == 0

            by_model = await ok(await admin.get("/api/admin/tasks", params={"model": "z-image"}))
            assert [item["taskId"] for item in by_model["items"]] == [mine[3]]
            for account in ("other", str(other.account_id)):
                by_account = await ok(await admin.get("/api/admin/tasks", params={"account": account}))
                assert [item["taskId"] for item in by_account["items"]] == [theirs]
            paged = await all_pages(admin, "/api/admin/tasks", account="tester", state="waiting", limit=3)
            assert [item["taskId"] for item in paged] == list(reversed(mine))

            refused(await admin.get("/api/admin/tasks", params={"account": "nobody"}), 404, "nobody")
            refused(await admin.get("/api/admin/tasks", params={"state": "done"}), 400, "state", "waiting")
            refused(await admin.get("/api/admin/tasks", params={"limit": 201}), 400, "limit", "200")
            refused(await admin.get("/api/admin/tasks", params={"limit": 0}), 400, "limit")
            refused(await admin.get("/api/admin/tasks", params={"cursor": "bm90LWEtY3Vyc29y"}), 400, "cursor")

            # Cancel: the task fails 499 and is refunded; a finished one is a conflict, an unknown one 404.
            balance = await srv.runtime.store.accounts.balance(srv.account_id)
            cancelled = await ok(await admin.post(f"/api/admin/tasks/{first}/cancel"))
            assert (cancelled["taskId"], cancelled["state"], cancelled["failCode"]) == (first, "fail", "499")
            assert await srv.runtime.store.accounts.balance(srv.account_id) == balance + item["creditsReserved"]
            record = (await user.get("/api/v1/jobs/recordInfo", params={"taskId": first})).json()["data"]
            assert (record["state"], record["failCode"]) == ("fail", "499")
            refused(await admin.post(f"/api/admin/tasks/{first}/cancel"), 409, "already ended")
            refused(await admin.post("/api/admin/tasks/0000/cancel"), 404, "0000")
            assert (await ok(await admin.get("/api/admin/queue")))["states"]["fail"] == 1
            (entry,) = await audit(admin, "task.cancel")
            assert (entry["actor"], entry["target"]) == (srv.actor, f"task {first}")


# --- failures and callbacks ----------------------------------------------------------------------


class Receiver:
    """A loopback callback endpoint: answers `status`, but only once `answer` is set (cleared: it holds)."""

    def __init__(self) -> None:
        self.status = 200
        self.answer = asyncio.Event()
        self.answer.set()
        self.received: list[bytes] = []

    async def endpoint(self, request: Request) -> JSONResponse:
        self.received.append(await request.body())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.answer.wait(), 20)
        return JSONResponse({"ok": True}, status_code=self.status)


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    found = Receiver()
    port = free_port()
    server, task = await serve_app(Starlette(routes=[Route("/cb", found.endpoint, methods=["POST"])]), port,
                                   lifespan="off")
    try:
        yield found, f"http://127.0.0.1:{port}/cb"
    finally:
        found.answer.set()
        server.should_exit = True
        await task


async def test_a_failed_task_shows_its_fail_code_message_and_backend_attempts(settings, tmp_path, monkeypatch):
    async with admin_server(settings, tmp_path, monkeypatch) as srv, srv.user() as user, srv.admin() as admin:
        task_id = await create(user, ZIMAGE)  # routed to a provider nobody listens for
        record = await eventually(lambda: _finished(user, task_id), timeout=20)
        assert (record["state"], record["failCode"]) == ("fail", "503")

        (failed,) = (await ok(await admin.get("/api/admin/tasks", params={"state": "fail"})))["items"]
        assert failed["taskId"] == task_id and failed["failCode"] == "503"
        assert failed["failMsg"] == record["failMsg"] and failed["failMsg"]
        (attempt,) = failed["backendAttempts"]
        assert (attempt["backend"], attempt["outcome"], attempt["failCode"]) == ("dead", "fail", "503")
        assert attempt["detail"] and attempt["at"] >= failed["createTime"]

        detail = await ok(await admin.get(f"/api/admin/tasks/{task_id}"))
        assert detail["task"] == failed
        assert detail["record"] == record  # exactly what its owner sees
        assert detail["callbacks"] == []
        refused(await admin.get("/api/admin/tasks/ffff"), 404, "ffff")

        # The worker is live and says what it serves.
        (worker,) = (await ok(await admin.get("/api/admin/queue")))["workers"]
        assert "z-image" in worker["models"] and worker["inFlight"] == 0 and worker["pid"] > 0
        assert worker["lastSeen"] >= worker["startedAt"]


async def _finished(client: httpx.AsyncClient, task_id: str) -> dict[str, Any] | None:
    record = (await client.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()["data"]
    return record if record["state"] in ("success", "fail") else None


async def test_callbacks_pending_then_given_up_then_redelivered(settings, tmp_path, monkeypatch, database_url):
    async with receiver() as (endpoint, url), \
            admin_server(settings, tmp_path, monkeypatch, database_url=database_url, callback_max_attempts=1,
                         callback_timeout_seconds=10.0) as srv, srv.user() as user, srv.admin() as admin:
        endpoint.answer.clear()  # the first attempt is held: the delivery is pending meanwhile
        task_id = await create(user, {**IMAGEN, "callBackUrl": url})

        async def pending() -> list[dict[str, Any]] | None:
            items = (await ok(await admin.get("/api/admin/callbacks", params={"status": "pending"})))["items"]
            return items if items and endpoint.received else None

        (delivery,) = await eventually(pending, timeout=15)
        assert (delivery["taskId"], delivery["account"], delivery["url"]) == (task_id, "tester", url)
        assert delivery["attempts"] == 1 and delivery["log"] == [] and delivery["nextAttemptAt"] is not None
        assert (await ok(await admin.get("/api/admin/queue")))["callbacks"] == {"pending": 1, "failed": 0}

        endpoint.status = 500  # the held attempt is answered 500, and one attempt is all it had
        endpoint.answer.set()

        async def given_up() -> list[dict[str, Any]] | None:
            return (await ok(await admin.get("/api/admin/callbacks", params={"status": "failed"})))["items"]

        (failed,) = await eventually(given_up)
        assert failed["id"] == delivery["id"] and failed["nextAttemptAt"] is None and "500" in failed["lastError"]
        (attempt,) = failed["log"]
        assert (attempt["attempt"], attempt["statusCode"]) == (1, 500) and attempt["latencyMs"] >= 0
        assert (await ok(await admin.get("/api/admin/queue")))["callbacks"] == {"pending": 0, "failed": 1}
        assert (await ok(await admin.get(f"/api/admin/tasks/{task_id}")))["callbacks"] == [failed]
        assert (await ok(await admin.get("/api/admin/callbacks", params={"account": "tester"})))["items"] == [failed]
        assert (await ok(await admin.get("/api/admin/callbacks", params={"status": "delivered"})))["items"] == []

        endpoint.status = 200
        again = await ok(await admin.post(f"/api/admin/callbacks/{delivery['id']}/redeliver"))
        assert again["id"] != delivery["id"] and again["taskId"] == task_id and again["status"] == "pending"

        async def delivered() -> list[dict[str, Any]] | None:
            return (await ok(await admin.get("/api/admin/callbacks", params={"status": "delivered"})))["items"]

        (done,) = await eventually(delivered)
        assert done["id"] == again["id"] and done["deliveredAt"] is not None and done["log"][0]["statusCode"] == 200
        assert len(endpoint.received) == 2
        everything = await ok(await admin.get("/api/admin/callbacks", params={"limit": 1}))
        assert [item["id"] for item in everything["items"]] == [again["id"]] and everything["nextCursor"]

        refused(await admin.post("/api/admin/callbacks/msg_nope/redeliver"), 404, "msg_nope")
        (entry,) = await audit(admin, "callback.redeliver")
        assert (entry["actor"], entry["target"]) == (srv.actor, f"task {task_id}")
        assert entry["detail"] == {"delivery": again["id"], "replaces": delivery["id"]}


# --- accounts, the ledger and keys ---------------------------------------------------------------


async def test_accounts_ledger_credits_and_the_webhook_secret(settings, tmp_path, monkeypatch, database_url):
    async with admin_server(settings, tmp_path, monkeypatch, database_url=database_url, worker=False) as srv, \
            srv.admin() as admin:
        made = await ok(await admin.post("/api/admin/keys", json={"name": "alice", "credits": 50}))
        assert (made["account"], made["balance"], made["admin"]) == ("alice", 50, False)
        assert made["key"].startswith("sl_") and made["key"].startswith(made["prefix"]) and isinstance(made["id"], int)
        async with srv.user(made["key"]) as alice:
            task_id = await create(alice)
        accounts = await all_pages(admin, "/api/admin/accounts", limit=1)
        assert [account["name"] for account in accounts] == ["tester", "alice"]
        alice_row = accounts[1]
        assert alice_row["id"] == made["accountId"] and alice_row["keys"] == 1 and alice_row["unfinished"] == 1
        cost = 50 - alice_row["balance"]
        assert cost > 0

        ledger = await ok(await admin.get("/api/admin/ledger", params={"account": "alice"}))
        assert [(entry["kind"], entry["amount"], entry["balanceAfter"]) for entry in ledger["items"]] == [
            ("reserve", -cost, 50 - cost), ("grant", 50, 50)]
        assert ledger["items"][0]["taskId"] == task_id and ledger["items"][0]["account"] == "alice"
        grants = await ok(await admin.get("/api/admin/ledger", params={"account": "alice", "kind": "grant"}))
        assert [entry["kind"] for entry in grants["items"]] == ["grant"]
        by_task = await ok(await admin.get("/api/admin/ledger", params={"task": task_id}))
        assert [entry["kind"] for entry in by_task["items"]] == ["reserve"]
        assert len(await all_pages(admin, "/api/admin/ledger", limit=1)) == 3  # and tester's grant
        refused(await admin.get("/api/admin/ledger", params={"kind": "gift"}), 400, "kind")

        topped = await ok(await admin.post("/api/admin/accounts/alice/credits", json={"amount": 25, "note": "top-up"}))
        assert topped == {"account": "alice", "balance": 75 - cost}
        taken = await ok(await admin.post(f"/api/admin/accounts/{made['accountId']}/credits", json={"amount": -5}))
        assert taken == {"account": "alice", "balance": 70 - cost}
        newest = (await ok(await admin.get("/api/admin/ledger", params={"account": "alice", "limit": 2})))["items"]
        assert [(entry["kind"], entry["amount"]) for entry in newest] == [("adjust", -5), ("grant", 25)]
        assert newest[1]["note"] == "top-up"
        refused(await admin.post("/api/admin/accounts/alice/credits", json={"amount": -1000}), 409, "balance")
        refused(await admin.post("/api/admin/accounts/alice/credits", json={"amount": 0}), 400, "amount")
        refused(await admin.post("/api/admin/accounts/alice/credits", json={"amount": "5"}), 400, "amount")
        refused(await admin.post("/api/admin/accounts/alice/credits", json={"amount": 5, "extra": 1}), 400, "extra")
        refused(await admin.post("/api/admin/accounts/alice/credits", content=b"{"), 400, "JSON")
        refused(await admin.post("/api/admin/accounts/nobody/credits", json={"amount": 5}), 404, "nobody")
        assert await srv.runtime.store.accounts.balance(made["accountId"]) == 70 - cost

        before = await srv.runtime.store.accounts.webhook_key("alice")
        rotated = await ok(await admin.post("/api/admin/accounts/alice/webhook-secret"))
        assert rotated["account"] == "alice" and rotated["webhookSecret"].startswith("whsec_")
        assert rotated["webhookSecret"] != before
        assert rotated["webhookSecret"] == await srv.runtime.store.accounts.webhook_key("alice")
        refused(await admin.post("/api/admin/accounts/nobody/webhook-secret"), 404, "nobody")

        entries = await audit(admin)
        assert [entry["action"] for entry in entries] == [
            "webhook_secret.rotate", "credits.add", "credits.add", "key.create"]
        assert {entry["actor"] for entry in entries} == {srv.actor}
        assert rotated["webhookSecret"] not in str(entries)  # the secret is never logged
        assert entries[1]["detail"]["amount"] == -5 and entries[2]["detail"]["amount"] == 25


async def test_keys_create_limit_and_revoke(settings, tmp_path, monkeypatch):
    async with admin_server(settings, tmp_path, monkeypatch, worker=False) as srv, srv.admin() as admin:
        made = await ok(await admin.post("/api/admin/keys", json={"name": "bob", "account": "team", "credits": 100}))
        assert (made["account"], made["balance"]) == ("team", 100)
        async with srv.user(made["key"]) as bob:
            await create(bob)
            (key,) = (await ok(await admin.get("/api/admin/keys", params={"account": "team"})))["items"]
            assert (key["id"], key["name"], key["account"], key["admin"]) == (made["id"], "bob", "team", False)
            assert key["limits"] == {"hour": None, "day": None, "total": None} and key["allowedIps"] is None
            spent = key["usage"]["hour"]
            assert spent > 0 and key["usage"] == {"hour": spent, "day": spent, "total": spent}

            # A cap the next task would pass: kie's code 433, nothing created or charged.
            limits = {"hour": spent, "day": None, "total": None, "allowedIps": None}
            capped = await ok(await admin.put(f"/api/admin/keys/{made['id']}/limits", json=limits))
            assert capped["limits"] == {"hour": spent, "day": None, "total": None}

            await asyncio.sleep(KEY_CACHE_TTL_SECONDS)  # until then this process may use the key as it was
            body = (await bob.post("/api/v1/jobs/createTask", json=IMAGEN)).json()
            assert body["code"] == 433 and f"at most {spent} credits per hour" in body["msg"], body
            assert (await ok(await admin.get("/api/admin/keys", params={"account": "team"})))["items"][0][
                "usage"]["total"] == spent

            # An allow-list without this address: code 401 naming it; with it, the key works again.
            outside = {"hour": None, "day": None, "total": None, "allowedIps": ["10.0.0.0/8", "2001:db8::/32"]}
            fenced = await ok(await admin.put(f"/api/admin/keys/{made['id']}/limits", json=outside))
            assert fenced["allowedIps"] == ["10.0.0.0/8", "2001:db8::/32"] and fenced["limits"]["hour"] is None

            await asyncio.sleep(KEY_CACHE_TTL_SECONDS)
            body = (await bob.post("/api/v1/jobs/createTask", json=IMAGEN)).json()
            assert body["code"] == 401 and "127.0.0.1" in body["msg"], body
            inside = {**outside, "allowedIps": ["127.0.0.1"]}
            assert (await ok(await admin.put(f"/api/admin/keys/{made['id']}/limits", json=inside)))["allowedIps"] == [
                "127.0.0.1/32"]

            async def let_in() -> bool:
                return (await bob.post("/api/v1/jobs/createTask", json=IMAGEN)).json()["code"] == 200

            await eventually(let_in)

            url = f"/api/admin/keys/{made['id']}/limits"
            refused(await admin.put(url, json={"hour": 5}), 400, "day", "required")
            refused(await admin.put(url, json={**inside, "hour": 0}), 400, "hour", "at least 1")
            refused(await admin.put(url, json={**inside, "allowedIps": ["10.0.0.1/8"]}), 400, "host bits",
                    "10.0.0.0/8")
            refused(await admin.put(url, json={**inside, "allowedIps": ["example.com"]}), 400, "allowedIps",
                    "example.com")
            refused(await admin.put(url, json={**inside, "allowedIps": []}), 400, "allowedIps")
            refused(await admin.put(url, json={**inside, "ips": None}), 400, "ips")
            refused(await admin.put("/api/admin/keys/9999/limits", json=inside), 404, "9999")
            refused(await admin.put(f"/api/admin/keys/admin:{srv.admin_id}/limits", json=inside), 400, "admin key")

            # Revoking: the key gets 401 within the key cache's lifetime; a second revoke changes nothing.
            revoked = await ok(await admin.post(f"/api/admin/keys/{made['id']}/revoke"))
            assert revoked["revokedAt"] is not None

            await asyncio.sleep(KEY_CACHE_TTL_SECONDS)
            body = (await bob.post("/api/v1/jobs/createTask", json=IMAGEN)).json()
            assert body["code"] == 401 and "revoked" in body["msg"], body
            assert await ok(await admin.post(f"/api/admin/keys/{made['id']}/revoke")) == revoked
        refused(await admin.post("/api/admin/keys/9999/revoke"), 404, "9999")
        refused(await admin.post("/api/admin/keys/nine/revoke"), 400, "admin:<n>")

        # Admin keys: made here, listed after the user keys, revoked by another admin, never by themselves.
        second = await ok(await admin.post("/api/admin/keys", json={"name": "ops2", "admin": True}))
        assert second["id"] == f"admin:{srv.admin_id + 1}" and second["key"].startswith("sla_")
        assert (second["account"], second["accountId"], second["balance"], second["admin"]) == (None, None, None, True)
        refused(await admin.post("/api/admin/keys", json={"name": "x", "admin": True, "credits": 5}), 400, "admin key")
        refused(await admin.post("/api/admin/keys", json={"name": ""}), 400, "name")
        refused(await admin.post("/api/admin/keys", json={"name": "x", "admin": "yes"}), 400, "admin")
        keys = await all_pages(admin, "/api/admin/keys", limit=1)
        assert [key["id"] for key in keys] == [1, made["id"], f"admin:{srv.admin_id}", second["id"]]
        assert all("limits" not in key and "account" not in key for key in keys[2:])
        async with srv.client(second["key"]) as ops2:
            assert (await ok(await ops2.get("/api/admin/server")))["sandbox"] is False
            refused(await ops2.post(f"/api/admin/keys/{second['id']}/revoke"), 409, "key it is using")
            assert (await ok(await ops2.post(f"/api/admin/keys/admin:{srv.admin_id}/revoke")))["revokedAt"]

            async def admin_locked_out() -> bool:
                return (await admin.get("/api/admin/queue")).status_code == 401

            await eventually(admin_locked_out, timeout=3)
            entries = await audit(ops2)
        assert [(entry["action"], entry["target"]) for entry in entries] == [
            ("key.revoke", f"admin:{srv.admin_id}"), ("key.create", second["id"]),
            ("key.revoke", f"key {made['id']}"), ("key.limits", f"key {made['id']}"),
            ("key.limits", f"key {made['id']}"), ("key.limits", f"key {made['id']}"),
            ("key.create", f"key {made['id']}")]
        assert entries[0]["actor"] == f"admin key ops2 ({second['prefix']})"
        assert {entry["actor"] for entry in entries[1:]} == {srv.actor}
        assert entries[3]["detail"]["allowedIps"] == ["127.0.0.1/32"]


# --- the server: maintenance, models -------------------------------------------------------------


async def test_server_maintenance_and_models(settings, tmp_path, monkeypatch):
    async with admin_server(settings, tmp_path, monkeypatch, worker=False) as srv, srv.admin() as admin, \
            srv.user() as user:
        shown = await ok(await admin.get("/api/admin/server"))
        assert shown["maintenance"] is False and shown["sandbox"] is False and shown["passThrough"] is None
        models = {model["id"]: model for model in shown["models"]}
        assert models["z-image"] == {"id": "z-image", "title": models["z-image"]["title"], "enabled": True,
                                     "route": ["dead"]}
        assert models["google/imagen4-fast"]["route"] == ["sandbox"]
        assert {"name": "dead", "type": "kie"} in shown["backends"]

        assert await ok(await admin.post("/api/admin/maintenance", json={"on": True})) == {"maintenance": True}
        body = (await user.post("/api/v1/jobs/createTask", json=IMAGEN)).json()
        assert body["code"] == 455, body
        assert (await ok(await admin.get("/api/admin/server")))["maintenance"] is True
        assert await ok(await admin.post("/api/admin/maintenance", json={"on": False})) == {"maintenance": False}
        await create(user)
        refused(await admin.post("/api/admin/maintenance", json={"on": "off"}), 400, "on")
        refused(await admin.post("/api/admin/maintenance", json={}), 400, "on", "required")

        assert await ok(await admin.post("/api/admin/models", json={"model": "z-image", "enabled": False})) == {
            "id": "z-image", "enabled": False}
        body = (await user.post("/api/v1/jobs/createTask", json=ZIMAGE)).json()
        assert body["code"] == 505 and "disabled" in body["msg"], body
        shown = await ok(await admin.get("/api/admin/server"))
        assert {model["id"]: model["enabled"] for model in shown["models"]}["z-image"] is False
        await ok(await admin.post("/api/admin/models", json={"model": "z-image", "enabled": True}))
        await create(user, ZIMAGE)
        refused(await admin.post("/api/admin/models", json={"model": "dall-e", "enabled": True}), 404, "dall-e")

        entries = await audit(admin)
        assert [(entry["action"], entry["target"]) for entry in entries] == [
            ("model.enable", "model z-image"), ("model.disable", "model z-image"),
            ("maintenance.off", "server"), ("maintenance.on", "server")]
        assert {entry["actor"] for entry in entries} == {srv.actor}
        only = await ok(await admin.get("/api/admin/audit", params={"action": "maintenance.on", "limit": 5}))
        assert [entry["action"] for entry in only["items"]] == ["maintenance.on"] and only["nextCursor"] is None
        assert [entry["id"] for entry in await all_pages(admin, "/api/admin/audit", limit=1)] == [
            entry["id"] for entry in entries]

