"""The schema. Portable SQLAlchemy types only: the same tables run on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so Alembic migrations are identical on both engines.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    # Always equal to the sum of this account's credit_ledger rows; kept here so a
    # reservation is one conditional UPDATE (balance >= cost), race-free on both engines.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    webhook_key: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[int] = mapped_column(BigInteger)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    # SHA-256 of the key: keys are 180-bit random, so a slow hash buys nothing.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class CreditEntry(Base):
    __tablename__ = "credit_ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    task_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    # grant | reserve | refund
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[int] = mapped_column(BigInteger)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    model: Mapped[str] = mapped_column(String(100))
    # waiting -> queuing -> generating -> success | fail
    state: Mapped[str] = mapped_column(String(16))
    # The whole createTask body, as a JSON string, exactly as recordInfo returns it.
    param: Mapped[str] = mapped_column(Text)
    callback_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    num_images: Mapped[int] = mapped_column(Integer, default=1)
    credits_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_consumed: Mapped[int] = mapped_column(BigInteger, default=0)
    # {"files": [storage keys], "seeds": [...]} once the task succeeds.
    result: Mapped[str | None] = mapped_column(Text, nullable=True)
    fail_code: Mapped[str] = mapped_column(String(32), default="")
    fail_msg: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[int | None] = mapped_column(Integer, nullable=True)
    backend: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # Tasks with equal keys (model, pixel size, no per-task references) can run in one pipeline call.
    batch_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # JSON list of {"backend", "outcome", "failCode", "detail", "at"}: which backends were tried, in order.
    backend_attempts: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    create_time: Mapped[int] = mapped_column(BigInteger)
    update_time: Mapped[int] = mapped_column(BigInteger)
    start_time: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    complete_time: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Set when retention removed the result files; the record itself stays.
    files_deleted: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (
        # The claim query: oldest waiting task of the models a worker serves.
        Index("ix_tasks_state_model_create", "state", "model", "create_time"),
        Index("ix_tasks_account_create", "account_id", "create_time"),
        Index("ix_tasks_state_lease", "state", "lease_expires_at"),
        Index("ix_tasks_state_batch_create", "state", "batch_key", "create_time"),
    )


class ServerState(Base):
    """Small shared key/value facts: URL-signing secret, maintenance flag, disabled models."""

    __tablename__ = "server_state"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CallbackDelivery(Base):
    """The callback outbox: one row per delivery of a task's terminal state to its callBackUrl.

    Written in the transaction that finishes the task, so a callback is never lost; sent by the
    delivery loop, so a slow receiver never holds a worker.
    """

    __tablename__ = "callback_deliveries"

    # Also the Standard Webhooks `webhook-id`: stable across retries of this delivery.
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_id: Mapped[str] = mapped_column(String(32), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    url: Mapped[str] = mapped_column(Text)
    # pending -> delivered | failed
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    delivered_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_callback_deliveries_status_next", "status", "next_attempt_at"),)


class CallbackAttempt(Base):
    """The delivery log: every attempt, with its outcome."""

    __tablename__ = "callback_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("callback_deliveries.id"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[int] = mapped_column(BigInteger)
    status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    latency_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text, default="")
