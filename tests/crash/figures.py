"""Figures of the kill -9, fault and disk-full runs (sync.md §6.7): one JSON line each.

``report`` prints the line (visible with ``-s`` and in a failure's captured output), keeps it
for the "reliability figures" section at the end of the pytest run (the conftests of
``tests/crash`` and ``tests/reliability`` call ``summary``) and appends it to
``test-artifacts/reliability/figures.jsonl``.
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


def summary(terminalreporter: Any) -> None:
    global _shown
    if _shown or not _FIGURES:
        return
    _shown = True
    terminalreporter.section("reliability figures (sync.md §6.7)")
    for fig in _FIGURES:
        terminalreporter.write_line(json.dumps(fig, ensure_ascii=False))
