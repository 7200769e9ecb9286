"""Throttled progress reports: backends may call from any thread, the store sees <= 2 writes/s per task."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class ProgressReporter:
    def __init__(self, loop: asyncio.AbstractEventLoop, write: Callable[[int], Awaitable[object]],
                 min_interval: float = 0.5) -> None:
        self._loop = loop
        self._write = write
        self._min_interval = min_interval
        self._last_write = 0.0
        self._latest = 0
        self._pending = False
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, percent: int) -> None:
        self._latest = percent
        if percent >= 100:
            return  # the task's success records 100 itself: one write fewer per task
        if self._pending or time.monotonic() - self._last_write < self._min_interval:
            return
        self._pending = True
        self._loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        task = self._loop.create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        self._last_write = time.monotonic()
        try:
            await self._write(self._latest)
        finally:
            self._pending = False
