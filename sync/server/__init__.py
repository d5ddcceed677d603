"""The upstream server (sync.md §5): ingest, bundle distribution, fleet, audit, dashboard.

``open_state(config)`` opens the database and keys; ``create_app(state)`` gives
the ASGI app; ``checkpoint server run`` (``sync.server.cli``) runs it.
"""

from sync.server.app import create_app
from sync.server.config import ServerConfig, load_server_config
from sync.server.state import ServerState, open_state

__all__ = ["ServerConfig", "ServerState", "create_app", "load_server_config", "open_state"]
