"""Signed device routes: ``/v1/devices/{device_id}/…`` (sync.md §2.4, §3, §4).

Every route reads its body itself (the signature covers the exact bytes),
authenticates in the order of §2.4, applies the device's rate limits (§2.8)
and answers with a signed ``time`` (§2.5) whenever the request carried a well
formed nonce, errors included, so a gate with a wrong clock can correct itself
from a ``401 clock_skew``. Bundle documents and parts are answered as their
own bytes (they are signed documents or content-addressed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from sync.events import valid_device_id
from sync.server import models as m
from sync.server.auth import DeviceRequest, client_ip, header_nonce, read_body, verify_device_request
from sync.server.errors import ApiError
from sync.server.heartbeat import device_state, heartbeat
from sync.server.ingest import flash, ingest
from sync.server.state import ServerState

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/devices", tags=["device"])

DeviceId = Annotated[str, Path(description="The enrolled device id; must equal X-Checkpoint-Device.")]
Sha = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
Handler = Callable[[ServerState, DeviceRequest], "tuple[int, Any] | Response"]


def _signed_headers() -> dict[str, Any]:
    """OpenAPI description of the four request headers (§2.4)."""
    return {
        "parameters": [
            {"name": n, "in": "header", "required": True, "schema": {"type": "string"}, "description": d}
            for n, d in (
                ("X-Checkpoint-Device", "device id, equal to the path's"),
                ("X-Checkpoint-Time", "unix seconds, the gate's estimate of server time"),
                ("X-Checkpoint-Nonce", "32 lowercase hex, new for every request"),
                ("X-Checkpoint-Signature", "Ed25519 over checkpoint/request/v1, 128 lowercase hex"),
            )
        ],
    }


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Resolve local ``$defs`` references, so the documented body stands alone in the OpenAPI document."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    return {**_signed_headers(), "requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline(schema, schema.get("$defs", {}))}}}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": m.ErrorBody} for c in codes}


async def _device_call(request: Request, device_id: str, route: str, handler: Handler, *,
                       events_limit: bool = False) -> Response:
    st: ServerState = request.app.state.server
    ip = client_ip(request, st)
    nonce = header_nonce(request)
    headers: dict[str, str] = {}
    try:
        if not valid_device_id(device_id):
            raise ApiError(404, "unknown_device", "not a device id")
        st.limiter.check_blocked(ip)
        raw = await read_body(request, st.config.max_body_bytes)
        result = await run_in_threadpool(_run, st, request, device_id, raw, handler, events_limit)
        if isinstance(result, Response):
            st.metrics.device_requests.labels(route, str(result.status_code)).inc()
            return result
        status, body = result
    except ApiError as exc:
        if exc.status == 401:
            st.limiter.failed_auth(ip)
        status, body, headers = exc.status, exc.body(), exc.headers
        if status >= 400:
            log.info("device request route=%s device=%s status=%d error=%s", route, device_id[:63], status,
                     exc.code)
    if nonce is not None and valid_device_id(device_id) and isinstance(body, dict):
        body["time"] = st.signed_time(device_id, nonce)
    st.metrics.device_requests.labels(route, str(status)).inc()
    return JSONResponse(body, status_code=status, headers=headers)


def _run(st: ServerState, request: Request, device_id: str, raw: bytes, handler: Handler,
         events_limit: bool) -> tuple[int, Any] | Response:
    req = verify_device_request(st, request, device_id, raw)
    rl = st.config.rate_limit
    st.limiter.check("device", device_id, rl.device_per_min, rl.device_burst)
    if events_limit:
        st.limiter.check("device_events", device_id, rl.device_events_per_min, rl.device_burst)
    return handler(st, req)


@router.post("/{device_id}/events", response_model=m.UploadAnswer, summary="Upload a batch of events (§3)",
             openapi_extra=_body_doc(m.UploadBatch), responses=_errors(400, 401, 403, 409, 413, 429))
async def upload_events(device_id: DeviceId, request: Request) -> Response:
    return await _device_call(request, device_id, "events", ingest, events_limit=True)


def _flash(st: ServerState, req: DeviceRequest) -> tuple[int, Any]:
    return 200, flash(st, req)


@router.post("/{device_id}/flash", response_model=m.FlashAnswer, summary="Urgent alert copies (§3.6)",
             openapi_extra=_body_doc(m.FlashBody), responses=_errors(400, 401, 403, 413, 429))
async def flash_events(device_id: DeviceId, request: Request) -> Response:
    return await _device_call(request, device_id, "flash", _flash)


def _state(st: ServerState, req: DeviceRequest) -> tuple[int, Any]:
    return 200, device_state(st, req)


@router.get("/{device_id}/state", response_model=m.DeviceStateAnswer, summary="The server's view (§3.7)",
            openapi_extra=_signed_headers(), responses=_errors(401, 403, 429))
async def get_state(device_id: DeviceId, request: Request) -> Response:
    return await _device_call(request, device_id, "state", _state)


def _heartbeat(st: ServerState, req: DeviceRequest) -> tuple[int, Any]:
    return 200, heartbeat(st, req)


@router.post("/{device_id}/heartbeat", response_model=m.HeartbeatAnswer, summary="Heartbeat (§4.2)",
             openapi_extra=_body_doc(m.Heartbeat), responses=_errors(400, 401, 403, 413, 429))
async def post_heartbeat(device_id: DeviceId, request: Request) -> Response:
    return await _device_call(request, device_id, "heartbeat", _heartbeat)


def _bundle(st: ServerState, req: DeviceRequest) -> tuple[int, Any] | Response:
    from sync.server.publish import current_statement

    data = current_statement(st, req.device, req.nonce)
    if data is None:
        return 404, {"error": "no_bundle", "detail": "nothing published for this device's scope"}
    return Response(data, media_type="application/json", headers={"Cache-Control": "no-store"})


@router.get("/{device_id}/bundle", summary="Signed current statement (§4.1, bundles.md §1.5)",
            openapi_extra=_signed_headers(), responses=_errors(401, 403, 404, 429))
async def get_bundle(device_id: DeviceId, request: Request) -> Response:
    return await _device_call(request, device_id, "bundle", _bundle)


@router.get("/{device_id}/manifests/{sha256}", summary="A manifest by its document id (§4.1)",
            openapi_extra=_signed_headers(), responses=_errors(401, 403, 404, 429))
async def get_manifest(device_id: DeviceId, sha256: Sha, request: Request) -> Response:
    from sync.server.publish import manifest_bytes

    def handler(st: ServerState, req: DeviceRequest) -> tuple[int, Any] | Response:
        data = manifest_bytes(st, sha256)
        if data is None:
            return 404, {"error": "not_found", "detail": "no manifest with that id"}
        return Response(data, media_type="application/json", headers={"Cache-Control": "private, max-age=86400"})

    return await _device_call(request, device_id, "manifest", handler)


@router.get("/{device_id}/parts/{sha256}", summary="Part bytes by SHA-256 (§4.1)",
            openapi_extra=_signed_headers(), responses=_errors(401, 403, 404, 429))
async def get_part(device_id: DeviceId, sha256: Sha, request: Request) -> Response:
    from sync.server.publish import part_bytes

    def handler(st: ServerState, req: DeviceRequest) -> tuple[int, Any] | Response:
        data = part_bytes(st, sha256)
        if data is None:
            return 404, {"error": "not_found", "detail": "no part with that hash"}
        return Response(data, media_type="application/octet-stream",
                        headers={"Cache-Control": "private, max-age=31536000, immutable"})

    return await _device_call(request, device_id, "part", handler)


