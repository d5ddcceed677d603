"""Routes without a token: keys documents (bundles.md §3.4 K1), health, readiness, metrics (§5.7)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from sync.server import models as m
from sync.server.auth import bearer, is_allowed_peer, principal_from_token
from sync.server.deps import State
from sync.server.errors import ApiError
from sync.server.publish import keys_doc_bytes

__all__ = ["router"]

router = APIRouter(tags=["public"])


@router.get("/v1/keys/{name}", summary="Keys document version n (public; bundles.md §1.3)",
            responses={404: {"model": m.ErrorBody}})
def get_keys(name: Annotated[str, Path(pattern=r"^[1-9][0-9]{0,15}\.json$")], st: State) -> Response:
    data = keys_doc_bytes(st, int(name.removesuffix(".json")))
    if data is None:
        raise ApiError(404, "not_found", "no keys document with that version")
    return Response(data, media_type="application/json", headers={"Cache-Control": "public, max-age=300"})


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers", responses={503: {"model": m.ErrorBody}})
def readyz(st: State) -> JSONResponse:
    try:
        st.db.ping()
    except Exception as exc:  # any driver error means "not ready"; the detail goes to the log only
        import logging

        logging.getLogger(__name__).warning("readyz: database not reachable: %s", type(exc).__name__)
        return JSONResponse({"error": "not_ready", "detail": "database not reachable"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics (auditor token or an allowed peer, §5.7)",
            responses={401: {"model": m.ErrorBody}})
async def metrics(request: Request, st: State) -> Response:
    if not is_allowed_peer(request, st.config.metrics_allow):
        principal = await run_in_threadpool(principal_from_token, st, bearer(request))
        if principal is None:
            raise ApiError(401, "unauthorized", "an auditor token or an allowed address is required",
                           headers={"WWW-Authenticate": "Bearer"})
    data = await run_in_threadpool(generate_latest, st.metrics.registry)
    return Response(data, media_type=CONTENT_TYPE_LATEST)
