"""Figures of the kill -9, fault and disk-full runs (sync.md §6.7): one JSON line each.

``report`` prints the line (visible with ``-s`` and in a failure's captured output), keeps it
for the "reliability figures" section at the end of the pytest run and appends it to
``test-artifacts/reliability/figures.jsonl``. The conftests of ``tests/crash`` and
``tests/reliability`` move the kept lines into the test's report (``attach``), so the section
is written by whichever process writes the terminal: the run itself, or the controller of a
``pytest -n`` run whose workers ran the tests (``summary``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability"
_FIGURES: list[dict[str, Any]] = []
_shown = False


def report(figures: dict[str, Any]) -> str:
    line = json.dumps(figures, ensure_ascii=False)
    print(line)
    _FIGURES.append(figures)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with (ARTIFACTS / "figures.jsonl").open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    return line


_PROPERTY = "reliability_figures"


def attach(rep: Any) -> None:
    """Move the figures reported so far into a test report (its ``user_properties`` travel to
    the controller of a pytest-xdist run)."""
    while _FIGURES:
        rep.user_properties.append((_PROPERTY, json.dumps(_FIGURES.pop(0), ensure_ascii=False)))


def summary(terminalreporter: Any) -> None:
    global _shown
    if _shown:
        return
    lines = [value for reports in terminalreporter.stats.values() for rep in reports
             for name, value in getattr(rep, "user_properties", ()) if name == _PROPERTY]
    lines += [json.dumps(fig, ensure_ascii=False) for fig in _FIGURES]
    if not lines:
        return
    _shown = True
    terminalreporter.section("reliability figures (sync.md §6.7)")
    for line in lines:
        terminalreporter.write_line(line)
