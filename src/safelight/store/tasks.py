"""Tasks: creation with a credit reservation, leased claims, and the terminal transitions."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, false, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from safelight import metrics
from safelight.kie import FailCode, TaskState

from .accounts import InsufficientCredits, KeyLimitExceeded, KeyLimits, add_ledger_entry, key_usage_in
from .audit import write_audit
from .callbacks import CallbackStore
from .db import Database, now_ms
from .notify import TaskEvents, Wakeup
from .tables import accounts, idempotency_keys, tasks
from .tables import credit_ledger as ledger

# The backend attempt log written with a task's final state: [{"backend", "outcome", "failCode", "detail", "at"}].
log = logging.getLogger(__name__)

AttemptLog = list[dict[str, Any]]

# An Idempotency-Key names its task for this long (Stripe keeps keys 24 h too).
IDEMPOTENCY_SECONDS = 24 * 3600

# Bounds one group commit; larger bursts simply take several transactions.
MAX_CREATE_BATCH = 256


@dataclass
class _CreateRequest:
    task_id: str
    account_id: int
    model: str
    param: str
    callback_url: str | None
    num_images: int
    cost: int
    batch_key: str | None
    max_unfinished: int | None
    trace_context: str | None
    cancel_after_ms: int | None
    idempotency: tuple[str, str] | None  # (key, request hash)
    api_key_id: int | None
    key_limits: KeyLimits
    outcome: asyncio.Future[str]


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used, within its lifetime, for a different request."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"this Idempotency-Key was already used for task {task_id} with a different request")
        self.task_id = task_id


class TaskNotCancellable(Exception):
    """The task has already ended."""

    def __init__(self, state: str) -> None:
        super().__init__(f"the task has already ended ({state})")
        self.state = state


class AccountQueueFull(Exception):
    """The account already has `limit` unfinished tasks; nothing was created or charged."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the account already has {limit} unfinished tasks")
        self.limit = limit


@dataclass(frozen=True)
class RequeueReport:
    requeued: list[str]
    failed: list[str]


class TaskStore:
    def __init__(self, db: Database, wakeup: Wakeup, callbacks: CallbackStore, events: TaskEvents) -> None:
        self.db = db
        self.wakeup = wakeup
        self.callbacks = callbacks
        self.events = events
        self._pending: list[_CreateRequest] = []
        self._flusher: asyncio.Task[None] | None = None

    async def create(self, *, account_id: int, model: str, param: str, callback_url: str | None,
                     num_images: int, cost: int, batch_key: str | None = None,
                     max_unfinished: int | None = None, trace_context: str | None = None,
                     cancel_after_ms: int | None = None, idempotency: tuple[str, str] | None = None,
                     api_key_id: int | None = None, key_limits: KeyLimits = KeyLimits()) -> str:
        """Insert a waiting task and reserve its credits, atomically. Raises InsufficientCredits,
        AccountQueueFull when the account already has `max_unfinished` unfinished tasks, or
        KeyLimitExceeded when the task would take its API key (`api_key_id`) past one of `key_limits`.

        `idempotency` is (Idempotency-Key, hash of the request): the same key and hash within
        IDEMPOTENCY_SECONDS return the task created the first time, charged once; the same key with
        another hash raises IdempotencyConflict. A unique key per account makes concurrent
        duplicates produce one task, across processes too.

        Concurrent creates are group-committed: while one transaction is being written, new
        requests queue up and the next transaction takes them all. Each request still gets its
        own all-or-nothing outcome; the batch only shares the BEGIN/COMMIT round trips.
        """
        request = _CreateRequest(task_id=uuid.uuid4().hex, account_id=account_id, model=model, param=param,
                                 callback_url=callback_url, num_images=num_images, cost=cost,
                                 batch_key=batch_key, max_unfinished=max_unfinished, trace_context=trace_context,
                                 cancel_after_ms=cancel_after_ms, idempotency=idempotency,
                                 api_key_id=api_key_id, key_limits=key_limits,
                                 outcome=asyncio.get_running_loop().create_future())
        self._pending.append(request)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_creates())
        task_id: str = await request.outcome
        return task_id

    async def _flush_creates(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_CREATE_BATCH], self._pending[MAX_CREATE_BATCH:]
            try:
                async with self.db.write() as conn:
                    outcomes = await self._insert_batch(conn, batch)
            except BaseException as exc:  # the whole transaction rolled back: nothing was written
                for request in batch:
                    if not request.outcome.done():
                        request.outcome.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
                if not isinstance(exc, Exception):
                    raise
                continue
            for request, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, str):  # an idempotent repeat: the task the key first created
                    if not request.outcome.done():
                        request.outcome.set_result(outcome)
                    continue
                if outcome is None:  # created (even if its requester has gone away since)
                    metrics.TASKS_CREATED.labels(request.model).inc()
                    log.info("task %s: waiting", request.task_id,
                             extra={"task_id": request.task_id, "model": request.model, "state": "waiting",
                                    "account": request.account_id})
                if not request.outcome.done():
                    if isinstance(outcome, Exception):
                        request.outcome.set_exception(outcome)
                    else:
                        request.outcome.set_result(request.task_id)
            self.wakeup.poke()

    async def _insert_batch(self, conn: AsyncConnection, batch: list[_CreateRequest]) -> list[object]:
        at = now_ms()
        account_ids = sorted({request.account_id for request in batch})
        # Lock the accounts' rows (PostgreSQL) so other replicas' reservations queue behind ours;
        # SQLite's BEGIN IMMEDIATE already excludes every other writer.
        balances = dict((await conn.execute(
            select(accounts.c.id, accounts.c.balance).where(accounts.c.id.in_(account_ids))
            .order_by(accounts.c.id).with_for_update())).all())
        # Unfinished tasks per account, counted under the same account locks (the per-account cap).
        capped = sorted({request.account_id for request in batch if request.max_unfinished is not None})
        unfinished: dict[int, int] = {}
        if capped:
            unfinished = {account: int(count) for account, count in (await conn.execute(
                select(tasks.c.account_id, func.count()).where(tasks.c.account_id.in_(capped),
                                                               tasks.c.state.in_(TaskState.UNFINISHED))
                .group_by(tasks.c.account_id))).all()}
        # Credits charged to capped keys, counted under the same account locks: a key belongs to one
        # account, so concurrent creates with one key (on any replica) are serialised here.
        capped_keys = sorted({request.api_key_id for request in batch
                              if request.api_key_id is not None and request.key_limits})
        key_usage = await key_usage_in(conn, capped_keys, at) if capped_keys else {}
        outcomes: list[object] = []
        ledger_rows, task_rows = [], []
        for request in batch:
            if request.idempotency is not None:
                earlier = await self._claim_idempotency_key(conn, request, at)
                if earlier is not None:
                    outcomes.append(earlier)
                    continue
            refusal: Exception | None = None
            queued = unfinished.get(request.account_id, 0)
            balance = balances[request.account_id]
            if request.max_unfinished is not None and queued >= request.max_unfinished:
                refusal = AccountQueueFull(request.max_unfinished)
            elif request.cost > balance:
                refusal = InsufficientCredits(request.cost, balance)
            elif request.api_key_id in key_usage:
                refusal = _over_limit(request.key_limits, key_usage[request.api_key_id], request.cost)
            if refusal is not None:
                if request.idempotency is not None:  # nothing was created: the key stays free
                    await conn.execute(delete(idempotency_keys).where(
                        idempotency_keys.c.account_id == request.account_id,
                        idempotency_keys.c.key == request.idempotency[0],
                        idempotency_keys.c.task_id == request.task_id))
                outcomes.append(refusal)
                continue
            if request.cost > 0:
                balance -= request.cost
                balances[request.account_id] = balance
                ledger_rows.append(dict(account_id=request.account_id, task_id=request.task_id, kind="reserve",
                                        amount=-request.cost, balance_after=balance, created_at=at,
                                        note=f"{request.model} x{request.num_images}"))
            task_rows.append(dict(
                id=request.task_id, account_id=request.account_id, model=request.model, state=TaskState.WAITING,
                param=request.param, callback_url=request.callback_url, num_images=request.num_images,
                credits_reserved=request.cost, credits_consumed=0, fail_code="", fail_msg="", claims=0,
                batch_key=request.batch_key, create_time=at, update_time=at, files_deleted=False,
                trace_context=request.trace_context, api_key_id=request.api_key_id,
                cancel_at=None if request.cancel_after_ms is None else at + request.cancel_after_ms))
            unfinished[request.account_id] = queued + 1
            if request.api_key_id in key_usage:
                key_usage[request.api_key_id] = {period: spent + request.cost
                                                 for period, spent in key_usage[request.api_key_id].items()}
            outcomes.append(None)
        for account_id in {row["account_id"] for row in ledger_rows}:
            await conn.execute(update(accounts).where(accounts.c.id == account_id)
                               .values(balance=balances[account_id]))
        if ledger_rows:
            await conn.execute(ledger.insert(), ledger_rows)
        if task_rows:
            await conn.execute(tasks.insert(), task_rows)
            for model in {str(row["model"]) for row in task_rows}:
                await self.wakeup.notify_in_transaction(conn, model)
        return outcomes

    async def _claim_idempotency_key(self, conn: AsyncConnection, request: _CreateRequest, at: int) -> object:
        """Take the request's Idempotency-Key for its task: None if taken (a new task follows), the
        earlier task's id for a repeat of the same request, or an IdempotencyConflict."""
        assert request.idempotency is not None
        key, request_hash = request.idempotency
        insert = sqlite_insert if self.db.is_sqlite else pg_insert
        fresh = {"request_hash": request_hash, "task_id": request.task_id, "created_at": at}
        statement = insert(idempotency_keys).values(account_id=request.account_id, key=key, **fresh)
        # A key older than its lifetime is free again; a live one is left alone (and waited for, on
        # PostgreSQL, when another transaction is inserting it right now).
        statement = statement.on_conflict_do_update(
            index_elements=[idempotency_keys.c.account_id, idempotency_keys.c.key], set_=fresh,
            where=idempotency_keys.c.created_at < at - IDEMPOTENCY_SECONDS * 1000)
        taken = (await conn.execute(statement.returning(idempotency_keys.c.task_id))).scalar_one_or_none()
        if taken == request.task_id:
            return None
        earlier = (await conn.execute(select(idempotency_keys.c.request_hash, idempotency_keys.c.task_id).where(
            idempotency_keys.c.account_id == request.account_id, idempotency_keys.c.key == key))).one()
        if earlier.request_hash != request_hash:
            return IdempotencyConflict(earlier.task_id)
        return str(earlier.task_id)

    async def get(self, task_id: str, account_id: int | None = None) -> RowMapping | None:
        condition = tasks.c.id == task_id
        if account_id is not None:
            condition = and_(condition, tasks.c.account_id == account_id)
        async with self.db.read() as conn:
            return (await conn.execute(select(tasks).where(condition))).mappings().first()

    async def claim(self, models: Sequence[str], limit: int, worker_id: str, lease_ms: int, *,
                    others_than: Sequence[str] | None = None) -> list[RowMapping]:
        """Move up to `limit` oldest waiting tasks of `models` to queuing, leased to this worker; with
        `others_than`, also tasks of every model not in that list (pass-through models)."""
        if limit <= 0 or (not models and others_than is None):
            return []
        at = now_ms()
        oldest = (select(tasks.c.id)
                  .where(tasks.c.state == TaskState.WAITING, _of_models(models, others_than))
                  .order_by(tasks.c.create_time).limit(limit)
                  .with_for_update(skip_locked=True))  # PostgreSQL; SQLite serializes writers anyway
        async with self.db.write() as conn:
            rows = (await conn.execute(
                update(tasks).where(tasks.c.id.in_(oldest.scalar_subquery()))
                .values(state=TaskState.QUEUING, lease_owner=worker_id, lease_expires_at=at + lease_ms,
                        claims=tasks.c.claims + 1, update_time=at,
                        start_time=func.coalesce(tasks.c.start_time, at))
                .returning(*tasks.c))).mappings().all()
            await self.events.notify_in_transaction(conn, [row["id"] for row in rows])
        return self._claimed(rows, worker_id, at)

    async def claim_batch(self, models: Sequence[str], max_batch: int, worker_id: str,
                          lease_ms: int, *, others_than: Sequence[str] | None = None) -> list[RowMapping]:
        """Claim the oldest waiting task of `models` and up to `max_batch - 1` more waiting tasks with
        the same batch key (same model and size), oldest first, so one pipeline call can run them all."""
        if max_batch <= 1:
            return await self.claim(models, 1, worker_id, lease_ms, others_than=others_than)
        if not models and others_than is None:
            return []
        at = now_ms()
        async with self.db.write() as conn:
            head = (await conn.execute(
                select(tasks.c.id, tasks.c.batch_key)
                .where(tasks.c.state == TaskState.WAITING, _of_models(models, others_than))
                .order_by(tasks.c.create_time).limit(1).with_for_update(skip_locked=True))).first()
            if head is None:
                return []
            ids = [head.id]
            if head.batch_key is not None:
                ids += (await conn.execute(
                    select(tasks.c.id)
                    .where(tasks.c.state == TaskState.WAITING, tasks.c.batch_key == head.batch_key,
                           tasks.c.id != head.id)
                    .order_by(tasks.c.create_time).limit(max_batch - 1)
                    .with_for_update(skip_locked=True))).scalars().all()
            rows = (await conn.execute(
                update(tasks).where(tasks.c.id.in_(ids), tasks.c.state == TaskState.WAITING)
                .values(state=TaskState.QUEUING, lease_owner=worker_id, lease_expires_at=at + lease_ms,
                        claims=tasks.c.claims + 1, update_time=at,
                        start_time=func.coalesce(tasks.c.start_time, at))
                .returning(*tasks.c))).mappings().all()
            await self.events.notify_in_transaction(conn, [row["id"] for row in rows])
        return self._claimed(rows, worker_id, at)

    async def mark_generating(self, task_ids: Sequence[str], worker_id: str, backend: str) -> set[str]:
        """Move a claimed batch to generating on `backend`, in one statement; returns the ids this
        worker still holds (a lost lease drops a task from the batch)."""
        async with self.db.write() as conn:
            rows = await conn.execute(
                update(tasks).where(tasks.c.id.in_(list(task_ids)), tasks.c.lease_owner == worker_id,
                                    tasks.c.state.in_(TaskState.ACTIVE))
                .values(state=TaskState.GENERATING, backend=backend, progress=0, update_time=now_ms())
                .returning(tasks.c.id))
            held = set(rows.scalars())
            await self.events.notify_in_transaction(conn, held)
        self.events.publish(held)
        for task_id in held:
            log.info("task %s: generating on %s", task_id, backend,
                     extra={"task_id": task_id, "backend": backend, "state": "generating"})
        return held

    async def set_progress(self, task_id: str, worker_id: str, progress: int) -> bool:
        return await self._owned_update(task_id, worker_id, progress=max(0, min(100, progress)))

    async def extend_leases(self, task_ids: Sequence[str], worker_id: str, lease_ms: int) -> None:
        if not task_ids:
            return
        at = now_ms()
        async with self.db.write() as conn:
            await conn.execute(update(tasks).where(tasks.c.id.in_(list(task_ids)), tasks.c.lease_owner == worker_id,
                                                   tasks.c.state.in_(TaskState.ACTIVE))
                               .values(lease_expires_at=at + lease_ms))

    async def release(self, task_ids: Sequence[str], worker_id: str) -> None:
        """Hand unfinished tasks back to the queue (graceful shutdown); the attempt does not count."""
        async with self.db.write() as conn:
            await conn.execute(update(tasks).where(tasks.c.id.in_(list(task_ids)), tasks.c.lease_owner == worker_id,
                                                   tasks.c.state.in_(TaskState.ACTIVE))
                               .values(state=TaskState.WAITING, lease_owner=None, lease_expires_at=None, progress=None,
                                       claims=tasks.c.claims - 1, update_time=now_ms()))
            await self.events.notify_in_transaction(conn, task_ids)
        self.events.publish(task_ids)
        for task_id in task_ids:
            log.info("task %s: handed back to the queue", task_id, extra={"task_id": task_id, "state": "waiting"})
        self.wakeup.poke()

    async def succeed(self, task_id: str, worker_id: str, *, files: list[str], seeds: list[int | None],
                      extra: dict[str, Any] | None = None, backend_attempts: AttemptLog | None = None) -> bool:
        """success, charging the reservation. False if this worker no longer holds the task.
        `backend_attempts` (which backends were tried) is written in the same statement."""
        at = now_ms()
        result = json.dumps({"files": files, "seeds": seeds, **(extra or {})})
        async with self.db.write() as conn:
            row = (await conn.execute(
                update(tasks).where(tasks.c.id == task_id, tasks.c.lease_owner == worker_id,
                                    tasks.c.state.in_(TaskState.ACTIVE))
                .values(state=TaskState.SUCCESS, result=result, credits_consumed=tasks.c.credits_reserved, progress=100,
                        complete_time=at, update_time=at, lease_owner=None, lease_expires_at=None,
                        **_attempt_log(backend_attempts))
                .returning(tasks.c.account_id, tasks.c.callback_url, tasks.c.model, tasks.c.backend,
                           tasks.c.start_time))).first()
            if row is None:
                return False
            await self._queue_callback(conn, task_id, row.account_id, row.callback_url, at)
            await self.events.notify_in_transaction(conn, [task_id])
        self.events.publish([task_id])
        if row.callback_url:
            self.callbacks.enqueued()
        _ended(Ended(task_id, row.model, row.backend, TaskState.SUCCESS, "", row.start_time, at))
        return True

    async def fail(self, task_id: str, fail_code: str, fail_msg: str, *, worker_id: str | None = None,
                   backend_attempts: AttemptLog | None = None) -> bool:
        """fail, refunding the reservation. With worker_id, only if that worker still holds the task."""
        async with self.db.write() as conn:
            ended = await self._fail_in(conn, task_id, fail_code, fail_msg, worker_id=worker_id,
                                        backend_attempts=backend_attempts)
        if ended is None:
            return False
        self.events.publish([task_id])
        self.callbacks.enqueued()
        _ended(ended, fail_msg)
        return True

    async def cancel(self, task_id: str, account_id: int, reason: str = "cancelled", *,
                     actor: str | None = None) -> RowMapping | None:
        """End the account's unfinished task at once: fail 499, refunded, its callback owed. A worker
        running it hears of it (task events) and stops its backend. Returns the ended row, None for
        an unknown task (or another account's); raises TaskNotCancellable for a finished one. With an
        `actor` (an operator), the audit log records the cancel in the same transaction."""
        async with self.db.write() as conn:
            ended = await self._fail_in(conn, task_id, FailCode.CANCELLED, reason, account_id=account_id)
            if ended is not None and actor is not None:
                await write_audit(conn, actor=actor, action="task.cancel", target=f"task {task_id}",
                                  detail={"model": ended.model, "reason": reason})
            state = None if ended else (await conn.execute(select(tasks.c.state).where(
                tasks.c.id == task_id, tasks.c.account_id == account_id))).scalar_one_or_none()
        if ended is None:
            if state is None:
                return None
            raise TaskNotCancellable(state)
        self.events.publish([task_id])
        self.callbacks.enqueued()
        _ended(ended, reason)
        return await self.get(task_id, account_id)

    async def cancel_overdue(self, limit: int = 100) -> list[str]:
        """Cancel unfinished tasks whose Cancel-After deadline has passed (any process may sweep:
        the conditional update ends each task once)."""
        at = now_ms()
        async with self.db.read() as conn:
            overdue = list((await conn.execute(
                select(tasks.c.id, tasks.c.cancel_at, tasks.c.create_time)
                .where(tasks.c.cancel_at <= at, tasks.c.state.in_(TaskState.UNFINISHED))
                .order_by(tasks.c.cancel_at).limit(limit))).all())
        cancelled: list[str] = []
        for task_id, cancel_at, create_time in overdue:
            reason = f"cancelled: its deadline passed (Cancel-After {(cancel_at - create_time) / 1000:g} s)"
            async with self.db.write() as conn:
                ended = await self._fail_in(conn, task_id, FailCode.CANCELLED, reason)
            if ended is not None:
                self.events.publish([task_id])
                _ended(ended, reason)
                cancelled.append(task_id)
        if cancelled:
            self.callbacks.enqueued()
        return cancelled

    async def list_for(self, account_id: int, *, limit: int, state: str | None = None, model: str | None = None,
                       since_ms: int | None = None, before: tuple[int, str] | None = None) -> list[RowMapping]:
        """The account's tasks, newest first: at most `limit`, created after `since_ms`, and before
        the (create_time, id) cursor. Served by the (account_id, create_time) index."""
        condition = tasks.c.account_id == account_id
        if state is not None:
            condition = and_(condition, tasks.c.state == state)
        if model is not None:
            condition = and_(condition, tasks.c.model == model)
        if since_ms is not None:
            condition = and_(condition, tasks.c.create_time >= since_ms)
        if before is not None:
            create_time, task_id = before
            condition = and_(condition, (tasks.c.create_time < create_time)
                             | and_(tasks.c.create_time == create_time, tasks.c.id < task_id))
        async with self.db.read() as conn:
            return list((await conn.execute(
                select(tasks).where(condition).order_by(tasks.c.create_time.desc(), tasks.c.id.desc())
                .limit(limit))).mappings().all())

    async def states(self, task_ids: Sequence[str]) -> dict[str, str]:
        async with self.db.read() as conn:
            return {str(task_id): str(state) for task_id, state in (await conn.execute(
                select(tasks.c.id, tasks.c.state).where(tasks.c.id.in_(list(task_ids))))).all()}

    async def queue_position(self, row: RowMapping) -> int:
        """Waiting tasks of the same model ahead of this waiting one (claims go oldest first)."""
        async with self.db.read() as conn:
            return int((await conn.execute(
                select(func.count()).select_from(tasks)
                .where(tasks.c.state == TaskState.WAITING, tasks.c.model == row["model"],
                       (tasks.c.create_time < row["create_time"])
                       | and_(tasks.c.create_time == row["create_time"], tasks.c.id < row["id"])))).scalar_one())

    async def requeue_expired(self, max_claims: int) -> RequeueReport:
        """Tasks whose worker died mid-task go back to waiting, or fail (refunded) after max_claims."""
        at = now_ms()
        expired = and_(tasks.c.state.in_(TaskState.ACTIVE), tasks.c.lease_expires_at < at)
        requeued: list[str] = []
        ended: list[Ended] = []
        async with self.db.write() as conn:
            rows = (await conn.execute(select(tasks.c.id, tasks.c.claims).where(expired))).all()
            for task_id, claims in rows:
                if claims < max_claims:
                    await conn.execute(update(tasks).where(tasks.c.id == task_id, expired)
                                       .values(state=TaskState.WAITING, lease_owner=None, lease_expires_at=None,
                                               progress=None, update_time=at))
                    requeued.append(task_id)
                    await self.events.notify_in_transaction(conn, [task_id])
                else:
                    msg = f"the task was interrupted {claims} times (worker lost); credits refunded"
                    if failed := await self._fail_in(conn, task_id, FailCode.INTERNAL, msg):
                        ended.append(failed)
        self.events.publish([*requeued, *(failed.task_id for failed in ended)])
        for task_id in requeued:
            log.info("task %s: lease expired, back to waiting", task_id, extra={"task_id": task_id})
        for failed in ended:
            _ended(failed, "interrupted too often")
        if ended:
            self.callbacks.enqueued()
        return RequeueReport(requeued, [failed.task_id for failed in ended])

    async def expired_results(self, completed_before_ms: int, limit: int) -> list[str]:
        """Ids of succeeded tasks, completed before the cutoff, whose result files still exist; oldest first."""
        async with self.db.read() as conn:
            return list((await conn.execute(
                select(tasks.c.id).where(_results_expired(completed_before_ms))
                .order_by(tasks.c.complete_time).limit(limit))).scalars())

    async def mark_files_deleted(self, task_ids: Sequence[str], completed_before_ms: int) -> int:
        """Record that retention deleted these tasks' result files; returns how many were marked.
        The record stays, and recordInfo answers `resultUrls: []`."""
        if not task_ids:
            return 0
        async with self.db.write() as conn:
            result = await conn.execute(update(tasks).where(tasks.c.id.in_(list(task_ids)),
                                                            _results_expired(completed_before_ms))
                                        .values(files_deleted=True))
            return int(result.rowcount)

    async def count_unfinished(self) -> int:
        """Tasks waiting or running, server-wide (the global queue cap)."""
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(tasks)
                                           .where(tasks.c.state.in_(TaskState.UNFINISHED)))).scalar_one())

    async def count_unfinished_by_model(self) -> dict[tuple[str, str], int]:
        """(model, state) -> tasks waiting, queuing or generating (the queue gauges)."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(tasks.c.model, tasks.c.state, func.count())
                                      .where(tasks.c.state.in_(TaskState.UNFINISHED))
                                      .group_by(tasks.c.model, tasks.c.state))
            return {(str(model), str(state)): int(count) for model, state, count in rows}

    async def waiting_models(self) -> set[str]:
        """Models with at least one task waiting for a worker."""
        async with self.db.read() as conn:
            return set((await conn.execute(select(tasks.c.model).where(tasks.c.state == TaskState.WAITING)
                                           .distinct())).scalars())

    async def count_by_state(self) -> dict[str, int]:
        async with self.db.read() as conn:
            rows = await conn.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state))
            return {state: count for state, count in rows}

    async def _owned_update(self, task_id: str, worker_id: str, **values: Any) -> bool:
        async with self.db.write() as conn:
            result = await conn.execute(
                update(tasks).where(tasks.c.id == task_id, tasks.c.lease_owner == worker_id,
                                    tasks.c.state.in_(TaskState.ACTIVE))
                .values(update_time=now_ms(), **values))
            changed = result.rowcount == 1
            if changed:
                await self.events.notify_in_transaction(conn, [task_id])
        if changed:
            self.events.publish([task_id])
        return changed

    async def _fail_in(self, conn: AsyncConnection, task_id: str, fail_code: str, fail_msg: str, *,
                       worker_id: str | None = None, account_id: int | None = None,
                       backend_attempts: AttemptLog | None = None) -> Ended | None:
        at = now_ms()
        condition = and_(tasks.c.id == task_id, tasks.c.state.not_in(TaskState.TERMINAL))
        if worker_id is not None:
            condition = and_(condition, tasks.c.lease_owner == worker_id)
        if account_id is not None:
            condition = and_(condition, tasks.c.account_id == account_id)
        row = (await conn.execute(
            update(tasks).where(condition)
            .values(state=TaskState.FAIL, fail_code=fail_code, fail_msg=fail_msg[:2000], credits_consumed=0,
                    complete_time=at, update_time=at, lease_owner=None, lease_expires_at=None,
                    **_attempt_log(backend_attempts))
            .returning(tasks.c.account_id, tasks.c.credits_reserved, tasks.c.callback_url, tasks.c.model,
                       tasks.c.backend, tasks.c.start_time))).first()
        if row is None:
            return None
        if row.credits_reserved:
            await add_ledger_entry(conn, row.account_id, row.credits_reserved, "refund", task_id=task_id, at=at,
                                   note=f"refund: {fail_code}")
        await self._queue_callback(conn, task_id, row.account_id, row.callback_url, at)
        await self.events.notify_in_transaction(conn, [task_id])
        return Ended(task_id, row.model, row.backend, TaskState.FAIL, str(fail_code), row.start_time, at)

    def _claimed(self, rows: Sequence[RowMapping], worker_id: str, at: int) -> list[RowMapping]:
        self.events.publish([row["id"] for row in rows])
        return _claimed_rows(rows, worker_id, at)

    async def _queue_callback(self, conn: AsyncConnection, task_id: str, account_id: int, url: str | None,
                              at: int) -> None:
        # Same transaction as the state change: the callback is owed exactly when the task ends.
        if url:
            await self.callbacks.enqueue_in(conn, task_id=task_id, account_id=account_id, url=url, at=at)


def _over_limit(limits: KeyLimits, spent: dict[str, int], cost: int) -> KeyLimitExceeded | None:
    """The first cap (hour, day, total) this task's cost would pass, or None."""
    for period, limit in limits.as_dict().items():
        if limit is not None and spent[period] + cost > limit:
            return KeyLimitExceeded(period, limit, spent[period], cost)
    return None


def _claimed_rows(rows: Sequence[RowMapping], worker_id: str, at: int) -> list[RowMapping]:
    """Claimed rows, oldest first; the queue time of first claims goes to the metrics."""
    for row in rows:
        if row["claims"] == 1:
            metrics.TASK_QUEUE_SECONDS.labels(row["model"]).observe(max(0, at - row["create_time"]) / 1000)
        log.info("task %s: queuing (claim %d by %s)", row["id"], row["claims"], worker_id,
                 extra={"task_id": row["id"], "model": row["model"], "state": "queuing"})
    return sorted(rows, key=lambda row: row["create_time"])


@dataclass(frozen=True)
class Ended:
    """A task that reached success or fail, for the metrics and the log (after the commit)."""

    task_id: str
    model: str
    backend: str | None
    state: TaskState
    fail_code: str
    start_time: int | None
    complete_time: int


def _ended(ended: Ended, detail: str = "") -> None:
    backend = ended.backend or "none"
    metrics.TASKS_FINISHED.labels(ended.model, backend, ended.state, ended.fail_code).inc()
    if ended.start_time is not None:
        metrics.TASK_RUN_SECONDS.labels(ended.model, backend).observe((ended.complete_time - ended.start_time) / 1000)
    log.info("task %s: %s%s", ended.task_id, ended.state, f" {ended.fail_code} ({detail})" if ended.fail_code else "",
             extra={"task_id": ended.task_id, "model": ended.model, "backend": ended.backend,
                    "state": str(ended.state), "fail_code": ended.fail_code})


def _results_expired(completed_before_ms: int) -> ColumnElement[bool]:
    return and_(tasks.c.state == TaskState.SUCCESS, tasks.c.files_deleted == false(),
                tasks.c.complete_time < completed_before_ms)


def _attempt_log(backend_attempts: AttemptLog | None) -> dict[str, str]:
    return {} if backend_attempts is None else {"backend_attempts": json.dumps(backend_attempts)}


def _of_models(models: Sequence[str], others_than: Sequence[str] | None) -> ColumnElement[bool]:
    """Tasks of `models`; with `others_than`, also tasks of every model not in that list."""
    condition: ColumnElement[bool] = tasks.c.model.in_(list(models))
    if others_than is not None:
        condition = or_(condition, tasks.c.model.not_in(list(others_than)))
    return condition
