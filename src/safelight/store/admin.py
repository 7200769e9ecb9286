"""Cross-table reads for the operator's admin API: tasks, callbacks, accounts and the ledger of every
account, newest first, one keyset page at a time.

Each list takes the position of the last row of the previous page (`before`/`after`) rather than an
offset, so a page costs the same however deep it is and rows arriving meanwhile never shift it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, true
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from safelight.kie import TaskState

from .db import Database
from .tables import accounts, admin_keys, api_keys, tasks
from .tables import callback_attempts as attempts_log
from .tables import callback_deliveries as deliveries
from .tables import credit_ledger as ledger

# The task columns the admin lists show (not the param, result or lease bookkeeping).
_TASK_COLUMNS = (tasks.c.id, tasks.c.model, tasks.c.state, tasks.c.account_id, tasks.c.create_time,
                 tasks.c.update_time, tasks.c.complete_time, tasks.c.fail_code, tasks.c.fail_msg, tasks.c.backend,
                 tasks.c.progress, tasks.c.credits_reserved, tasks.c.credits_consumed, tasks.c.backend_attempts,
                 tasks.c.callback_url, accounts.c.name.label("account"))


class AdminStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def find_account(self, account: str) -> RowMapping | None:
        """The account (id, name) named `account`, or whose id it is (digits); None if there is none.
        A name wins over an id: an account named "7" is that account, not account 7."""
        condition = accounts.c.name == account
        if account.isdigit():
            condition = or_(condition, accounts.c.id == int(account))
        async with self.db.read() as conn:
            rows = (await conn.execute(select(accounts.c.id, accounts.c.name).where(condition))).mappings().all()
        return next((row for row in rows if row["name"] == account), rows[0] if rows else None)

    # --- the queue ----------------------------------------------------------------------------

    async def oldest_waiting(self) -> RowMapping | None:
        """The waiting task created first (id, model, create_time), or None."""
        async with self.db.read() as conn:
            return (await conn.execute(
                select(tasks.c.id, tasks.c.model, tasks.c.create_time).where(tasks.c.state == TaskState.WAITING)
                .order_by(tasks.c.create_time, tasks.c.id).limit(1))).mappings().first()

    async def count_deliveries_by_status(self) -> dict[str, int]:
        """pending / delivered / failed -> how many callback deliveries are in that status."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(deliveries.c.status, func.count()).group_by(deliveries.c.status))
            return {str(status): int(count) for status, count in rows}

    # --- tasks --------------------------------------------------------------------------------

    async def tasks(self, *, limit: int, state: str | None = None, model: str | None = None,
                    account_id: int | None = None, before: tuple[int, str] | None = None) -> list[RowMapping]:
        """Tasks of every account, newest first, before the (create_time, id) cursor."""
        condition: ColumnElement[bool] = true()
        if state is not None:
            condition = and_(condition, tasks.c.state == state)
        if model is not None:
            condition = and_(condition, tasks.c.model == model)
        if account_id is not None:
            condition = and_(condition, tasks.c.account_id == account_id)
        if before is not None:
            create_time, task_id = before
            condition = and_(condition, or_(tasks.c.create_time < create_time,
                                            and_(tasks.c.create_time == create_time, tasks.c.id < task_id)))
        async with self.db.read() as conn:
            return list((await conn.execute(
                select(*_TASK_COLUMNS).join(accounts, accounts.c.id == tasks.c.account_id).where(condition)
                .order_by(tasks.c.create_time.desc(), tasks.c.id.desc()).limit(limit))).mappings().all())

    async def task(self, task_id: str) -> RowMapping | None:
        """One task with its account's name (the admin columns), or None."""
        async with self.db.read() as conn:
            return (await conn.execute(
                select(*_TASK_COLUMNS).join(accounts, accounts.c.id == tasks.c.account_id)
                .where(tasks.c.id == task_id))).mappings().first()

    # --- callbacks ----------------------------------------------------------------------------

    async def deliveries(self, *, limit: int, status: str | None = None, account_id: int | None = None,
                         task_id: str | None = None, before: tuple[int, str] | None = None) -> list[dict[str, Any]]:
        """Callback deliveries, newest first, before the (created_at, id) cursor; each with its account's
        name and its attempt log (`log`, oldest attempt first)."""
        condition: ColumnElement[bool] = true()
        if status is not None:
            condition = and_(condition, deliveries.c.status == status)
        if account_id is not None:
            condition = and_(condition, deliveries.c.account_id == account_id)
        if task_id is not None:
            condition = and_(condition, deliveries.c.task_id == task_id)
        if before is not None:
            created_at, delivery_id = before
            condition = and_(condition, or_(deliveries.c.created_at < created_at,
                                            and_(deliveries.c.created_at == created_at,
                                                 deliveries.c.id < delivery_id)))
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(deliveries, accounts.c.name.label("account"))
                .join(accounts, accounts.c.id == deliveries.c.account_id).where(condition)
                .order_by(deliveries.c.created_at.desc(), deliveries.c.id.desc()).limit(limit))).mappings().all()
            logs = await self._attempts(conn, [row["id"] for row in rows])
        return [{**row, "log": logs.get(row["id"], [])} for row in rows]

    async def delivery(self, delivery_id: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            row = (await conn.execute(
                select(deliveries, accounts.c.name.label("account"))
                .join(accounts, accounts.c.id == deliveries.c.account_id)
                .where(deliveries.c.id == delivery_id))).mappings().first()
            if row is None:
                return None
            logs = await self._attempts(conn, [delivery_id])
        return {**row, "log": logs.get(delivery_id, [])}

    @staticmethod
    async def _attempts(conn: AsyncConnection, delivery_ids: Sequence[str]) -> dict[str, list[RowMapping]]:
        if not delivery_ids:
            return {}
        found: dict[str, list[RowMapping]] = {}
        for attempt in (await conn.execute(select(attempts_log).where(attempts_log.c.delivery_id.in_(delivery_ids))
                                           .order_by(attempts_log.c.id))).mappings():
            found.setdefault(attempt["delivery_id"], []).append(attempt)
        return found

    # --- accounts and the ledger --------------------------------------------------------------

    async def accounts(self, *, limit: int, after_id: int | None = None) -> list[dict[str, Any]]:
        """Accounts in the order they were made, after `after_id`, each with its count of live user keys
        (`keys`) and of unfinished tasks (`unfinished`)."""
        live_keys = (select(func.count()).select_from(api_keys)
                     .where(api_keys.c.account_id == accounts.c.id, api_keys.c.revoked_at.is_(None))
                     .scalar_subquery())
        unfinished = (select(func.count()).select_from(tasks)
                      .where(tasks.c.account_id == accounts.c.id, tasks.c.state.in_(TaskState.UNFINISHED))
                      .scalar_subquery())
        query = select(accounts.c.id, accounts.c.name, accounts.c.balance, accounts.c.created_at,
                       live_keys.label("keys"), unfinished.label("unfinished"))
        if after_id is not None:
            query = query.where(accounts.c.id > after_id)
        async with self.db.read() as conn:
            return [dict(row) for row in (await conn.execute(query.order_by(accounts.c.id).limit(limit))).mappings()]

    async def ledger(self, *, limit: int, account_id: int | None = None, kind: str | None = None,
                     task_id: str | None = None, before_id: int | None = None) -> list[RowMapping]:
        """Ledger entries of every account (or one), newest first, before `before_id`."""
        condition: ColumnElement[bool] = true()
        if account_id is not None:
            condition = and_(condition, ledger.c.account_id == account_id)
        if kind is not None:
            condition = and_(condition, ledger.c.kind == kind)
        if task_id is not None:
            condition = and_(condition, ledger.c.task_id == task_id)
        if before_id is not None:
            condition = and_(condition, ledger.c.id < before_id)
        async with self.db.read() as conn:
            return list((await conn.execute(
                select(ledger, accounts.c.name.label("account")).join(accounts, accounts.c.id == ledger.c.account_id)
                .where(condition).order_by(ledger.c.id.desc()).limit(limit))).mappings().all())

    # --- keys ---------------------------------------------------------------------------------

    async def user_keys(self, *, limit: int, account_id: int | None = None, after_id: int | None = None,
                        key_id: int | None = None) -> list[RowMapping]:
        """User keys in the order they were made, after `after_id`, with their account's name, caps and
        IP allow-list (`allowed_ips` as stored: a JSON list, or NULL)."""
        condition: ColumnElement[bool] = true()
        if account_id is not None:
            condition = and_(condition, api_keys.c.account_id == account_id)
        if after_id is not None:
            condition = and_(condition, api_keys.c.id > after_id)
        if key_id is not None:
            condition = and_(condition, api_keys.c.id == key_id)
        async with self.db.read() as conn:
            return list((await conn.execute(
                select(api_keys.c.id, api_keys.c.name, api_keys.c.prefix, api_keys.c.account_id,
                       accounts.c.name.label("account"), api_keys.c.created_at, api_keys.c.revoked_at,
                       api_keys.c.limit_hour, api_keys.c.limit_day, api_keys.c.limit_total, api_keys.c.allowed_ips)
                .join(accounts, accounts.c.id == api_keys.c.account_id).where(condition)
                .order_by(api_keys.c.id).limit(limit))).mappings().all())

    async def admin_keys(self, *, limit: int, after_id: int | None = None,
                         key_id: int | None = None) -> list[RowMapping]:
        """Admin keys in the order they were made, after `after_id`."""
        query = select(admin_keys.c.id, admin_keys.c.name, admin_keys.c.prefix, admin_keys.c.created_at,
                       admin_keys.c.revoked_at)
        if after_id is not None:
            query = query.where(admin_keys.c.id > after_id)
        if key_id is not None:
            query = query.where(admin_keys.c.id == key_id)
        async with self.db.read() as conn:
            return list((await conn.execute(query.order_by(admin_keys.c.id).limit(limit))).mappings().all())

    async def user_key(self, key_id: int) -> RowMapping | None:
        rows = await self.user_keys(limit=1, key_id=key_id)
        return rows[0] if rows else None

    async def admin_key(self, key_id: int) -> RowMapping | None:
        rows = await self.admin_keys(limit=1, key_id=key_id)
        return rows[0] if rows else None
