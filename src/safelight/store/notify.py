"""Waking workers when a task is created, and the delivery loop when a callback is owed, without polling.

In one process an asyncio.Event does it. Across processes on PostgreSQL, the writing
transaction sends NOTIFY and every listener LISTENs on a dedicated connection; the
notification is delivered only if that transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database

log = logging.getLogger(__name__)
TASKS_CHANNEL = "safelight_tasks"
CALLBACKS_CHANNEL = "safelight_callbacks"


class Wakeup:
    def __init__(self, db: Database, channel: str = TASKS_CHANNEL) -> None:
        self.db = db
        self.channel = channel
        self._event = asyncio.Event()
        self._listen_conn: AsyncConnection | None = None

    async def notify_in_transaction(self, conn: AsyncConnection, payload: str = "") -> None:
        if not self.db.is_sqlite:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                               {"channel": self.channel, "payload": payload})

    def poke(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Until poked or timeout; True if poked. The poke is consumed."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()

    async def listen(self) -> None:
        """Start receiving other processes' notifications on this channel (PostgreSQL only)."""
        if self.db.is_sqlite or self._listen_conn is not None:
            return
        self._listen_conn = await self.db.write_engine.connect()
        raw = await self._listen_conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None, "LISTEN needs an open asyncpg connection"
        await driver.add_listener(self.channel, lambda *_args: self._event.set())
        log.info("listening for notifications on %s", self.channel)

    async def close(self) -> None:
        if self._listen_conn is not None:
            with contextlib.suppress(Exception):
                await self._listen_conn.close()
            self._listen_conn = None
