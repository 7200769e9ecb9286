"""The store: the single source of truth for tasks, accounts, credits and server state."""

from __future__ import annotations

import asyncio

from .accounts import AccountStore, CreatedKey, InsufficientCredits, NotFound
from .callbacks import CallbackStore
from .db import Database, now_ms
from .notify import Wakeup
from .state import StateStore
from .tasks import RequeueReport, TaskStore


class Store:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.db = Database(url, pool_size=pool_size)
        self.wakeup = Wakeup(self.db)
        self.accounts = AccountStore(self.db)
        # The delivery loop sets this hook to hear about new outbox rows at once.
        self.callbacks = CallbackStore(self.db, on_enqueue=lambda: self.callback_wakeup.set())
        self.callback_wakeup = asyncio.Event()
        self.tasks = TaskStore(self.db, self.wakeup, self.callbacks)
        self.state = StateStore(self.db)

    async def migrate(self) -> None:
        await self.db.migrate()

    async def close(self) -> None:
        await self.wakeup.close()
        await self.db.dispose()


__all__ = ["AccountStore", "CallbackStore", "CreatedKey", "Database", "InsufficientCredits", "NotFound",
           "RequeueReport", "StateStore", "Store", "TaskStore", "Wakeup", "now_ms"]
