"""The store: the single source of truth for tasks, accounts, credits and server state."""

from __future__ import annotations

from sqlalchemy import text

from .accounts import (
    AccountStore,
    AdminKey,
    CreatedAdminKey,
    CreatedKey,
    InsufficientCredits,
    KeyGrant,
    KeyLimitExceeded,
    KeyLimits,
    NotFound,
)
from .admin import AdminStore
from .audit import AuditStore, cli_actor
from .callbacks import CallbackStore
from .db import Database, now_ms
from .notify import CALLBACKS_CHANNEL, TASKS_CHANNEL, TaskEvents, Wakeup
from .rate_limits import RateLimitStore
from .state import StateStore
from .tasks import AccountQueueFull, IdempotencyConflict, RequeueReport, TaskNotCancellable, TaskStore
from .workers import LiveWorker, WorkerStore


class Store:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.db = Database(url, pool_size=pool_size)
        # Wakes workers when a task is created (and a worker slot frees up).
        self.wakeup = Wakeup(self.db, TASKS_CHANNEL)
        # Wakes the delivery loop when a callback is owed, in this process or (PostgreSQL) any other.
        self.callback_wakeup = Wakeup(self.db, CALLBACKS_CHANNEL)
        self.accounts = AccountStore(self.db)
        self.callbacks = CallbackStore(self.db, self.callback_wakeup)
        # Wakes whoever waits on one task (Prefer: wait, the event stream, a worker's cancel).
        self.task_events = TaskEvents(self.db)
        self.tasks = TaskStore(self.db, self.wakeup, self.callbacks, self.task_events)
        self.state = StateStore(self.db)
        self.rate_limits = RateLimitStore(self.db)
        self.workers = WorkerStore(self.db)
        self.audit = AuditStore(self.db)
        # Cross-table reads of the admin API (every account's tasks, callbacks, ledger, keys).
        self.admin = AdminStore(self.db)

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        async with self.db.read() as conn:
            await conn.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        await self.db.migrate()

    async def close(self) -> None:
        await self.wakeup.close()
        await self.callback_wakeup.close()
        await self.task_events.close()
        await self.db.dispose()


__all__ = [
    "AccountQueueFull", "AccountStore", "AdminStore", "AuditStore", "CallbackStore", "CreatedKey", "Database",
    "IdempotencyConflict", "InsufficientCredits", "cli_actor", "AdminKey", "CreatedAdminKey", "KeyGrant",
    "KeyLimitExceeded", "KeyLimits", "TaskEvents", "TaskNotCancellable",
    "LiveWorker", "NotFound", "RateLimitStore", "RequeueReport", "StateStore", "Store", "TaskStore", "Wakeup",
    "WorkerStore", "now_ms",
]
