"""The app factory of the upstream server (sync.md §5).

``create_app(state)`` mounts one router per resource, installs the error
handlers that give every failure the spec's body ``{"error", "detail"}`` (never
a stack trace, never an echo of a person's id), caps request bodies before a
route reads them, and runs the background workers (webhooks, periodic jobs,
the systemd watchdog ping) for the lifetime of the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sync.server.errors import ApiError
from sync.server.state import ServerState

__all__ = ["create_app"]

log = logging.getLogger(__name__)

UPLOAD_PATHS = ("/v1/admin/bundles", "/v1/admin/sources")
UPLOAD_MAX = 48 * 1024 * 1024  # all parts together are capped at 32 MiB (bundles.md §1.6), plus tar/multipart


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over the limit with ``413`` before any route buffers them."""

    def __init__(self, app: ASGIApp, default_max: int) -> None:
        self.app = app
        self.default_max = default_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = UPLOAD_MAX if path.startswith(UPLOAD_PATHS) else max(self.default_max, 2 * 1024 * 1024)
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                if not v.isdigit():
                    await _send_json(send, 400, {"error": "bad_request", "detail": "bad Content-Length"})
                    return
                if int(v) > limit:
                    await _send_json(send, 413, {"error": "too_large", "detail": f"body over {limit} bytes",
                                                 "max_events": 500, "max_bytes": limit})
                    return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, {"error": "too_large", "detail": f"body over {limit} bytes",
                                             "max_events": 500, "max_bytes": limit})


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    import json

    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid")))
    return "; ".join(parts)[:500] or "invalid request"


def routers() -> list[Any]:
    """Every router the app mounts (tests walk these to check that no route escapes the authz matrix)."""
    from sync.server import dashboard
    from sync.server.routes import admin, audit, devices, enroll, public
    from sync.server.routes import publish as publish_routes

    return [devices.router, enroll.router, public.router, admin.router, publish_routes.router, audit.router,
            audit.heavy, dashboard.router]


def create_app(state: ServerState, *, workers: bool | None = None) -> FastAPI:
    """The ASGI app for one server process.

    Args:
        state: the opened ``ServerState``.
        workers: run the webhook worker and the periodic jobs (default: ``background_jobs``).
    """
    from sync.server.metrics_db import fleet_gauges

    run_workers = state.config.background_jobs if workers is None else workers
    import edge.credentials.masking  # noqa: F401  (warm: the first upload must not pay for the import)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from sync.server.jobs import Jobs
        from sync.server.notify import watchdog_task
        from sync.server.webhooks import WebhookWorker

        hooks = jobs = None
        if run_workers:
            hooks = WebhookWorker(state)
            hooks.start()
            jobs = Jobs(state)
            jobs.start()
        dog = asyncio.create_task(watchdog_task(getattr(app.state, "started", lambda: True)))
        try:
            yield
        finally:
            dog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dog
            for w in (hooks, jobs):
                if w is not None:
                    await asyncio.to_thread(w.close)

    app = FastAPI(
        title="checkpoint upstream server", version="1",
        description="Event ingest, bundle distribution, fleet and audit API of checkpoint (specs/sync.md §5.9).",
        lifespan=lifespan, docs_url="/docs", redoc_url=None, openapi_url="/openapi.json",
    )
    app.state.server = state
    _openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # The document must describe the answers of the handlers below, not FastAPI's defaults.
        if app.openapi_schema is None:
            from sync.server.openapi_doc import correct_openapi

            app.openapi_schema = correct_openapi(_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    state.metrics.attach_gauges(lambda: fleet_gauges(state))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "invalid_request", "detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # The client (or a proxy) closed the connection before its body was complete: nothing was
        # read, nothing done, nobody to answer. Not a server fault (found by the fault proxy's cut_request).
        log.info("client disconnected before the request body was complete route=%s", request.url.path)
        return JSONResponse({"error": "bad_request", "detail": "request body incomplete"}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error route=%s", request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500)

    for r in routers():
        app.include_router(r)
    app.add_middleware(BodyLimit, default_max=state.config.max_body_bytes)
    return app
