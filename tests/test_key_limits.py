"""Per-key credit caps (code 433), IP allow-lists and admin keys on the user routes, through a live server
and on both database engines; and the CLI that sets them, with its audit entries."""

from __future__ import annotations

import asyncio
import re

import pytest
from typer.testing import CliRunner

from safelight.cli import app as cli_app
from safelight.kie import TaskState
from safelight.store import KeyLimitExceeded, KeyLimits, Store
from tests.helpers import wait_state

# z-image: 1 credit an image on the default price list.
PROMPT = {"model": "z-image", "input": {"prompt": "a lighthouse", "aspect_ratio": "1:1"}}


async def test_an_hourly_cap_refuses_with_433_and_charges_nothing(live_server):
    store = live_server.runtime.store
    created = await store.accounts.create_key("capped", credits=100)
    await store.accounts.set_key_limits(created.key_id, KeyLimits(hour=3), None)
    async with live_server.client(created.key) as client:
        ids = []
        for _ in range(3):
            body = (await client.post("/api/v1/jobs/createTask", json=PROMPT)).json()
            assert body["code"] == 200, body
            ids.append(body["data"]["taskId"])
        refused = (await client.post("/api/v1/jobs/createTask", json=PROMPT)).json()
        assert refused["code"] == 433 and refused["data"] is None
        assert ("at most 3 credits per hour; it has spent 3 and this task costs 1; nothing was created or "
                "charged") in refused["msg"]
        assert await store.accounts.balance(created.account_id) == 97
    for task_id in ids:
        assert (await wait_state(live_server.runtime, task_id))["state"] == TaskState.SUCCESS
    usage = await store.accounts.key_usage([created.key_id])
    assert usage[created.key_id]["hour"] == usage[created.key_id]["total"] == 3
    # Other keys of the same account are not held to this key's cap.
    other = await store.accounts.create_key("uncapped", account="capped")
    async with live_server.client(other.key) as client:
        assert (await client.post("/api/v1/jobs/createTask", json=PROMPT)).json()["code"] == 200


async def test_the_openai_routes_answer_a_cap_as_insufficient_quota(live_server):
    store = live_server.runtime.store
    created = await store.accounts.create_key("openai-capped", credits=100)
    await store.accounts.set_key_limits(created.key_id, KeyLimits(total=1), None)
    async with live_server.client(created.key) as client:
        first = await client.post("/v1/images/generations", json={"model": "z-image", "prompt": "a fox"})
        assert first.status_code == 200, first.text
        second = await client.post("/v1/images/generations", json={"model": "z-image", "prompt": "a fox"})
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "insufficient_quota"
    assert "at most 1 credits in total" in second.json()["error"]["message"]


async def test_an_ip_allow_list_refuses_other_addresses_by_name(live_server):
    store = live_server.runtime.store
    created = await store.accounts.create_key("office", credits=10)
    await store.accounts.set_key_limits(created.key_id, KeyLimits(), ["10.0.0.0/8", "2001:db8::/32"])
    await asyncio.sleep(2.1)  # nothing cached yet for this key, but keep the test honest about the TTL
    async with live_server.client(created.key) as client:
        refused = (await client.post("/api/v1/jobs/createTask", json=PROMPT)).json()
        assert refused["code"] == 401
        assert "may not be used from 127.0.0.1" in refused["msg"]
        assert (await client.get("/api/v1/chat/credit")).json()["code"] == 401
        upload = (await client.post("/api/file-base64-upload",
                                    json={"base64Data": "aGVsbG8=", "uploadPath": "u"})).json()
        assert upload["success"] is False and upload["code"] == 401 and "127.0.0.1" in upload["msg"]
        await store.accounts.set_key_limits(created.key_id, KeyLimits(), ["127.0.0.1"])
        await asyncio.sleep(2.1)  # the key cache's lifetime
        assert (await client.post("/api/v1/jobs/createTask", json=PROMPT)).json()["code"] == 200


async def test_bad_limits_name_the_field_and_rule(live_server):
    accounts = live_server.runtime.store.accounts
    created = await accounts.create_key("bad-limits")
    with pytest.raises(ValueError, match=r"limits.day must be a whole number of credits >= 1"):
        await accounts.set_key_limits(created.key_id, KeyLimits(day=0), None)
    with pytest.raises(ValueError, match=r"allowedIps: '10.0.0.300' is not an IP address or CIDR"):
        await accounts.set_key_limits(created.key_id, KeyLimits(), ["10.0.0.300"])
    from safelight.store import NotFound
    with pytest.raises(NotFound):
        await accounts.set_key_limits(99999, KeyLimits(hour=1), None)


async def test_an_admin_key_is_not_a_user_key(live_server):
    store = live_server.runtime.store
    admin = await store.accounts.create_admin_key("ops")
    assert admin.key.startswith("sla_")
    async with live_server.client(admin.key) as client:
        refused = (await client.post("/api/v1/jobs/createTask", json=PROMPT)).json()
        assert refused["code"] == 401 and "this is an admin key" in refused["msg"]
        assert (await client.get("/api/v1/chat/credit")).json()["code"] == 401
    assert await store.accounts.admin_for(admin.key) is not None
    assert await store.accounts.grant_for(admin.key) is None
    assert await store.accounts.revoke_key(f"admin:{admin.key_id}") == 1
    assert await store.accounts.admin_for(admin.key) is None


async def test_concurrent_creates_never_pass_a_cap(database_url):
    """Creates racing on one capped key, group-committed and (PostgreSQL) across two stores as two
    replicas would be: exactly the cap's worth is admitted."""
    first, second = Store(database_url), Store(database_url)
    await first.migrate()
    try:
        created = await first.accounts.create_key("racer", credits=1000)
        await first.accounts.set_key_limits(created.key_id, KeyLimits(day=10), None)
        grant = await first.accounts.grant_for(created.key)
        assert grant is not None and grant.limits == KeyLimits(day=10)

        async def one(store: Store) -> str | Exception:
            try:
                return await store.tasks.create(account_id=created.account_id, model="z-image", param="{}",
                                                callback_url=None, num_images=1, cost=2, api_key_id=grant.key_id,
                                                key_limits=grant.limits)
            except KeyLimitExceeded as exc:
                return exc

        outcomes = await asyncio.gather(*(one(first if i % 2 else second) for i in range(12)))
        admitted = [o for o in outcomes if isinstance(o, str)]
        refused = [o for o in outcomes if isinstance(o, KeyLimitExceeded)]
        assert len(admitted) == 5 and len(refused) == 7
        assert all(exc.period == "day" and exc.limit == 10 for exc in refused)
        assert await first.accounts.balance(created.account_id) == 990
        # A failed task is refunded and no longer counts against the cap: one more fits.
        await first.tasks.fail(admitted[0], "500", "failed for the test")
        assert isinstance(await one(second), str)
        assert isinstance(await one(first), KeyLimitExceeded)
    finally:
        await first.close()
        await second.close()


runner = CliRunner()


def test_cli_sets_limits_makes_admin_keys_and_audits(tmp_path, monkeypatch):
    monkeypatch.delenv("SAFELIGHT_DATABASE_URL", raising=False)
    monkeypatch.setenv("SAFELIGHT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")  # the key table on one line per key
    made = runner.invoke(cli_app, ["keys", "create", "--name", "acme", "--credits", "5"])
    assert made.exit_code == 0, made.output
    limited = runner.invoke(cli_app, ["keys", "limits", "1", "--hour", "10", "--total", "100",
                                      "--allow-ip", "192.0.2.0/24"])
    assert limited.exit_code == 0, limited.output
    assert "10 per hour, 100 in total; used from 192.0.2.0/24" in limited.output
    kept = runner.invoke(cli_app, ["keys", "limits", "1", "--day", "50"])
    assert "10 per hour, 50 per day, 100 in total; used from 192.0.2.0/24" in kept.output
    bad = runner.invoke(cli_app, ["keys", "limits", "1", "--allow-ip", "nowhere"])
    assert bad.exit_code == 1 and "'nowhere' is not an IP address or CIDR" in bad.output
    admin = runner.invoke(cli_app, ["keys", "create", "--name", "ops", "--admin"])
    assert admin.exit_code == 0 and re.search(r"sla_[\w-]+", admin.output)
    refused = runner.invoke(cli_app, ["keys", "create", "--name", "ops2", "--admin", "--credits", "5"])
    assert refused.exit_code == 2 and "an admin key has no account" in refused.output
    assert runner.invoke(cli_app, ["maintenance", "on"]).exit_code == 0
    assert runner.invoke(cli_app, ["models", "disable", "z-image"]).exit_code == 0
    listed = runner.invoke(cli_app, ["keys", "list"]).output
    assert "10/50/100" in listed and "192.0.2.0/24" in listed and "admin:1" in listed

    async def audit() -> list[dict]:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'safelight.db'}")
        try:
            return await store.audit.list()
        finally:
            await store.close()

    entries = asyncio.run(audit())
    assert [entry["action"] for entry in entries] == ["model.disable", "maintenance.on", "key.create", "key.limits",
                                                      "key.limits", "key.create"]
    assert all(entry["actor"].startswith("cli (") for entry in entries)
    assert entries[3]["detail"] == {"hour": 10, "day": 50, "total": 100, "allowedIps": ["192.0.2.0/24"]}
