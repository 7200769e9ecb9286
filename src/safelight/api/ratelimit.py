"""Per-key request limits (kie: 20 creates per 10 s): at most `limit` requests per `window` seconds.

On PostgreSQL the counts live in the store, so every API replica enforces one limit together; on
SQLite (one process serves the API) they live in this process. Either way a refusal carries the
real time until the window admits the next request, as HTTP Retry-After.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from safelight.store import Store


class RateLimiter(Protocol):
    limit: int
    window: float

    async def hit(self, key: str) -> float | None:
        """Count a request: None if admitted, else the seconds until one would be."""


class MemoryRateLimiter:
    """A sliding log per key, in this process."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}

    async def hit(self, key: str) -> float | None:
        now = time.monotonic()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            return events[0] + self.window - now  # when the oldest request leaves the window
        events.append(now)
        if len(self._events) > 100_000:  # forget idle keys rather than grow without bound
            self._events = {k: v for k, v in self._events.items() if v and v[-1] > now - self.window}
        return None


class SharedRateLimiter:
    """Counts in the store, shared by every replica (PostgreSQL)."""

    def __init__(self, store: Store, limit: int, window: float) -> None:
        self.store = store
        self.limit = limit
        self.window = window

    async def hit(self, key: str) -> float | None:
        return await self.store.rate_limits.hit(key, self.limit, self.window)


def rate_limiter_for(store: Store, limit: int, window: float) -> RateLimiter | None:
    if limit <= 0:
        return None
    if store.db.is_sqlite:
        return MemoryRateLimiter(limit, window)
    return SharedRateLimiter(store, limit, window)
