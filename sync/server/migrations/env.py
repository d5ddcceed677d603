"""Alembic environment: runs on the server's own ``Database`` (or a URL given to Alembic directly).

``Database.create_schema`` passes itself in ``config.attributes["database"]``;
the plain ``alembic`` command reads ``sqlalchemy.url`` instead. Either way the
target metadata is the one in ``sync.server.tables``. SQLite needs batch mode
for ALTER TABLE.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from sync.server.tables import metadata

config = context.config


def run_migrations_online() -> None:
    database = config.attributes.get("database")
    engine = database.engine if database is not None else create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
