"""Errors of the upstream server (subclasses of ``sync.errors``).

SyncError
└── ServerError
    ├── DatabaseError (also RuntimeError)  the database cannot be used as configured: fix and restart
    ├── StartupRefused (also ConfigError)  a setting the server refuses to run with (§2.6, §5.1)
    └── ApiError                           one HTTP error answer: status, ``error`` code, ``detail``,
                                           extra fields, optional headers (sync.md §0 error body)
"""

from __future__ import annotations

from typing import Any

from sync.errors import ConfigError, SyncError

__all__ = ["ApiError", "DatabaseError", "ServerError", "StartupRefused"]


class ServerError(SyncError):
    """Base of the server's own errors."""


class DatabaseError(ServerError, RuntimeError):
    """The database is unusable as configured (wrong URL, half a schema, async commit)."""


class StartupRefused(ServerError, ConfigError):
    """The configuration asks for something unsafe (plain HTTP on a LAN, two SQLite writers)."""


class ApiError(ServerError):
    """An HTTP error answer ``{"error": code, "detail": text, **extra}``.

    Raised anywhere below a route; the app's handler turns it into the response.
    """

    def __init__(
        self, status: int, code: str, detail: str = "", *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail or code.replace("_", " ")
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}
