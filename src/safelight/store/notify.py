"""Waking workers when a task is created, and the delivery loop when a callback is owed, without polling.

In one process an asyncio.Event does it. Across processes on PostgreSQL, the writing
transaction sends NOTIFY and every listener LISTENs on a dedicated connection; the
notification is delivered only if that transaction commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database

log = logging.getLogger(__name__)
TASKS_CHANNEL = "safelight_tasks"
CALLBACKS_CHANNEL = "safelight_callbacks"


class _Listener:
    """One dedicated connection that LISTENs on a channel and calls `on_payload` for each
    notification (PostgreSQL only; on SQLite everything is in one process and this does nothing)."""

    def __init__(self, db: Database, channel: str, on_payload: Callable[[str], None]) -> None:
        self.db = db
        self.channel = channel
        self.on_payload = on_payload
        self._conn: AsyncConnection | None = None

    async def start(self) -> None:
        if self.db.is_sqlite or self._conn is not None:
            return
        self._conn = await self.db.write_engine.connect()
        raw = await self._conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None, "LISTEN needs an open asyncpg connection"
        # asyncpg calls back with (connection, pid, channel, payload).
        await driver.add_listener(self.channel, lambda *args: self.on_payload(str(args[-1])))
        log.info("listening for notifications on %s", self.channel)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


class Wakeup:
    def __init__(self, db: Database, channel: str = TASKS_CHANNEL) -> None:
        self.db = db
        self.channel = channel
        self._event = asyncio.Event()
        self._listener = _Listener(db, channel, lambda _payload: self._event.set())

    async def notify_in_transaction(self, conn: AsyncConnection, payload: str = "") -> None:
        if not self.db.is_sqlite:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                               {"channel": self.channel, "payload": payload})

    def poke(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Until poked or timeout; True if poked. The poke is consumed."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the event is set, and a stopping loop would then run on.
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            self._event.clear()

    async def listen(self) -> None:
        """Start receiving other processes' notifications on this channel (PostgreSQL only)."""
        await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()


TASK_EVENTS_CHANNEL = "safelight_task_events"


class TaskEvents:
    """Wake-ups per task: "this task changed" (state, progress, cancel), in this process and, on
    PostgreSQL, in every process that listens. Waiters re-read the task from the store; an event
    carries nothing but the task id, so a missed or duplicated one is harmless.

    `Prefer: wait`, the event stream and a worker's cancel all wait on these instead of polling,
    and hold no database connection while they wait."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._listener = _Listener(db, TASK_EVENTS_CHANNEL, lambda task_id: self.publish([task_id]))

    async def notify_in_transaction(self, conn: AsyncConnection, task_ids: Iterable[str]) -> None:
        """Tell other processes, when this transaction commits (PostgreSQL only)."""
        if self.db.is_sqlite:
            return
        for task_id in task_ids:
            await conn.execute(text("SELECT pg_notify(:channel, :payload)"),
                               {"channel": TASK_EVENTS_CHANNEL, "payload": task_id})

    def publish(self, task_ids: Iterable[str]) -> None:
        """Wake this process's waiters on these tasks (after the change committed)."""
        for task_id in task_ids:
            for event in self._waiters.get(task_id, ()):
                event.set()

    @contextlib.contextmanager
    def subscribe(self, task_id: str, event: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
        """An event set whenever the task changes; clear it before re-reading the task. Pass one
        `event` to several subscriptions to hear of any of several tasks."""
        event = event or asyncio.Event()
        self._waiters.setdefault(task_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiters.get(task_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[task_id]

    async def listen(self) -> None:
        """Receive other processes' task events (PostgreSQL only)."""
        await self._listener.start()

    async def close(self) -> None:
        await self._listener.close()
