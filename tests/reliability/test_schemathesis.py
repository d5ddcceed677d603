"""schemathesis against the OpenAPI the real server serves (sync.md §5.9): every operation, with tokens
and signed device requests; no 5xx, no answer outside the documented statuses, content types and schemas.

The server is the real app on uvicorn (SQLite), holding an enrolled device, a published bundle
(so the bundle, manifest, part and keys routes can answer 200), an admin and an auditor token.
Each generated case is sent as a real client would send it:

- ``/v1/devices/{id}/…``: signed with the device key (sync.md §2.4) over the exact bytes sent,
  unless schemathesis generated the signing headers as *negative* data (then they go as
  generated and must be refused); the path's device id is the enrolled one in most cases;
- admin and audit routes: ``Authorization: Bearer`` with the admin token, or the auditor's in a
  share of the cases (then a 403 on admin routes is the right answer);
- destructive calls are pointed away from what the rest of the run needs (the admin's own
  token, the enrolled device), so one lucky ``DELETE`` cannot turn the rest into 401s.

Checks: ``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance``,
``response_headers_conformance``, ``response_schema_conformance``, ``negative_data_rejection``.
Not ``positive_data_acceptance``: schema-valid is not enough for this API (a batch must also
hash and link, a code must exist), so 4xx answers to schema-valid data are correct here.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, reject, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sync.keys import generate_key
from sync.signing import new_nonce, request_text
from tests.crash import figures

pytestmark = pytest.mark.slow
DEVICE = "gate-api-01"
EXAMPLES = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


class Api:
    """The live server and what a client needs to talk to it."""

    def __init__(self, tmp: Path) -> None:
        from edge.demo import DemoWorld
        from tests.reliability.livegate import RealClock
        from tests.server.harness import ServerHarness

        world = DemoWorld(tmp / "world", log2_n=10)
        self.h = ServerHarness(f"sqlite:///{tmp / 'server.db'}", tmp, clock=RealClock(),  # type: ignore[arg-type]
                               server_key=world.keys["server"], publisher_keys=[world.keys["publisher"]])
        self.url = self.h.url
        self.key = generate_key("device", DEVICE)
        r = self.h.enroll(self.h.add_device(DEVICE), self.key)
        assert r.status_code == 200, r.text
        r = self.h.admin("POST", "/v1/admin/keys", content=world.keys_document(),
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text
        src = world.sources()
        files = [("files", (p.name, p.read_bytes())) for p in sorted(src.iterdir()) if p.suffix == ".json"]
        r = self.h.admin("POST", "/v1/admin/sources", data={"site": "", "note": "fuzz"}, files=files)
        assert r.status_code == 201, r.text
        self.protected_tokens = {int(t["id"]) for t in self.h.admin("GET", "/v1/admin/tokens").json()}
        self.client = httpx.Client(timeout=30)
        self.victims = 0
        self.statuses: Counter[str] = Counter()
        self.operations = 0
        self.failures = -1

    def close(self) -> None:
        self.client.close()
        self.h.close()

    def sacrificial_token(self) -> int:
        r = self.h.admin("POST", "/v1/admin/tokens", json={"role": "auditor", "name": "to be deleted"})
        return int(r.json()["id"])

    def victim_device(self) -> str:
        self.victims += 1
        dev = f"victim-{self.victims:04d}"
        self.h.add_device(dev)
        return dev


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    a = Api(tmp_path_factory.mktemp("api"))
    yield a
    figures.report({"test": "schemathesis", "operations": a.operations, "failures": a.failures,
                    "requests": sum(a.statuses.values()),
                    "status_5xx": sum(v for k, v in a.statuses.items() if k.startswith("5")),
                    "statuses": dict(sorted(a.statuses.items())), "examples_per_operation": EXAMPLES})
    a.close()


def _negative_headers(case: Any) -> bool:
    from schemathesis.core.parameters import ParameterLocation

    meta = getattr(case, "meta", None)
    return bool(meta is not None and meta.is_negative_at(ParameterLocation.HEADER))


def _prepare(case: Any, api: Api) -> None:
    """Point destructive calls away from what the run needs (module docstring)."""
    path = case.operation.path
    params = case.path_parameters if isinstance(case.path_parameters, dict) else None
    if params is None:
        return
    if path == "/v1/admin/tokens/{token_id}" and str(params.get("token_id")) in {str(t) for t in api.protected_tokens}:
        params["token_id"] = api.sacrificial_token()
    if path.startswith("/v1/admin/devices/{device_id}/") and params.get("device_id") == DEVICE:
        params["device_id"] = api.victim_device()
    if path.startswith("/v1/devices/{device_id}") and zlib.crc32(repr(params.get("device_id")).encode()) % 8:
        params["device_id"] = DEVICE  # most cases: the enrolled device (decided by the case, so replays agree)


def _send(case: Any, api: Api) -> httpx.Response:
    kw = case.as_transport_kwargs(base_url=api.url)
    headers = {k: str(v) for k, v in (kw.get("headers") or {}).items()}
    content: bytes | None = None
    files = None
    data = None
    if "json" in kw:
        content = json.dumps(kw["json"], ensure_ascii=False).encode("utf-8", "surrogatepass")
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(kw.get("data"), bytes | str):
        content = kw["data"].encode("utf-8", "surrogatepass") if isinstance(kw["data"], str) else kw["data"]
    elif kw.get("files") is not None or isinstance(kw.get("data"), dict):
        files, data = kw.get("files"), kw.get("data")
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    path = case.operation.path
    if path.startswith("/v1/devices/"):
        signed = not _negative_headers(case)
        if signed:  # the signing headers are ours to make (below), not schemathesis'
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-checkpoint-")}
    else:
        signed = False
        pick = zlib.crc32(repr((kw.get("params"), kw.get("json"), kw["url"])).encode()) % 20
        if not any(k.lower() == "authorization" for k in headers) and pick:
            who = "auditor" if pick < 5 else "admin"
            headers["Authorization"] = api.h.auth(who)["Authorization"]
    try:
        from requests.utils import check_header_validity

        for item in headers.items():
            check_header_validity(item)   # schemathesis re-creates the request with requests for its report
        request = api.client.build_request(kw["method"], kw["url"], params=kw.get("params"), headers=headers,
                                           content=content, files=files, data=data, cookies=kw.get("cookies"))
        request.read()  # multipart bodies stream; the checks read the request again for their report
    except (TypeError, AttributeError, ValueError, UnicodeError):
        reject()  # a form no HTTP client can send (e.g. a number where a file goes): not a request at all
    if signed:
        device = request.url.path.split("/")[3]
        body = request.content if request.content else b""
        t, nonce = api.h.clock() // 1000, new_nonce()
        request.headers["X-Checkpoint-Device"] = device
        request.headers["X-Checkpoint-Time"] = str(t)
        request.headers["X-Checkpoint-Nonce"] = nonce
        try:
            text = request_text(request.method, request.url.raw_path.decode("ascii"), device, t, nonce, body)
        except ValueError:
            reject()  # an id with a line break in it: no gate can sign (or be) that
        request.headers["X-Checkpoint-Signature"] = api.key.sign(text).hex()
        if isinstance(case.headers, dict):  # the case now says what was really sent (its report re-sends it)
            for k in list(case.headers):
                if k.lower().startswith("x-checkpoint-"):
                    del case.headers[k]
            case.headers.update({k: request.headers[k] for k in ("X-Checkpoint-Device", "X-Checkpoint-Time",
                                                                 "X-Checkpoint-Nonce", "X-Checkpoint-Signature")})
    try:
        response = api.client.send(request)
    except httpx.LocalProtocolError:
        reject()  # a header no HTTP client can put on the wire (e.g. a form feed in it)
    api.statuses[str(response.status_code)] += 1
    return response


def test_every_operation_answers_within_its_contract(api: Api) -> None:
    """Each operation of the served schema: positive and negative cases (hypothesis), every check above.

    Driven directly (``APIOperation.as_strategy``) rather than through schemathesis' pytest loader,
    which does not run on pytest 9. Failures are collected per operation and reported together.
    """
    from hypothesis import given
    from hypothesis.errors import Unsatisfiable

    loaded = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    operations = [r.ok() for r in loaded.get_all_operations()]
    assert len(operations) >= 35
    failures: list[str] = []
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @given(case=op.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                      phases=[Phase.explicit, Phase.generate], database=None)
            def one(case: Any) -> None:
                _prepare(case, api)
                response = _send(case, api)
                case.validate_response(response, checks=CHECKS)

            try:
                one()
            except Unsatisfiable:
                continue  # nothing to make negative (no parameters, or a binary body): no such cases exist
            except (Exception, BaseExceptionGroup) as exc:  # collect every failure, then fail once
                failures.append(f"{op.method.upper()} {op.path} ({mode.value}): {str(exc)[:1500]}")
    api.operations = len(operations)
    api.failures = len(failures)
    assert not failures, "\n\n".join(failures)
