"""The guard console's routes (console.md §2-3): page, assets, status, stream, three actions.

Order of checks for every POST (first failure answers):

1. CSRF (§3): ``Content-Type: application/json``, ``Origin`` equal to this
   console's own, ``X-CSRF-Token`` equal to the ``ck_csrf`` cookie → else ``403 csrf``.
2. Body: at most 4 KiB of strict JSON matching the route's model → else ``400 bad_request``.
3. PIN (``PinGate``, in a worker thread): ``429 rate_limited``, ``423 locked``,
   ``401 bad_pin`` (with ``attempts_left``); role (``403 not_admin`` for set-up).
4. The gate process acts (``ConsoleBackend``, again off the event loop); it
   refuses with ``409`` (``not_overridable``, ``too_old``, ``setup_active``) or ``400``.

Requests whose ``Host`` is not one of this console's names are refused (DNS
rebinding would otherwise make a foreign page same-origin). No CORS headers are
ever sent; assets come from the package only (CSP ``default-src 'self'``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError
from starlette.concurrency import run_in_threadpool

from edge.console.accounts import Account, Accounts, PinGate
from edge.console.stream import Broadcaster, Message, sse
from edge.errors import EdgeError

__all__ = [
    "ConsoleBackend",
    "ConsoleRefusal",
    "ManualRequest",
    "OverrideRequest",
    "SetupRequest",
    "create_app",
]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
MAX_BODY = 4096
KEEPALIVE_S = 15.0
STATUS_POLL_S = 1.0
CSRF_COOKIE = "ck_csrf"

AccountId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_-]{1,32}$")]
ReasonCode = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
Pin = Annotated[str, StringConstraints(pattern=r"^[0-9]{6,12}$")]
Note = Annotated[str, StringConstraints(max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OverrideRequest(_Body):
    decision_seq: int = Field(ge=1, le=2**53 - 1)
    to: Literal["admit", "deny"]
    reason: ReasonCode
    note: Note = ""
    account: AccountId
    pin: Pin


class ManualRequest(_Body):
    outcome: Literal["admit", "deny"]
    reason: ReasonCode
    note: Note = ""
    account: AccountId
    pin: Pin


class SetupRequest(_Body):
    account: AccountId
    pin: Pin


class ConsoleRefusal(EdgeError, ValueError):
    """The gate refused a console action; ``status`` and ``code`` become the HTTP answer."""

    def __init__(self, status: int, code: str, detail: str, **fields: Any) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail, self.fields = status, code, detail, fields


class ConsoleBackend(Protocol):
    """What the gate process offers the console (edge.app implements it)."""

    broadcaster: Broadcaster

    def status(self) -> dict[str, Any]:
        """The ``/api/status`` object without ``locked`` (cheap: served from a cache)."""

    def recent_views(self) -> list[dict[str, Any]]:
        """Decision views of the last ten decisions, oldest first."""

    def accounts(self) -> Accounts:
        """Guard accounts of the bundle in force."""

    def override_reasons(self) -> list[dict[str, str]]:
        """``{code, zh, en}`` the guard may pick (``hardware_button`` excluded)."""

    def override(self, req: OverrideRequest, account: Account) -> int:
        """Log an ``override`` and act; returns its seq. Raises ``ConsoleRefusal``."""

    def manual(self, req: ManualRequest, account: Account) -> tuple[int | None, int | None]:
        """Log a manual check's ``decision`` and ``override``; returns both seqs. Raises ``ConsoleRefusal``."""

    def start_setup(self, account: Account) -> int:
        """Enter set-up mode; returns the seconds it lasts. Raises ``ConsoleRefusal``."""


def _error(status: int, code: str, detail: str, *, retry_after: int | None = None, **fields: Any) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"error": code, "detail": detail, **fields}, status_code=status, headers=headers)


def _strict_json(data: bytes) -> Any:
    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k!r}")
            out[k] = v
        return out

    def no_const(name: str) -> Any:
        raise ValueError(f"{name} is not allowed")

    return json.loads(data.decode("utf-8"), object_pairs_hook=no_dupes, parse_constant=no_const)


def create_app(
    backend: ConsoleBackend,
    *,
    pin_gate: PinGate | None = None,
    allowed_hosts: frozenset[str] | None = None,
    secure_cookie: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The console's ASGI app.

    Args:
        backend: the gate process (or, in tests, anything speaking ``ConsoleBackend``).
        pin_gate: rate limit and lockout state (tests inject one with a fake clock).
        allowed_hosts: accepted ``Host`` names (no port); None accepts any (TLS on a LAN).
        secure_cookie: mark the CSRF cookie ``Secure`` (served over TLS).
        clock: monotonic seconds for the stream's keep-alive.
    """
    gate = pin_gate or PinGate()
    templates = Environment(
        loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]), auto_reload=False
    )
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def host_and_headers(request: Request, call_next: Any) -> Response:
        host = (request.headers.get("host") or "").lower()
        name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
        if allowed_hosts is not None and name not in allowed_hosts:
            return _error(421, "bad_request", "unknown host name for this console")
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; media-src 'self'; font-src 'self'; frame-ancestors 'none'; "
            "base-uri 'none'; form-action 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    def full_status() -> dict[str, Any]:
        st = dict(backend.status())
        st["locked"] = gate.locked()
        return st

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> HTMLResponse:
        token = request.cookies.get(CSRF_COOKIE) or ""
        if len(token) != 64 or not all(c in "0123456789abcdef" for c in token):
            token = secrets.token_bytes(32).hex()
        boot = {
            "accounts": backend.accounts().public(),
            "reasons": backend.override_reasons(),
        }
        html = templates.get_template("index.html").render(
            csrf=token,
            # inside <script type="application/json">: no "<", ">" or "&" may appear literally
            boot=json.dumps(boot, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"),
        )
        resp = HTMLResponse(html, headers={"Cache-Control": "no-store"})
        resp.set_cookie(
            CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure_cookie, path="/"
        )
        return resp

    @app.get("/api/status")
    def status() -> JSONResponse:
        return JSONResponse(full_status(), headers={"Cache-Control": "no-store"})

    @app.get("/api/events/stream")
    async def stream(request: Request) -> StreamingResponse:
        try:
            after = int(request.headers.get("last-event-id", "") or 0)
        except ValueError:
            after = 0
        sub = backend.broadcaster.subscribe(asyncio.get_running_loop())

        async def frames() -> Any:
            try:
                for view in await run_in_threadpool(backend.recent_views):
                    if view.get("seq") is None or view["seq"] > after:
                        yield sse(Message("decision", view, view.get("seq")))
                last_status = await run_in_threadpool(full_status)
                yield sse(Message("status", last_status))
                last_beat = clock()
                while True:
                    try:
                        msg = await asyncio.wait_for(sub.queue.get(), timeout=STATUS_POLL_S)
                    except TimeoutError:
                        msg = False
                    if msg is None:
                        return
                    if msg is not False:
                        yield sse(msg)
                    st = full_status()
                    if st != last_status:
                        last_status = st
                        yield sse(Message("status", st))
                    if clock() - last_beat >= KEEPALIVE_S:
                        last_beat = clock()
                        yield b": keep-alive\n\n"
            finally:
                sub.close()

        return StreamingResponse(
            frames(), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def guarded(request: Request, model: type[_Body]) -> tuple[_Body, Account] | JSONResponse:
        # 1. CSRF (§3)
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        header = request.headers.get("x-csrf-token") or ""
        if (
            ctype != "application/json"
            or origin is None
            or origin != own
            or len(cookie) != 64
            or not hmac.compare_digest(cookie.encode(), header.encode())
        ):
            return _error(403, "csrf", "missing or wrong CSRF token, origin or content type")
        # 2. body
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            return _error(400, "bad_request", f"body larger than {MAX_BODY} bytes")
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > MAX_BODY:
                return _error(400, "bad_request", f"body larger than {MAX_BODY} bytes")
        try:
            body = model.model_validate(_strict_json(data))
        except (ValueError, UnicodeDecodeError, ValidationError) as exc:
            detail = exc.errors(include_url=False, include_input=False)[0] if isinstance(exc, ValidationError) else None
            where = ".".join(str(x) for x in detail["loc"]) if detail else ""
            msg = f"{where}: {detail['msg']}" if detail else "body is not a JSON object"
            return _error(400, "bad_request", msg[:200])
        # 3. PIN, in a worker thread (scrypt; never on the decision loop)
        client = request.client.host if request.client else "?"
        account_id, pin = body.account, body.pin  # type: ignore[attr-defined]
        result = await run_in_threadpool(gate.check, backend.accounts(), account_id, pin, client)
        if result.result == "rate_limited":
            return _error(429, "rate_limited", "one PIN check per second", retry_after=result.retry_after_s)
        if result.result == "locked":
            return _error(423, "locked", "account locked after 5 wrong PINs", retry_after=result.retry_after_s)
        if result.result == "no_accounts":
            return _error(400, "bad_request", "no guard accounts on this gate (settings.console)")
        if result.result == "unknown_account":
            return _error(400, "bad_request", "unknown account")
        if result.result == "bad_pin":
            return _error(401, "bad_pin", "wrong PIN", attempts_left=result.attempts_left)
        assert result.account is not None
        return body, result.account

    def refused(exc: ConsoleRefusal) -> JSONResponse:
        return _error(exc.status, exc.code, exc.detail, **exc.fields)

    @app.post("/api/override")
    async def override(request: Request) -> JSONResponse:
        got = await guarded(request, OverrideRequest)
        if isinstance(got, JSONResponse):
            return got
        body, account = got
        try:
            seq = await run_in_threadpool(backend.override, body, account)
        except ConsoleRefusal as exc:
            return refused(exc)
        return JSONResponse({"override_seq": seq}, headers={"Cache-Control": "no-store"})

    @app.post("/api/manual")
    async def manual(request: Request) -> JSONResponse:
        got = await guarded(request, ManualRequest)
        if isinstance(got, JSONResponse):
            return got
        body, account = got
        try:
            dseq, oseq = await run_in_threadpool(backend.manual, body, account)
        except ConsoleRefusal as exc:
            return refused(exc)
        return JSONResponse({"decision_seq": dseq, "override_seq": oseq}, headers={"Cache-Control": "no-store"})

    @app.post("/api/setup")
    async def setup(request: Request) -> JSONResponse:
        got = await guarded(request, SetupRequest)
        if isinstance(got, JSONResponse):
            return got
        _, account = got
        if account.role != "admin":
            return _error(403, "not_admin", "set-up mode needs an admin account")
        try:
            remaining = await run_in_threadpool(backend.start_setup, account)
        except ConsoleRefusal as exc:
            return refused(exc)
        return JSONResponse({"remaining_s": remaining}, headers={"Cache-Control": "no-store"})

    return app
