"""The served OpenAPI document says what the app really answers (sync.md §5.9).

FastAPI documents its own defaults, which this app replaces (found by schemathesis in
``tests/reliability/test_schemathesis.py``, each a "response outside the contract"):

- every ``422`` carries the app's ``ErrorBody`` (``{"error", "detail"}`` from the validation
  handler), not FastAPI's ``HTTPValidationError``;
- an operation with a request body can answer ``400`` when the body cannot be parsed at all;
- every ``/v1/devices/{device_id}/…`` operation answers ``404 unknown_device`` for a path id
  that cannot be a device id (before any signature is read);
- ``/metrics`` is Prometheus text, not JSON;
- a flash body is ``{"events": [...]}`` with at most 10 items, but each item is checked on its
  own and listed under ``accepted`` or ``rejected`` (sync.md §3.6: best effort, one odd item
  never refuses the others), so the items are documented as any JSON value.
"""

from __future__ import annotations

from typing import Any

__all__ = ["correct_openapi"]

_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_METHODS = ("get", "put", "post", "delete", "patch")


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": dict(_ERROR_REF)}}}


def correct_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """Apply the corrections of the module docstring to a generated document (in place; returned)."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorBody", {"title": "ErrorBody", "type": "object", "required": ["error", "detail"],
                                     "properties": {"error": {"type": "string", "title": "Error"},
                                                    "detail": {"type": "string", "title": "Detail"}}})
    for path, item in doc.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            responses = op.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = _error("the request does not match the parameters or body described here")
            if "requestBody" in op and "400" not in responses:
                responses["400"] = _error("the body could not be read or parsed")
            if path.startswith("/v1/devices/{device_id}") and "404" not in responses:
                responses["404"] = _error("unknown_device: the path id cannot be a device id")
            if path.endswith("/flash") and "requestBody" in op:
                body = op["requestBody"].get("content", {}).get("application/json", {}).get("schema", {})
                events = body.get("properties", {}).get("events")
                if isinstance(events, dict) and "items" in events:
                    events["items"] = {"description": "an event (sync.md §1.1); checked on its own, listed under "
                                                      "accepted or rejected"}
            if path == "/metrics" and "200" in responses:
                responses["200"] = {"description": "Prometheus text format",
                                    "content": {"text/plain": {"schema": {"type": "string"}}}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return doc
