"""The upstream server (sync.md §5): ingest, bundle distribution, fleet, audit, dashboard.

``open_state(config)`` opens the database and keys; ``create_app(state)`` gives
the ASGI app; ``checkpoint server run`` (``sync.server.cli``) runs it. The names
are imported on first use, so shell commands that only need the database
(``checkpoint server token create``) do not pay for FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ServerConfig", "ServerState", "create_app", "load_server_config", "open_state"]

_WHERE = {
    "create_app": "sync.server.app",
    "ServerConfig": "sync.server.config",
    "load_server_config": "sync.server.config",
    "ServerState": "sync.server.state",
    "open_state": "sync.server.state",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'sync.server' has no attribute {name!r}")
