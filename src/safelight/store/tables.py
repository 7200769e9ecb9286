"""The schema. Portable SQLAlchemy Core types only: the same tables run on SQLite and PostgreSQL.

The store reads and writes rows with Core statements, never ORM objects, so the tables are plain
`Table`s; Alembic compares migrations against `metadata`.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

# Stable constraint names, so Alembic migrations are identical on both engines.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

accounts = Table(
    "accounts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    # Always equal to the sum of this account's credit_ledger rows; kept here so a
    # reservation is one conditional UPDATE (balance >= cost), race-free on both engines.
    Column("balance", BigInteger, nullable=False, default=0),
    Column("webhook_key", String(100), nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False, index=True),
    Column("name", String(100), nullable=False),
    # SHA-256 of the key: keys are 180-bit random, so a slow hash buys nothing.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    # Per-key credit caps (kie's sub-key limits): credits charged to this key's tasks per rolling hour,
    # rolling day and in all; NULL = no cap. Exceeding one refuses createTask with code 433.
    Column("limit_hour", BigInteger, nullable=True),
    Column("limit_day", BigInteger, nullable=True),
    Column("limit_total", BigInteger, nullable=True),
    # JSON list of CIDRs the key may be used from; NULL = anywhere.
    Column("allowed_ips", Text, nullable=True),
)

# Keys of the operator console and the admin API. A separate table, so an admin key can never act as
# a user key (it has no account and cannot create tasks) and a user key never reaches /api/admin.
admin_keys = Table(
    "admin_keys", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
)

# Every change an operator makes (admin API, console, CLI): who, what, when.
audit_log = Table(
    "audit_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", BigInteger, nullable=False),
    # "admin key ops (sla_AbCdEf)" or "cli (user@host)"
    Column("actor", String(200), nullable=False),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(200), nullable=False),
    # JSON object: the change's parameters (never a secret).
    Column("detail", Text, nullable=False),
)

credit_ledger = Table(
    "credit_ledger", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False, index=True),
    Column("task_id", String(32), nullable=True, index=True),
    # grant | adjust | reserve | refund
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("note", String(200), nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
)

tasks = Table(
    "tasks", metadata,
    Column("id", String(32), primary_key=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("model", String(100), nullable=False),
    # safelight.kie.TaskState: waiting -> queuing -> generating -> success | fail
    Column("state", String(16), nullable=False),
    # The whole createTask body, as a JSON string, exactly as recordInfo returns it.
    Column("param", Text, nullable=False),
    Column("callback_url", Text, nullable=True),
    Column("num_images", Integer, nullable=False, default=1),
    Column("credits_reserved", BigInteger, nullable=False, default=0),
    Column("credits_consumed", BigInteger, nullable=False, default=0),
    # {"files": [storage keys], "seeds": [...]} once the task succeeds.
    Column("result", Text, nullable=True),
    Column("fail_code", String(32), nullable=False, default=""),
    Column("fail_msg", Text, nullable=False, default=""),
    Column("progress", Integer, nullable=True),
    Column("backend", String(100), nullable=True),
    # Tasks with equal keys (model, pixel size, no per-task references) can run in one pipeline call.
    Column("batch_key", String(200), nullable=True),
    # JSON list of {"backend", "outcome", "failCode", "detail", "at"}: which backends were tried, in order.
    Column("backend_attempts", Text, nullable=True),
    # How many times a worker claimed the task; a task whose workers keep dying fails at max_claims.
    Column("claims", Integer, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", BigInteger, nullable=True),
    Column("create_time", BigInteger, nullable=False),
    Column("update_time", BigInteger, nullable=False),
    Column("start_time", BigInteger, nullable=True),
    Column("complete_time", BigInteger, nullable=True),
    # Set when retention removed the result files; the record itself stays.
    Column("files_deleted", Boolean, nullable=False, default=False),
    # The W3C traceparent of createTask's span (with the [otel] extra): every process joins that trace.
    Column("trace_context", String(64), nullable=True),
    # Cancel-After: a task not finished by then is cancelled by whichever process sweeps first.
    Column("cancel_at", BigInteger, nullable=True, index=True),
    # The API key the task was created with (per-key caps count its tasks); NULL before 0.3.
    Column("api_key_id", Integer, nullable=True),
    # The claim query: oldest waiting task of the models a worker serves.
    Index("ix_tasks_state_model_create", "state", "model", "create_time"),
    Index("ix_tasks_account_create", "account_id", "create_time"),
    # The per-account cap on unfinished tasks counts these.
    Index("ix_tasks_account_state", "account_id", "state"),
    Index("ix_tasks_state_lease", "state", "lease_expires_at"),
    Index("ix_tasks_state_batch_create", "state", "batch_key", "create_time"),
    Index("ix_tasks_api_key_create", "api_key_id", "create_time"),
)

# Per-key request counts of fixed windows, shared by API replicas on PostgreSQL (store/rate_limits.py).
rate_limit_windows = Table(
    "rate_limit_windows", metadata,
    # SHA-256 of the API key, never the key itself.
    Column("key_hash", String(64), primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("hits", Integer, nullable=False, default=0),
)

# Idempotency-Key: the same account sending the same key and body within 24 h gets the same task.
idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("account_id", ForeignKey("accounts.id"), primary_key=True),
    Column("key", String(255), primary_key=True),
    # SHA-256 of the request (model, callBackUrl, input), to refuse the same key with another body.
    Column("request_hash", String(64), nullable=False),
    Column("task_id", String(32), nullable=False),
    Column("created_at", BigInteger, nullable=False, index=True),
)

# Small shared key/value facts: URL-signing secret, maintenance flag, disabled models.
server_state = Table(
    "server_state", metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# The callback outbox: one row per delivery of a task's terminal state to its callBackUrl.
# Written in the transaction that finishes the task, so a callback is never lost; sent by the
# delivery loop, so a slow receiver never holds a worker.
callback_deliveries = Table(
    "callback_deliveries", metadata,
    # Also the Standard Webhooks `webhook-id`: stable across retries of this delivery.
    Column("id", String(40), primary_key=True),
    Column("task_id", String(32), nullable=False, index=True),
    Column("account_id", ForeignKey("accounts.id"), nullable=False),
    Column("url", Text, nullable=False),
    # pending -> delivered | failed
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("last_error", Text, nullable=False, default=""),
    Column("created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger, nullable=True),
    Index("ix_callback_deliveries_status_next", "status", "next_attempt_at"),
)

# The delivery log: every attempt, with its outcome.
callback_attempts = Table(
    "callback_attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", ForeignKey("callback_deliveries.id"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("at", BigInteger, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("latency_ms", Integer, nullable=False),
    Column("error", Text, nullable=False, default=""),
)

# Live workers: each writes its row every few seconds (heartbeat) and deletes it when it stops.
workers = Table(
    "workers", metadata,
    Column("id", String(100), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    # JSON list of the public model ids this worker claims tasks for.
    Column("models", Text, nullable=False),
    Column("in_flight", Integer, nullable=False, default=0),
    Column("started_at", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False, index=True),
    # JSON object: backend name -> its circuit breaker as this worker sees it ({"state", "failures",
    # "reason", "retryAt"}); NULL for workers older than 0.3.
    Column("breakers", Text, nullable=True),
)
