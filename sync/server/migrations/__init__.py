"""Alembic migrations of the server schema (sync.md §5.1): run by ``Database.create_schema``."""
