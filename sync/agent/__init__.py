"""The sync agent (``checkpoint sync run``): a process of its own beside the gate (sync.md §3-§4).

| module          | holds                                                                  |
|-----------------|------------------------------------------------------------------------|
| ``core``        | ``Agent``: the main loop, start-up, heartbeats, rebase                 |
| ``upload``      | ordered signed upload, the response table of §3.4, damaged rows        |
| ``flash``       | urgent copies ahead of the backlog (§3.6)                              |
| ``storage``     | storage levels, pressure pruning, ``reserve.bin``, retention (§1.7-1.8)|
| ``heartbeat``   | heartbeat bodies from real status (§4.2)                               |
| ``gate_status`` | the status the gate process publishes for heartbeats (its contract)    |
| ``fetcher``     | the HTTP ``Fetcher`` of the bundle update (bundles.md §3)              |
| ``bundlepoll``  | the poll rhythm of bundles.md §4.3, in its own thread                  |
| ``enroll``      | enrolment and the venue binding (§2.3)                                 |
| ``timing``      | backoff, poll timer, server-time estimate (§2.5, §3.4)                 |
| ``notify``      | systemd readiness and watchdog (hardware.md §4.4)                      |

Importing this package stays cheap (the gate process imports ``gate_status``);
the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Agent", "AgentBusy", "EnrollError", "GateStatus", "HttpFetcher", "NotEnrolled", "enroll",
           "write_gate_status"]

_WHERE = {
    "Agent": "core", "AgentBusy": "core", "NotEnrolled": "core",
    "EnrollError": "enroll", "enroll": "enroll",
    "GateStatus": "gate_status", "write_gate_status": "gate_status",
    "HttpFetcher": "fetcher",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"sync.agent.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sync.agent' has no attribute {name!r}")
