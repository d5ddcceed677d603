"""FastAPI dependencies: the server state and role checks for bearer tokens (sync.md §2.7-2.8).

Deny by default: every admin or auditor router carries ``require("auditor")``
or ``require("admin")`` as a router-level dependency, so a route added later
cannot forget it. ``admin`` includes everything ``auditor`` may do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Connection

from sync.server import tables as t
from sync.server.auth import COOKIE, Principal, bearer, client_ip, principal_from_token
from sync.server.errors import ApiError
from sync.server.state import ServerState

__all__ = ["DB", "State", "audit", "get_state", "require"]


def get_state(request: Request) -> ServerState:
    return request.app.state.server  # type: ignore[no-any-return]


State = Annotated[ServerState, Depends(get_state)]
DB = State


def require(role: str, *, heavy: bool = False, cookie: bool = False) -> Callable[[Request], Principal]:
    """A dependency that admits a token of ``role`` (or admin) and applies its rate limit.

    Args:
        heavy: trace and export routes (the auditor's 30/min bucket).
        cookie: also accept the dashboard cookie (dashboard pages only).
    """

    def dependency(request: Request) -> Principal:
        st = get_state(request)
        ip = client_ip(request, st)
        st.limiter.check_blocked(ip)
        token = bearer(request)
        if token is None and cookie:
            token = request.cookies.get(COOKIE)
        principal = principal_from_token(st, token)
        if principal is None:
            st.limiter.failed_auth(ip)
            raise ApiError(401, "unauthorized", "a valid admin or auditor token is required",
                           headers={"WWW-Authenticate": "Bearer"})
        if role == "admin" and not principal.is_admin:
            raise ApiError(403, "forbidden", "this needs an admin token")
        rl = st.config.rate_limit
        if principal.is_admin:
            st.limiter.check("admin", str(principal.token_id), rl.admin_per_min)
        else:
            st.limiter.check("auditor", str(principal.token_id), rl.auditor_per_min)
            if heavy:
                st.limiter.check("auditor_heavy", str(principal.token_id), rl.auditor_trace_per_min)
        request.state.principal = principal
        return principal

    return dependency


def audit(conn: Connection, principal: Principal, route: str, params: dict[str, Any], now_ms: int) -> None:
    """§2.7: every trace and export request is written to ``audit_log`` (person ids as pids only)."""
    conn.execute(t.audit_log.insert().values(
        at_ms=now_ms, token_id=principal.token_id, route=route,
        params=json.dumps(params, ensure_ascii=False, sort_keys=True)[:4000]))
