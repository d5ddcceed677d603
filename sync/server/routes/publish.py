"""Admin publishing routes (bundles.md §2.4, §6): keys documents, signed bundles, sources, the mode switch."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from sync.bundle import PART_NAMES, SOURCE_FILES
from sync.canonical import loads_strict
from sync.errors import CanonicalError
from sync.server import models as m
from sync.server.app import UPLOAD_MAX
from sync.server.auth import Principal, read_body
from sync.server.deps import State, require
from sync.server.errors import ApiError
from sync.server.publish import publish_bundle_tar, publish_mode, publish_sources, store_keys

__all__ = ["router"]

router = APIRouter(prefix="/v1/admin", tags=["publishing"], dependencies=[Depends(require("admin"))])
_ERR: dict[int | str, dict[str, Any]] = {c: {"model": m.ErrorBody} for c in (401, 403, 409, 413, 422, 429)}
KEYS_MAX = 65_536


def _who(request: Request) -> Principal:
    return request.state.principal  # type: ignore[no-any-return]


@router.post("/keys", status_code=201, responses=_ERR, summary="Serve keys document N + 1 (checked K2-K5)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"type": "object", "description": "a signed keys document (bundles.md §1.3)"}}}}})
async def post_keys(request: Request, st: State) -> JSONResponse:
    data = await read_body(request, KEYS_MAX)
    status, body = await run_in_threadpool(store_keys, st, data)
    return JSONResponse(body, status_code=status)


@router.post("/bundles", status_code=201, response_model=m.Published, responses=_ERR,
             summary="Publish a signed bundle (tar of a bundle directory; both flows)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def post_bundle(request: Request, st: State) -> JSONResponse:
    data = await read_body(request, UPLOAD_MAX)
    out = await run_in_threadpool(publish_bundle_tar, st, data, _who(request).name)
    return JSONResponse(out, status_code=201)


def _source_name(upload: UploadFile, data: bytes) -> str:
    """A source file by its name; a built part file (any name) by its ``part`` field."""
    name = (upload.filename or "").rsplit("/", 1)[-1]
    if name in SOURCE_FILES:
        return name
    try:
        doc = loads_strict(data[3:] if data.startswith(b"\xef\xbb\xbf") else data)
    except CanonicalError as exc:
        raise ApiError(422, "invalid_source", f"{name[:80]}: not a source file name and not a part file") from exc
    part = doc.get("part") if isinstance(doc, dict) else None
    if part not in PART_NAMES:
        raise ApiError(422, "invalid_source", f"{name[:80]}: expected one of {', '.join(SOURCE_FILES)} "
                                              "or a part file with a known 'part'")
    return f"{part}.json"


@router.post("/sources", status_code=201, response_model=m.Published, responses=_ERR,
             summary="Build, number, sign and publish from source files (server flow)")
async def post_sources(
    request: Request, st: State,
    files: Annotated[list[UploadFile], File(description="rules.json, settings.json, roster.csv, … or part files")],
    site: Annotated[str, Form(max_length=63)] = "",
    note: Annotated[str, Form(max_length=1000)] = "",
) -> JSONResponse:
    from sync.events import valid_device_id

    if site and not valid_device_id(site):
        raise ApiError(422, "invalid_request", "site must be a site id or empty")
    given: dict[str, bytes] = {}
    for up in files:
        data = await up.read()
        name = _source_name(up, data)
        if name in given:
            raise ApiError(422, "invalid_source", f"{name} given twice")
        given[name] = data
    out = await run_in_threadpool(lambda: publish_sources(st, given, site=site or None, note=note,
                                                          by=_who(request).name))
    return JSONResponse(out, status_code=201)


@router.post("/mode", status_code=201, response_model=m.Published, responses=_ERR,
             summary="One-key normal/emergency switch: new mode part, new signed manifest (bundles.md §4.3)")
def post_mode(body: m.ModeIn, request: Request, st: State) -> JSONResponse:
    out: dict[str, Any] = publish_mode(st, site=body.site, mode=body.mode, reason=body.reason,
                                       by=_who(request).name)
    return JSONResponse(out, status_code=201)
