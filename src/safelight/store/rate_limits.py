"""Per-key request counts shared by every API replica (PostgreSQL).

A sliding window approximated from two fixed windows, as Cloudflare and Redis cells do: the
estimate is `previous × (1 − elapsed fraction) + current`. A request is counted only when it is
admitted, under a row lock, so concurrent replicas never admit more than the limit between them.
"""

from __future__ import annotations

import hashlib
import math

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .db import Database, now_ms
from .tables import rate_limit_windows as windows

# Old windows are deleted every this many hits (per process).
CLEANUP_EVERY = 1000


def retry_after(limit: int, window: float, elapsed: float, previous: int, current: int) -> float:
    """Seconds until `previous × (1 − (elapsed + x)/window) + current + 1 <= limit`, over one window roll."""
    if current + 1 <= limit and previous > 0:
        wait = window * (1 - (limit - 1 - current) / previous) - elapsed
        if elapsed + wait <= window:
            return max(wait, 0.0)
    # Not before the current window ends: then the current count becomes the previous one.
    if current == 0:
        return max(window - elapsed, 0.0)
    next_start = window - elapsed
    wait = window * (2 - (limit - 1) / current) - elapsed
    return max(wait, next_start, 0.0)


class RateLimitStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._hits = 0

    async def hit(self, key: str, limit: int, window_seconds: float) -> float | None:
        """Count one request for `key` if the window admits it: None; else seconds until it would."""
        window_ms = max(1, int(window_seconds * 1000))
        at = now_ms()
        current_start = at // window_ms * window_ms
        previous_start = current_start - window_ms
        key_hash = hashlib.sha256(key.encode()).hexdigest()
        async with self.db.write() as conn:
            await conn.execute(pg_insert(windows).values(key_hash=key_hash, window_start=current_start, hits=0)
                               .on_conflict_do_nothing())
            counts = dict((await conn.execute(
                select(windows.c.window_start, windows.c.hits)
                .where(windows.c.key_hash == key_hash, windows.c.window_start.in_([previous_start, current_start]))
                .with_for_update())).all())
            previous, current = int(counts.get(previous_start, 0)), int(counts.get(current_start, 0))
            elapsed = (at - current_start) / window_ms
            if math.floor(previous * (1 - elapsed)) + current + 1 > limit:
                return retry_after(limit, window_seconds, elapsed * window_seconds, previous, current)
            await conn.execute(update(windows).where(and_(windows.c.key_hash == key_hash,
                                                          windows.c.window_start == current_start))
                               .values(hits=windows.c.hits + 1))
            self._hits += 1
            if self._hits % CLEANUP_EVERY == 0:
                await conn.execute(delete(windows).where(windows.c.window_start < previous_start))
        return None
