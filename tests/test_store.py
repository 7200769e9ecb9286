"""The store on both engines: migrations, reservations under concurrency, leases, recovery, the ledger."""

import asyncio
import json

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from safelight.store import InsufficientCredits, Store
from safelight.store.tables import metadata


@pytest.fixture
async def store(database_url):
    store = Store(database_url)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()


async def new_task(store, account_id, *, cost=4, model="z-image"):
    return await store.tasks.create(account_id=account_id, model=model, param=json.dumps({"model": model}),
                                    callback_url=None, num_images=1, cost=cost)


async def test_migrations_match_the_tables_and_are_idempotent(store):
    await store.migrate()  # a second run is a no-op

    def diff(sync_conn):
        return compare_metadata(MigrationContext.configure(sync_conn), metadata)

    async with store.db.read() as conn:
        assert await conn.run_sync(diff) == []


async def test_concurrent_reservations_never_overdraw(store):
    created = await store.accounts.create_key("racer", credits=40)
    results = await asyncio.gather(*(new_task(store, created.account_id) for _ in range(30)),
                                   return_exceptions=True)
    accepted = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, InsufficientCredits)]
    assert (len(accepted), len(refused)) == (10, 20)
    assert await store.accounts.balance(created.account_id) == 0
    assert await store.accounts.ledger_sum(created.account_id) == 0
    assert (await store.tasks.count_by_state()) == {"waiting": 10}


async def test_success_charges_and_failure_refunds_exactly_once(store):
    created = await store.accounts.create_key("payer", credits=20)
    ok, bad = await new_task(store, created.account_id), await new_task(store, created.account_id)
    claimed = await store.tasks.claim(["z-image"], 10, "w1", 60_000)
    assert [row["id"] for row in claimed] == [ok, bad]
    assert all(row["state"] == "queuing" and row["claims"] == 1 for row in claimed)
    assert await store.tasks.succeed(ok, "w1", files=["results/x/0.png"], seeds=[1])
    assert await store.tasks.fail(bad, "501", "boom", worker_id="w1")
    assert not await store.tasks.fail(bad, "501", "boom again")  # terminal: no second refund
    assert not await store.tasks.succeed(bad, "w1", files=[], seeds=[])
    assert await store.accounts.balance(created.account_id) == 16
    assert await store.accounts.ledger_sum(created.account_id) == 16
    assert (await store.tasks.get(ok))["credits_consumed"] == 4
    assert (await store.tasks.get(bad))["credits_consumed"] == 0


async def test_claims_are_exclusive_between_workers(store):
    created = await store.accounts.create_key("many", credits=1000)
    ids = {await new_task(store, created.account_id, cost=1) for _ in range(40)}
    batches = await asyncio.gather(*(store.tasks.claim(["z-image"], 7, f"w{i}", 60_000) for i in range(8)))
    claimed = [row["id"] for batch in batches for row in batch]
    assert len(claimed) == len(set(claimed)) == 40 and set(claimed) == ids


async def test_claim_only_takes_the_models_asked_for_oldest_first(store):
    created = await store.accounts.create_key("mix", credits=100)
    first = await new_task(store, created.account_id, model="z-image")
    await new_task(store, created.account_id, model="google/imagen4-fast")
    second = await new_task(store, created.account_id, model="z-image")
    rows = await store.tasks.claim(["z-image"], 5, "w", 60_000)
    assert [row["id"] for row in rows] == [first, second]


async def test_a_pass_through_claim_takes_every_model_but_the_listed_ones(store):
    created = await store.accounts.create_key("through", credits=100)
    catalog = ["z-image", "google/imagen4-fast"]
    await new_task(store, created.account_id, model="z-image")
    other = await new_task(store, created.account_id, model="bytedance/seedream-v4")
    kontext = await new_task(store, created.account_id, model="flux-kontext-pro")
    imagen = await new_task(store, created.account_id, model="google/imagen4-fast")
    # A worker routing imagen4-fast and "*" to one backend: imagen plus every model outside the catalog.
    rows = await store.tasks.claim(["google/imagen4-fast"], 5, "w", 60_000, others_than=catalog)
    assert [row["id"] for row in rows] == [other, kontext, imagen]
    assert await store.tasks.claim([], 5, "w", 60_000, others_than=catalog) == []
    assert [row["model"] for row in await store.tasks.claim_batch([], 4, "w", 60_000, others_than=[])] == ["z-image"]


async def test_expired_leases_are_requeued_then_failed_with_refund(store):
    created = await store.accounts.create_key("crashy", credits=10)
    task_id = await new_task(store, created.account_id)
    for attempt in range(1, 4):
        rows = await store.tasks.claim(["z-image"], 1, f"dead-{attempt}", lease_ms=-1)  # already expired
        assert [row["id"] for row in rows] == [task_id] and rows[0]["claims"] == attempt
        report = await store.tasks.requeue_expired(max_claims=3)
        if attempt < 3:
            assert report.requeued == [task_id] and (await store.tasks.get(task_id))["state"] == "waiting"
    assert report.failed == [task_id]
    row = await store.tasks.get(task_id)
    assert row["state"] == "fail" and row["fail_code"] == "500" and "interrupted 3 times" in row["fail_msg"]
    assert await store.accounts.balance(created.account_id) == 10 == await store.accounts.ledger_sum(
        created.account_id)


async def test_a_worker_that_lost_its_lease_cannot_finish_the_task(store):
    created = await store.accounts.create_key("lease", credits=10)
    task_id = await new_task(store, created.account_id)
    await store.tasks.claim(["z-image"], 1, "slow", lease_ms=-1)
    await store.tasks.requeue_expired(max_claims=3)
    await store.tasks.claim(["z-image"], 1, "fresh", lease_ms=60_000)
    assert not await store.tasks.mark_generating([task_id], "slow", "sandbox")
    assert not await store.tasks.succeed(task_id, "slow", files=["x"], seeds=[1])
    assert await store.tasks.succeed(task_id, "fresh", files=["y"], seeds=[2])
    assert json.loads((await store.tasks.get(task_id))["result"])["files"] == ["y"]


async def test_release_hands_tasks_back_without_burning_an_attempt(store):
    created = await store.accounts.create_key("release", credits=10)
    task_id = await new_task(store, created.account_id)
    await store.tasks.claim(["z-image"], 1, "w", 60_000)
    await store.tasks.release([task_id], "w")
    row = await store.tasks.get(task_id)
    assert (row["state"], row["claims"], row["lease_owner"]) == ("waiting", 0, None)


async def test_accounts_keys_and_state(store):
    first = await store.accounts.create_key("alice", credits=50)
    second = await store.accounts.create_key("alice-ci", account="alice")
    assert first.account_id == second.account_id
    assert await store.accounts.authenticate(first.key) == first.account_id
    assert await store.accounts.authenticate(first.key + "x") is None
    assert await store.accounts.revoke_key(second.key[:9]) == 1
    assert await store.accounts.authenticate(second.key) is None
    keys = await store.accounts.list_keys()
    assert all(first.key not in json.dumps(row) for row in keys)  # only hashes and prefixes are stored
    assert await store.accounts.add_credits("alice", 25) == 75
    with pytest.raises(InsufficientCredits):
        await store.accounts.add_credits("alice", -100)
    assert await store.accounts.ledger_sum(first.account_id) == 75
    assert not await store.state.maintenance()
    await store.state.set_maintenance(True)
    assert await store.state.maintenance()
    assert await store.state.set_model_enabled("z-image", False) == {"z-image"}
    assert await store.state.disabled_models() == {"z-image"}
    secret = await store.state.secret_key()
    assert len(secret) == 64 and await store.state.secret_key() == secret
    old_hook = await store.accounts.webhook_key("alice")
    assert await store.accounts.webhook_key("alice", rotate=True) != old_hook


async def test_postgres_notify_wakes_a_listener_in_another_store(postgres_url):
    # Cross-process wake-up is a PostgreSQL feature; embedded SQLite runs one process.
    creator, worker_side = Store(postgres_url), Store(postgres_url)
    try:
        await creator.migrate()
        await worker_side.wakeup.listen()
        created = await creator.accounts.create_key("notify", credits=10)
        await new_task(creator, created.account_id)
        assert await worker_side.wakeup.wait(timeout=5)
    finally:
        await creator.close()
        await worker_side.close()
