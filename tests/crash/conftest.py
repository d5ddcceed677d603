"""The kill -9 harness's fixtures; figures are printed at the end of the run (``tests.crash.figures``)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.crash import figures
from tests.pg import db_url, pg_url  # noqa: F401  (fixtures)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    outcome = yield
    figures.attach(outcome.get_result())
