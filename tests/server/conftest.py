"""Fixtures of the server suite: every test runs on SQLite and on a real PostgreSQL (sync.md §5.10)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import db_url, pg_url  # noqa: F401  (fixtures)
from tests.server.harness import ServerHarness


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[ServerHarness]:  # noqa: F811
    h = ServerHarness(db_url, tmp_path)
    yield h
    h.close()
