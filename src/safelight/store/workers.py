"""Workers' heartbeats: which workers are alive, what they serve, how busy they are, and the state of
their circuit breakers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from .db import Database, now_ms
from .tables import workers

# A worker writes its row this often (more often with a short lease) ...
HEARTBEAT_SECONDS = 10.0
# ... and counts as alive while its row is younger than this.
LIVE_SECONDS = 3 * HEARTBEAT_SECONDS


@dataclass(frozen=True)
class LiveWorker:
    id: str
    host: str
    pid: int
    models: list[str]
    in_flight: int
    started_at: int
    last_seen: int
    # backend name -> {"state": "closed" | "open" | "half-open", "failures", "reason", "retryAt"}
    breakers: dict[str, dict[str, Any]] = field(default_factory=dict)


class WorkerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def beat(self, worker_id: str, *, host: str, pid: int, models: Sequence[str], in_flight: int,
                   started_at: int, breakers: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        """Write this worker's row now (insert on the first beat)."""
        at = now_ms()
        values = {"host": host[:255], "pid": pid, "models": json.dumps(sorted(models)), "in_flight": in_flight,
                  "last_seen": at, "breakers": json.dumps(breakers or {}, sort_keys=True)}
        async with self.db.write() as conn:
            updated = await conn.execute(update(workers).where(workers.c.id == worker_id).values(**values))
            if updated.rowcount:
                return
        try:
            async with self.db.write() as conn:
                await conn.execute(workers.insert().values(id=worker_id, started_at=started_at, **values))
        except IntegrityError:
            pass  # a concurrent beat of the same worker inserted it first

    async def gone(self, worker_id: str) -> None:
        """This worker stops: remove its row."""
        async with self.db.write() as conn:
            await conn.execute(delete(workers).where(workers.c.id == worker_id))

    async def live(self, max_age_ms: int) -> list[LiveWorker]:
        """Workers seen within `max_age_ms`, oldest first; older rows (crashed workers) are deleted."""
        cutoff = now_ms() - max_age_ms
        async with self.db.read() as conn:
            rows = (await conn.execute(select(workers).where(workers.c.last_seen >= cutoff)
                                       .order_by(workers.c.started_at))).mappings().all()
        return [LiveWorker(id=row["id"], host=row["host"], pid=row["pid"], models=json.loads(row["models"]),
                           in_flight=row["in_flight"], started_at=row["started_at"], last_seen=row["last_seen"],
                           breakers=json.loads(row["breakers"] or "{}"))
                for row in rows]

    async def forget_dead(self, max_age_ms: int) -> int:
        async with self.db.write() as conn:
            result = await conn.execute(delete(workers).where(workers.c.last_seen < now_ms() - max_age_ms))
            return int(result.rowcount)
