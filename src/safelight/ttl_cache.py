"""A tiny time-bounded cache for facts read on every request (key lookups, maintenance flag)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Entries expire `ttl` seconds after they were put; at most `max_items` are kept."""

    def __init__(self, ttl: float, max_items: int = 10_000) -> None:
        self.ttl = ttl
        self.max_items = max_items
        self._items: dict[K, tuple[V, float]] = {}
        self._loading: dict[K, asyncio.Future[V]] = {}

    def get(self, key: K) -> V | None:
        hit = self._items.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        if len(self._items) >= self.max_items:
            self._items.clear()
        self._items[key] = (value, time.monotonic() + self.ttl)

    def clear(self) -> None:
        self._items.clear()

    async def get_or_load(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The cached value, or `load()`'s. Concurrent misses share one load: when an entry expires
        under load, one read goes to the store instead of one per waiting request."""
        hit = self._items.get(key)
        if hit is not None and hit[1] >= time.monotonic():
            return hit[0]
        loading = self._loading.get(key)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value = await load()
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it on their own
            else:
                future.cancel()
            raise
        finally:
            del self._loading[key]
        self.put(key, value)
        future.set_result(value)
        return value
