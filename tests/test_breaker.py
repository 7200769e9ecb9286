"""Circuit breakers: the state machine on its own (a settable clock), the routing-file options, and a
live server whose route starts at a dead provider: after N transient failures the next tasks skip it
(the provider sees no more requests), succeed on the sandbox, and `safelight models routes` and the
metrics show the breaker open; after the cool-down one trial goes through. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from safelight.cli import app
from safelight.routing import RoutingError, load_routing
from safelight.worker.breaker import Breaker, BreakerState, Permit
from tests.fake_kie import CREATE, FakeKie
from tests.helpers import free_port, start_server

KEY = "kie-sk-breaker-test-0123456789"
DOWN = (503, {"code": 503, "msg": "upstream unavailable"})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(failures: int = 3, cooldown: float = 30.0) -> tuple[Breaker, Clock, list[BreakerState]]:
    clock, changes = Clock(), []
    made = Breaker("dead", failures, cooldown, clock=clock, on_change=lambda b: changes.append(b.state))
    return made, clock, changes


# --- the state machine ---------------------------------------------------------------------------


def test_opens_after_n_transient_failures_in_a_row_and_skips_until_the_cool_down(caplog):
    caplog.set_level(logging.INFO, logger="safelight.worker.breaker")
    b, clock, changes = breaker(failures=3, cooldown=30)
    for _ in range(2):
        assert b.allow() is Permit.CALL
        b.failure("HTTP 503")
    b.success()  # a success in between: the count starts again
    for n in range(3):
        assert b.allow() is Permit.CALL
        b.failure(f"HTTP 503 number {n}")
    assert (b.state, changes) == (BreakerState.OPEN, [BreakerState.OPEN])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "backend dead opened after 3 transient failures in a row (last: HTTP 503 number 2)" in warnings[0].message
    clock.now += 29.9
    assert b.allow() is Permit.SKIP
    assert "open after 3 transient failures in a row (last: HTTP 503 number 2)" in b.skip_reason()
    view = b.view().to_json()
    assert view["state"] == "open" and view["failures"] == 3 and view["reason"] == "HTTP 503 number 2"
    assert isinstance(view["retryAt"], int)


def test_after_the_cool_down_one_trial_goes_through_and_its_success_closes(caplog):
    caplog.set_level(logging.INFO, logger="safelight.worker.breaker")
    b, clock, changes = breaker(failures=1, cooldown=10)
    b.failure("timed out")
    clock.now += 10
    assert b.allow() is Permit.TRIAL
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow() is Permit.SKIP and b.allow() is Permit.SKIP  # only one trial at a time
    assert "a trial task is running" in b.skip_reason()
    b.success()
    b.release(Permit.TRIAL)
    assert b.state is BreakerState.CLOSED and b.failures == 0
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    assert any(r.levelno == logging.INFO and "backend dead closed" in r.message for r in caplog.records)
    assert b.allow() is Permit.CALL and b.view().to_json() == {"state": "closed", "failures": 0, "reason": "",
                                                               "retryAt": None}


def test_a_failed_trial_reopens_for_another_cool_down():
    b, clock, changes = breaker(failures=2, cooldown=10)
    b.failure("x")
    b.failure("x")
    clock.now += 10
    assert b.allow() is Permit.TRIAL
    b.failure("still down")
    b.release(Permit.TRIAL)
    assert b.state is BreakerState.OPEN and changes[-1] is BreakerState.OPEN
    clock.now += 9
    assert b.allow() is Permit.SKIP
    clock.now += 1
    assert b.allow() is Permit.TRIAL


def test_permanent_failures_do_not_count_and_a_trial_that_settles_nothing_frees_the_slot():
    b, clock, _ = breaker(failures=2, cooldown=10)
    b.failure("x")
    for _ in range(5):  # moderation, bad input: the worker reports neither success nor failure
        permit = b.allow()
        b.release(permit)
    assert b.state is BreakerState.CLOSED and b.failures == 1
    b.failure("x")
    clock.now += 10
    trial = b.allow()
    assert trial is Permit.TRIAL and b.allow() is Permit.SKIP
    b.release(trial)  # the trial task ended permanently (or was cancelled): the next task is the trial
    assert b.state is BreakerState.HALF_OPEN and b.allow() is Permit.TRIAL


def test_zero_failures_disables_the_breaker():
    b, _, changes = breaker(failures=0)
    for _ in range(50):
        assert b.allow() is Permit.CALL
        b.failure("x")
    assert b.state is BreakerState.CLOSED and changes == []


@pytest.mark.parametrize(("line", "problem"), [
    ("breaker_failures = -1", "backends.dead.breaker_failures"),
    ("breaker_cooldown_seconds = 0", "backends.dead.breaker_cooldown_seconds"),
    ('breaker_failures = "many"', "backends.dead.breaker_failures"),
])
def test_breaker_options_are_checked_in_the_routing_file(tmp_path, line, problem):
    path = tmp_path / "safelight.toml"
    path.write_text(f'[backends.dead]\ntype = "kie"\n{line}\n')
    with pytest.raises(RoutingError, match=problem):
        load_routing(path)


def test_breaker_options_default_to_five_failures_and_thirty_seconds(tmp_path):
    path = tmp_path / "safelight.toml"
    path.write_text('[backends.a]\ntype = "kie"\n\n[backends.b]\ntype = "kie"\nbreaker_failures = 0\n'
                    'breaker_cooldown_seconds = 2.5\n')
    backends = load_routing(path).backends
    assert (backends["a"].breaker_failures, backends["a"].breaker_cooldown_seconds) == (5, 30.0)
    assert (backends["b"].breaker_failures, backends["b"].breaker_cooldown_seconds) == (0, 2.5)
    assert "breaker_failures" not in backends["b"].options  # not passed on to the kie type's options


# --- a live server: [dead provider, sandbox] ------------------------------------------------------


async def serve(settings, tmp_path, monkeypatch, kie: FakeKie, *, route: str, failures: int, cooldown: float,
                database_url: str | None = None):
    monkeypatch.setenv("KIE_API_KEY", KEY)
    config = tmp_path / "safelight.toml"
    config.write_text(f"""
[backends.dead]
type = "kie"
base_url = "{kie.base_url}"
retries = 0
breaker_failures = {failures}
breaker_cooldown_seconds = {cooldown}
poll_interval_seconds = 0.01

[models."z-image"]
route = {route}
""")
    monkeypatch.setenv("SAFELIGHT_CONFIG", str(config))
    port = free_port()
    update: dict[str, Any] = {"routing_file": str(config), "port": port, "public_url": f"http://127.0.0.1:{port}"}
    if database_url:
        update["database_url"] = database_url
        monkeypatch.setenv("SAFELIGHT_DATABASE_URL", database_url)
    else:
        monkeypatch.delenv("SAFELIGHT_DATABASE_URL", raising=False)
    monkeypatch.setenv("SAFELIGHT_DATA_DIR", str(settings.data_dir))
    settings = settings.model_copy(update=update)
    server, task = await start_server(settings)
    runtime = server.config.app.state.runtime
    key = (await runtime.store.accounts.create_key("breaker", credits=1000)).key
    client = httpx.AsyncClient(base_url=settings.public_url, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    return server, task, runtime, client


async def run_task(client: httpx.AsyncClient) -> dict[str, Any]:
    created = (await client.post("/api/v1/jobs/createTask",
                                 json={"model": "z-image", "input": {"prompt": "a fox", "aspect_ratio": "1:1"}})).json()
    assert created["code"] == 200, created
    for _ in range(500):
        record = (await client.get("/api/v1/jobs/recordInfo",
                                   params={"taskId": created["data"]["taskId"]})).json()["data"]
        if record["state"] in ("success", "fail"):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(record)


async def attempts_of(runtime, record) -> list[tuple[str, str]]:
    row = await runtime.store.tasks.get(record["taskId"])
    return [(a["backend"], a["outcome"]) for a in json.loads(row["backend_attempts"])]


async def published(runtime, state: str) -> dict[str, Any]:
    """The dead backend's breaker as this server's worker published it, once it reads `state`."""
    for _ in range(200):
        (worker,) = await runtime.store.workers.live(30_000)
        if worker.breakers.get("dead", {}).get("state") == state:
            return worker.breakers["dead"]
        await asyncio.sleep(0.02)
    raise AssertionError(f"the published breaker never became {state}: {worker.breakers}")


def routes_output() -> str:
    result = CliRunner().invoke(app, ["models", "routes"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


async def test_a_dead_provider_is_skipped_during_the_cool_down_then_tried_once(settings, tmp_path, monkeypatch,
                                                                              database_url):
    cooldown = 3.0
    async with FakeKie(api_key=KEY) as kie:
        kie.inject(CREATE, *[DOWN] * 50)
        server, task, runtime, client = await serve(settings, tmp_path, monkeypatch, kie, route='["dead", "sandbox"]',
                                                    failures=3, cooldown=cooldown, database_url=database_url)
        try:
            for _ in range(3):  # three transient failures in a row, each task saved by the sandbox
                record = await run_task(client)
                assert record["state"] == "success"
                assert await attempts_of(runtime, record) == [("dead", "fallback"), ("sandbox", "success")]
            assert len(kie.calls(CREATE)) == 3
            opened_at = asyncio.get_running_loop().time()

            state = await published(runtime, "open")
            assert state["failures"] == 3 and "503" in state["reason"]
            shown = await asyncio.to_thread(routes_output)
            assert "dead: open on 1 of 1 (trial in" in shown and "sandbox: closed" in shown
            metrics = (await client.get("/metrics")).text
            assert 'safelight_backend_breaker_open{backend="dead"} 1.0' in metrics

            records = await asyncio.gather(*(run_task(client) for _ in range(4)))
            assert asyncio.get_running_loop().time() - opened_at < cooldown, "the machine is too slow for this test"
            for record in records:  # skipped at once: the provider heard nothing more
                assert record["state"] == "success"
                assert await attempts_of(runtime, record) == [("dead", "skipped"), ("sandbox", "success")]
            assert len(kie.calls(CREATE)) == 3
            row = await runtime.store.tasks.get(records[0]["taskId"])
            assert "circuit breaker open after 3 transient failures" in json.loads(row["backend_attempts"])[0]["detail"]

            kie.injected[CREATE].clear()  # the provider is back
            await asyncio.sleep(max(0.0, opened_at + cooldown - asyncio.get_running_loop().time()) + 0.1)
            record = await run_task(client)  # the trial
            assert record["state"] == "success"
            assert await attempts_of(runtime, record) == [("dead", "success")]
            assert len(kie.calls(CREATE)) == 4
            await published(runtime, "closed")
            assert "dead: closed" in await asyncio.to_thread(routes_output)
            assert 'safelight_backend_breaker_open{backend="dead"} 0.0' in (await client.get("/metrics")).text
        finally:
            await client.aclose()
            server.should_exit = True
            await task


async def test_a_task_whose_whole_route_is_open_fails_at_once_refunded(settings, tmp_path, monkeypatch):
    """Nothing left to fail over to: the task fails with 503 on its first claim (refunded) rather than
    waiting, or coming back until its claims run out."""
    async with FakeKie(api_key=KEY) as kie:
        kie.inject(CREATE, *[DOWN] * 50)
        server, task, runtime, client = await serve(settings, tmp_path, monkeypatch, kie, route='["dead"]',
                                                    failures=2, cooldown=60)
        try:
            for _ in range(2):
                record = await run_task(client)
                assert (record["state"], record["failCode"]) == ("fail", "503")
                assert await attempts_of(runtime, record) == [("dead", "fail")]
            record = await run_task(client)
            assert (record["state"], record["failCode"]) == ("fail", "503")
            assert record["failMsg"] == "provider unavailable; credits refunded"
            assert await attempts_of(runtime, record) == [("dead", "skipped")]
            row = await runtime.store.tasks.get(record["taskId"])
            assert row["claims"] == 1
            assert len(kie.calls(CREATE)) == 2
            assert (await client.get("/api/v1/chat/credit")).json()["data"] == 1000  # every failure refunded
        finally:
            await client.aclose()
            server.should_exit = True
            await task
