"""Engines, transactions and migrations for SQLite (embedded) and PostgreSQL (scale-out)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def now_ms() -> int:
    return int(time.time() * 1000)


class Database:
    """Hands out read connections and serialized write transactions.

    SQLite allows one writer at a time. Writers here take an in-process lock and then
    `BEGIN IMMEDIATE`, so they queue in order instead of spinning on SQLITE_BUSY; readers
    use a separate pool and, under WAL, never wait for a writer. PostgreSQL needs neither:
    its row locks and conditional updates keep concurrent writers correct.
    """

    def __init__(self, url: str, *, echo: bool = False, pool_size: int = 10) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            connect_args = {"timeout": 30}
            self.write_engine = create_async_engine(url, echo=echo, pool_size=1, max_overflow=0,
                                                    connect_args=connect_args)
            self.read_engine = create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=0,
                                                   connect_args=connect_args)
            _configure_sqlite(self.write_engine, begin="BEGIN IMMEDIATE")
            _configure_sqlite(self.read_engine, begin="BEGIN")
            self._write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            self.write_engine = create_async_engine(url, echo=echo, pool_size=pool_size, max_overflow=pool_size,
                                                    pool_pre_ping=True)
            self.read_engine = self.write_engine
            self._write_lock = None

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction that commits on success and rolls back on any exception."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.write_engine.begin() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.read_engine.connect() as conn:
            yield conn

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (safe to run from several replicas)."""
        if self.is_sqlite:
            Path(self.url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        async with self.write() as conn:
            if not self.is_sqlite:
                # Replicas starting together must not race each other through the migration.
                await conn.execute(text("SELECT pg_advisory_xact_lock(7461626)"))
            await conn.run_sync(_upgrade)

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _upgrade(sync_conn: Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = sync_conn
    command.upgrade(cfg, "head")


def _configure_sqlite(engine: AsyncEngine, *, begin: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: object) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: durable across a process crash, fsync only at checkpoints.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(begin)
