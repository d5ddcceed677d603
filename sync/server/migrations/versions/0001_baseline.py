"""Baseline: schema version 1 (sync.md §5.2-5.3).

A new database is made by ``metadata.create_all()`` plus a ``schema_version``
row and stamped with this revision (sync.md §5.1: "migrations with Alembic from
the first change on"). Every later change of ``sync/server/tables.py`` comes
with a revision here that moves an existing database to it and updates
``schema_version``.

Revision ID: 0001
Revises:
Create Date: 2022-04-12
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to do: version 1 is created by ``create_all`` on an empty database."""


def downgrade() -> None:
    """Version 1 is the first schema; there is nothing below it."""
