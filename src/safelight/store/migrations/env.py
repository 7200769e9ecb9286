"""Alembic environment. Safelight runs migrations in-process (`Database.migrate`), handing in a connection."""

from alembic import context

from safelight.store.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `safelight migrate`, which provides the connection")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
