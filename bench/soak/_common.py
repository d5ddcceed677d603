"""What the soak scripts share: the machine line, the JSON figures line, clean stops.

The harness logic itself lives in ``tests/`` (``tests/crash/harness.py``,
``tests/reliability/bundle_fuzz.py``); this module only reports.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import signal
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a file (python bench/soak/x.py) as well as with -m
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """Where and when: the facts a figure needs to be compared with another run's."""
    u = platform.uname()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"host": u.node, "kernel": f"{u.system} {u.release}", "arch": u.machine, "cpus": os.cpu_count(),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version, "load_avg": load,
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}


def emit(fig: dict[str, Any]) -> None:
    """One JSON line on stdout (sync.md §6.7), flushed at once so a log tail shows it."""
    print(json.dumps(fig, ensure_ascii=False, sort_keys=False), flush=True)


def say(msg: str) -> None:
    """Progress goes to stderr: stdout keeps only the figures and the summary."""
    print(msg, file=sys.stderr, flush=True)


def stop_on_sigterm() -> None:
    """SIGTERM (timeout, systemd, a shell's kill) unwinds like Ctrl-C, so the harness's
    ``finally`` kills every process it started and the throw-away PostgreSQL is stopped."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def quiet_logging() -> None:
    """The code under test logs every refusal at WARNING; thousands of them per second are noise here
    (the verdicts are counted instead). Errors still show."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s %(message)s")


def seed_arg(value: int | None) -> int:
    from tests.crash.harness import seed_from_env

    return value if value is not None else seed_from_env()


def section67_violations(fig: dict[str, Any], *, fault_run: bool) -> list[str]:
    """The "must be" column of sync.md §6.7 for a run without disk-full (no declared holes)."""
    out = []
    for key in ("lost", "duplicates_stored", "conflicts", "gaps_declared", "gaps_undeclared"):
        if fig.get(key):
            out.append(f"{key} = {fig[key]} (must be 0)")
    if not fig.get("events_committed"):
        out.append("no event was committed: the run proves nothing")
    if fig.get("events_stored", 0) < fig.get("events_committed", 0):
        out.append(f"events_stored {fig.get('events_stored')} < events_committed {fig.get('events_committed')}")
    if fig.get("events_acked") != fig.get("events_stored"):
        out.append(f"events_acked {fig.get('events_acked')} != events_stored {fig.get('events_stored')}")
    if fig.get("events_sent", 0) < fig.get("events_stored", 0):
        out.append(f"events_sent {fig.get('events_sent')} < events_stored {fig.get('events_stored')}")
    if fault_run and not fig.get("duplicates_received"):
        out.append("duplicates_received = 0 in a fault run: no re-send was seen, the faults did not bite")
    return out


def tally(fig: dict[str, Any]) -> dict[str, int]:
    """The five numbers the issue asks for, from a §6.7 figures line."""
    return {"created": int(fig.get("events_committed", 0)), "acked": int(fig.get("events_acked", 0)),
            "stored": int(fig.get("events_stored", 0)), "duplicated": int(fig.get("duplicates_stored", 0)),
            "missing": int(fig.get("lost", 0)) + int(fig.get("gaps_undeclared", 0))}
