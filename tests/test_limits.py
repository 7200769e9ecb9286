"""Bounded queues and rate limits: caps on unfinished tasks, the per-key limit across replicas (issue 11, 5)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from safelight.kie import TaskState
from tests.helpers import free_port, start_server

CREATE = "/api/v1/jobs/createTask"
BODY = {"model": "z-image", "input": {"prompt": "queued", "aspect_ratio": "1:1"}}


async def api_only(settings, **caps):
    """A server without a worker, so tasks stay unfinished; returns (server, task, runtime, base_url)."""
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}", **caps})
    server, task = await start_server(own, roles=())
    return server, task, server.config.app.state.runtime, own.public_url


async def test_an_account_over_its_cap_gets_429_and_nothing_is_charged(settings, database_url):
    server, serving, runtime, base = await api_only(settings, database_url=database_url, max_queued_per_account=10)
    try:
        busy = await runtime.store.accounts.create_key("busy", credits=1000)
        other = await runtime.store.accounts.create_key("other", credits=1000)
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {busy.key}"}) as client:
            answers = await asyncio.gather(*(client.post(CREATE, json=BODY) for _ in range(50)))
        codes = [answer.json()["code"] for answer in answers]
        assert codes.count(200) == 10 and codes.count(429) == 40  # exactly the cap, under 50 concurrent creates
        refused = next(answer for answer in answers if answer.json()["code"] == 429)
        assert "already has 10 unfinished tasks" in refused.json()["msg"]
        assert "SAFELIGHT_MAX_QUEUED_PER_ACCOUNT" in refused.json()["msg"]
        assert refused.status_code == 200 and int(refused.headers["retry-after"]) >= 1
        # Once found full, the account's excess is refused without a write to the store (overload stays cheap).
        from sqlalchemy import event

        writes: list[str] = []

        def count(_conn, _cursor, statement, *_args):
            writes.append(statement)

        engine = runtime.store.db.write_engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        try:
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {busy.key}"}) as client:
                again = [(await client.post(CREATE, json=BODY)).json()["code"] for _ in range(10)]
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert again == [429] * 10 and writes == []
        assert await runtime.store.accounts.balance(busy.account_id) == 1000 - 10
        assert await runtime.store.accounts.ledger_sum(busy.account_id) == 1000 - 10
        # Another account is not held back by the busy one.
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {other.key}"}) as client:
            assert (await client.post(CREATE, json=BODY)).json()["code"] == 200
        # A finished task frees its slot (seen within a second: a full account is remembered that long).
        task_id = next(answer.json()["data"]["taskId"] for answer in answers if answer.json()["code"] == 200)
        assert await runtime.store.tasks.fail(task_id, "500", "test")
        server.config.app.state.admission.forget_flags()
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {busy.key}"}) as client:
            assert (await client.post(CREATE, json=BODY)).json()["code"] == 200
            assert (await client.post(CREATE, json=BODY)).json()["code"] == 429
    finally:
        server.should_exit = True
        await serving


async def test_the_server_wide_cap(settings):
    server, serving, runtime, base = await api_only(settings, max_queued=4)
    try:
        for name in ("a", "b"):
            key = (await runtime.store.accounts.create_key(name, credits=100)).key
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
                for _ in range(2):
                    assert (await client.post(CREATE, json=BODY)).json()["code"] == 200
                    server.config.app.state.admission.forget_flags()  # the count is cached for a second
        late = (await runtime.store.accounts.create_key("late", credits=100)).key
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {late}"}) as client:
            refused = await client.post(CREATE, json=BODY)
        assert refused.json() == {"code": 429, "data": None, "msg": "Rate limit exceeded: the server's queue is full "
                                  "(4 unfinished tasks); nothing was created or charged"}
        assert "retry-after" in refused.headers
        assert (await runtime.store.tasks.count_by_state()) == {TaskState.WAITING: 4}
    finally:
        server.should_exit = True
        await serving


async def test_the_rate_limit_holds_across_api_replicas(settings, database_url):
    """Two API processes on one store admit `limit` requests between them (on SQLite, one process
    serves the API, so the count is that process's), and Retry-After is the real time left."""
    replicas = []
    for _ in range(2 if database_url.startswith("postgresql") else 1):
        port = free_port()
        own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}",
                                          "database_url": database_url, "rate_limit_per_key": 5,
                                          "rate_limit_window_seconds": 60})
        replicas.append((*(await start_server(own, roles=())), own.public_url))
    try:
        runtime = replicas[0][0].config.app.state.runtime
        key = (await runtime.store.accounts.create_key("limited", credits=100)).key
        clients = [httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"})
                   for _server, _task, base in replicas]
        try:
            answers = await asyncio.gather(*(clients[i % len(clients)].post(CREATE, json=BODY) for i in range(12)))
        finally:
            for client in clients:
                await client.aclose()
        codes = [answer.json()["code"] for answer in answers]
        assert codes.count(200) == 5 and codes.count(429) == 7
        refused = next(answer for answer in answers if answer.json()["code"] == 429)
        assert refused.json()["msg"] == "Rate limit exceeded: at most 5 requests per 60 s for this key"
        # The header is the time left in the window, not a constant (the shared window is estimated
        # from two fixed windows: between a fifth of a window and two windows).
        assert 1 <= int(refused.headers["retry-after"]) <= 121
        assert await runtime.store.accounts.balance((await runtime.store.accounts.list_keys())[0]["id"]) >= 0
    finally:
        for server, task, _base in replicas:
            server.should_exit = True
            await task


async def test_waiting_as_retry_after_says_is_enough(settings, database_url):
    port = free_port()
    own = settings.model_copy(update={"port": port, "public_url": f"http://127.0.0.1:{port}",
                                      "database_url": database_url, "rate_limit_per_key": 2,
                                      "rate_limit_window_seconds": 2})
    server, task = await start_server(own, roles=())
    try:
        key = (await server.config.app.state.runtime.store.accounts.create_key("patient", credits=100)).key
        async with httpx.AsyncClient(base_url=own.public_url, headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(10):  # until the limit refuses (the first window may roll over mid-way)
                refused = await client.post(CREATE, json=BODY)
                if refused.json()["code"] == 429:
                    break
            assert refused.json()["code"] == 429
            wait = int(refused.headers["retry-after"])
            assert 1 <= wait <= 4
            await asyncio.sleep(wait)
            assert (await client.post(CREATE, json=BODY)).json()["code"] == 200
    finally:
        server.should_exit = True
        await task


def test_retry_after_of_the_shared_window():
    from safelight.store.rate_limits import retry_after

    # 10 in the previous window, 0 now, 3 s in: 10*(1-f) + 1 <= 5 once f >= 0.6 -> 3 s more.
    assert retry_after(5, 10, 3, 10, 0) == pytest.approx(3.0)
    assert retry_after(5, 10, 3, 10, 2) == pytest.approx(5.0)  # 10*(1-f) + 3 <= 5 once f >= 0.8
    # Full in this window: not before it ends, then the current count decays as the previous one.
    assert retry_after(5, 10, 4, 0, 5) == pytest.approx(6.0 + 2.0)
