"""The store: the single source of truth for tasks, accounts, credits and server state."""

from __future__ import annotations

from .accounts import AccountStore, CreatedKey, InsufficientCredits, NotFound
from .db import Database, now_ms
from .notify import Wakeup
from .state import StateStore
from .tasks import RequeueReport, TaskStore


class Store:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.db = Database(url, pool_size=pool_size)
        self.wakeup = Wakeup(self.db)
        self.accounts = AccountStore(self.db)
        self.tasks = TaskStore(self.db, self.wakeup)
        self.state = StateStore(self.db)

    async def migrate(self) -> None:
        await self.db.migrate()

    async def close(self) -> None:
        await self.wakeup.close()
        await self.db.dispose()


__all__ = ["AccountStore", "CreatedKey", "Database", "InsufficientCredits", "NotFound", "RequeueReport",
           "StateStore", "Store", "TaskStore", "Wakeup", "now_ms"]
