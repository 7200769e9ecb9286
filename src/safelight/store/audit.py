"""The audit log: every change an operator makes, through the admin API, the console or the CLI."""

from __future__ import annotations

import getpass
import json
import socket
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .db import Database, now_ms
from .tables import audit_log


def cli_actor() -> str:
    """The actor of a change made with the `safelight` CLI on this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = "unknown"
    return f"cli ({user}@{socket.gethostname()})"[:200]


async def write_audit(conn: AsyncConnection, *, actor: str, action: str, target: str,
                      detail: dict[str, Any] | None = None) -> None:
    """Write one entry in the caller's transaction, so the change and its record commit together."""
    await conn.execute(insert(audit_log).values(at=now_ms(), actor=actor[:200], action=action[:64],
                                                target=target[:200], detail=json.dumps(detail or {})))


class AuditStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, *, action: str | None = None, limit: int = 50,
                   before_id: int | None = None) -> list[dict[str, Any]]:
        """Entries newest first; `before_id` continues a page."""
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if action is not None:
            query = query.where(audit_log.c.action == action)
        if before_id is not None:
            query = query.where(audit_log.c.id < before_id)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [{"id": row["id"], "at": row["at"], "actor": row["actor"], "action": row["action"],
                 "target": row["target"], "detail": json.loads(row["detail"])} for row in rows]
