"""The callback outbox and its delivery log."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, insert, literal, select, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from safelight.kie import TaskState

from .audit import write_audit
from .db import Database, now_ms
from .notify import Wakeup
from .tables import callback_attempts as attempts_log
from .tables import callback_deliveries as deliveries
from .tables import tasks


def new_delivery_id() -> str:
    return "msg_" + uuid.uuid4().hex


class CallbackStore:
    def __init__(self, db: Database, wakeup: Wakeup) -> None:
        self.db = db
        self.wakeup = wakeup

    async def enqueue_in(self, conn: AsyncConnection, *, task_id: str, account_id: int, url: str, at: int) -> str:
        """Queue a delivery inside the caller's transaction (the one that finishes the task); delivery
        loops in other processes hear of it when that transaction commits."""
        delivery_id = new_delivery_id()
        await conn.execute(insert(deliveries).values(
            id=delivery_id, task_id=task_id, account_id=account_id, url=url, status="pending", attempts=0,
            next_attempt_at=at, last_error="", created_at=at))
        await self.wakeup.notify_in_transaction(conn, task_id)
        return delivery_id

    def enqueued(self) -> None:
        """Wake this process's delivery loop (after the enqueuing transaction committed)."""
        self.wakeup.poke()

    async def claim_due(self, limit: int, lease_ms: int, *, at: int | None = None, per_account: int | None = None,
                        busy: Mapping[int, int] | None = None) -> list[RowMapping]:
        """Take up to `limit` due deliveries, oldest first but round-robin across accounts: at most
        `per_account` in flight for one account, counting the `busy` ones this sender already has.
        The lease keeps other senders off them while we send."""
        if limit <= 0:
            return []
        at = now_ms() if at is None else at
        per_account = per_account or limit
        rank = func.row_number().over(partition_by=deliveries.c.account_id,
                                      order_by=deliveries.c.next_attempt_at).label("rank")
        due = (select(deliveries.c.id, deliveries.c.account_id, deliveries.c.next_attempt_at, rank)
               .where(deliveries.c.status == "pending", deliveries.c.next_attempt_at <= at).subquery())
        allowance: ColumnElement[int] = literal(per_account)
        if busy:
            allowance = allowance - case(dict(busy), value=due.c.account_id, else_=0)
        # First every account's oldest, then every account's second, ...: one busy account cannot
        # take all the slots.
        chosen = (select(due.c.id).where(due.c.rank <= allowance)
                  .order_by(due.c.rank, due.c.next_attempt_at).limit(limit))
        async with self.db.write() as conn:
            ids = list((await conn.execute(chosen)).scalars())
            if not ids:
                return []
            # Re-checked in the UPDATE: another sender that chose the same rows first has moved their
            # next_attempt_at past `at`, so they are skipped here.
            rows = (await conn.execute(
                update(deliveries).where(deliveries.c.id.in_(ids), deliveries.c.status == "pending",
                                         deliveries.c.next_attempt_at <= at)
                .values(next_attempt_at=at + lease_ms, attempts=deliveries.c.attempts + 1)
                .returning(*deliveries.c))).mappings().all()
        order = {delivery_id: index for index, delivery_id in enumerate(ids)}
        return sorted(rows, key=lambda row: order[row["id"]])

    async def release(self, delivery_ids: Sequence[str]) -> None:
        """Deliveries a stopping sender did not finish: due again now, for whichever sender runs next."""
        async with self.db.write() as conn:
            await conn.execute(update(deliveries).where(deliveries.c.id.in_(list(delivery_ids)),
                                                        deliveries.c.status == "pending")
                               .values(next_attempt_at=now_ms()))
        self.enqueued()

    async def record_attempt(self, delivery: RowMapping, *, status_code: int | None, latency_ms: int, error: str,
                             delivered: bool, retry_at: int | None) -> None:
        """Log one attempt and settle the delivery: delivered, retry at `retry_at`, or failed (None)."""
        at = now_ms()
        if delivered:
            values = {"status": "delivered", "delivered_at": at, "last_error": ""}
        elif retry_at is not None:
            values = {"next_attempt_at": retry_at, "last_error": error[:1000]}
        else:
            values = {"status": "failed", "last_error": error[:1000]}
        async with self.db.write() as conn:
            await conn.execute(insert(attempts_log).values(
                delivery_id=delivery["id"], attempt=delivery["attempts"], at=at, status_code=status_code,
                latency_ms=latency_ms, error=error[:1000]))
            await conn.execute(update(deliveries).where(deliveries.c.id == delivery["id"]).values(**values))

    async def count_pending(self) -> int:
        async with self.db.read() as conn:
            return int((await conn.execute(select(func.count()).select_from(deliveries)
                                           .where(deliveries.c.status == "pending"))).scalar_one())

    async def next_due_at(self, after: int | None = None) -> int | None:
        """When the next pending delivery is due (strictly after `after`, when given)."""
        condition = deliveries.c.status == "pending"
        if after is not None:
            condition = and_(condition, deliveries.c.next_attempt_at > after)
        async with self.db.read() as conn:
            due: int | None = (await conn.execute(select(func.min(deliveries.c.next_attempt_at))
                                                  .where(condition))).scalar_one_or_none()
            return due

    async def log(self, task_id: str, account_id: int) -> list[dict[str, Any]]:
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(deliveries).where(deliveries.c.task_id == task_id, deliveries.c.account_id == account_id)
                .order_by(deliveries.c.created_at))).mappings().all()
            ids = [row["id"] for row in rows]
            tries = (await conn.execute(select(attempts_log).where(attempts_log.c.delivery_id.in_(ids))
                                        .order_by(attempts_log.c.id))).mappings().all() if ids else []
        by_delivery: dict[str, list[dict[str, Any]]] = {}
        for attempt in tries:
            by_delivery.setdefault(attempt["delivery_id"], []).append({
                "attempt": attempt["attempt"], "time": attempt["at"], "statusCode": attempt["status_code"],
                "latencyMs": attempt["latency_ms"], "error": attempt["error"]})
        return [{
            "webhookId": row["id"], "url": row["url"], "status": row["status"], "attempts": row["attempts"],
            "nextAttemptTime": row["next_attempt_at"] if row["status"] == "pending" else None,
            "createTime": row["created_at"], "deliveredTime": row["delivered_at"], "lastError": row["last_error"],
            "log": by_delivery.get(row["id"], []),
        } for row in rows]

    async def redeliver(self, task_id: str, account_id: int, *, actor: str | None = None,
                        replaces: str | None = None) -> str | None:
        """Queue one more delivery of a finished task to its callBackUrl; None if there is nothing to send.
        With an `actor`, the audit log records who asked (and which delivery it `replaces`), in the same
        transaction."""
        async with self.db.write() as conn:
            task = (await conn.execute(
                select(tasks.c.callback_url, tasks.c.state)
                .where(and_(tasks.c.id == task_id, tasks.c.account_id == account_id)))).first()
            if task is None or not task.callback_url or task.state not in TaskState.TERMINAL:
                return None
            delivery_id = await self.enqueue_in(conn, task_id=task_id, account_id=account_id, url=task.callback_url,
                                           at=now_ms())
            if actor is not None:
                await write_audit(conn, actor=actor, action="callback.redeliver", target=f"task {task_id}",
                                  detail={"delivery": delivery_id, "replaces": replaces})
        self.enqueued()
        return delivery_id
