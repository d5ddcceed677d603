"""checkpoint sync: wire formats shared by both ends, the sync agent and the upstream server."""

__version__ = "0.1.0"
