"""Shared server facts in the store, so every replica and the CLI see the same values."""

from __future__ import annotations

import json
import secrets

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .audit import write_audit
from .db import Database
from .tables import server_state


class StateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str) -> str | None:
        async with self.db.read() as conn:
            return (await conn.execute(select(server_state.c.value).where(server_state.c.key == key))
                    ).scalar_one_or_none()

    async def put(self, key: str, value: str) -> None:
        async with self.db.write() as conn:
            await _upsert(conn, key, value)

    async def secret_key(self) -> str:
        """The URL-signing secret, created once and shared by all replicas through the store."""
        existing = await self.get("secret_key")
        if existing:
            return existing
        try:
            async with self.db.write() as conn:
                await conn.execute(server_state.insert().values(key="secret_key", value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another replica created it first; use theirs
        return await self.get("secret_key") or ""

    async def maintenance(self) -> bool:
        return await self.get("maintenance") == "on"

    async def set_maintenance(self, on: bool, *, actor: str | None = None) -> None:
        """Maintenance on or off; with an `actor`, the audit log records who did it, in the same transaction."""
        async with self.db.write() as conn:
            await _upsert(conn, "maintenance", "on" if on else "off")
            if actor is not None:
                await write_audit(conn, actor=actor, action="maintenance.on" if on else "maintenance.off",
                                  target="server", detail={})

    async def disabled_models(self) -> set[str]:
        return set(json.loads(await self.get("disabled_models") or "[]"))

    async def set_model_enabled(self, model_id: str, enabled: bool, *, actor: str | None = None) -> set[str]:
        """Enable or disable a model; returns the disabled models. With an `actor`, audited."""
        async with self.db.write() as conn:
            current = (await conn.execute(select(server_state.c.value)
                                          .where(server_state.c.key == "disabled_models"))).scalar_one_or_none()
            disabled: set[str] = set(json.loads(current or "[]"))
            if enabled:
                disabled.discard(model_id)
            else:
                disabled.add(model_id)
            await _upsert(conn, "disabled_models", json.dumps(sorted(disabled)))
            if actor is not None:
                await write_audit(conn, actor=actor, action="model.enable" if enabled else "model.disable",
                                  target=f"model {model_id}", detail={})
        return disabled


async def _upsert(conn: AsyncConnection, key: str, value: str) -> None:
    # Portable upsert: the row count tells whether the key existed.
    result = await conn.execute(server_state.update().where(server_state.c.key == key).values(value=value))
    if result.rowcount == 0:
        await conn.execute(server_state.insert().values(key=key, value=value))
