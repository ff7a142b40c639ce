"""Alembic's entry: coordd hands it an open connection (coordinator/migrations/__init__.py);
there is no alembic.ini and no offline (SQL script) mode."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
