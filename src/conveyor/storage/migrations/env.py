"""Alembic environment: migrations always run on a connection handed over by `engine.py`."""

from alembic import context

from conveyor.storage.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through conveyor.storage.engine.migrate_database")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
