"""Alembic environment: the connection comes from marketgpt.serve.migrate (never from an ini file)."""

from alembic import context

from marketgpt.serve.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
