"""The gate's HTTP client for the upstream server: signing policy and error mapping (sync.md §2.4-2.6).

The client holds the policy; a transport does the I/O (tests swap in
``httpx.MockTransport`` or a transport that drops replies, STYLE.md §3.1).

Rules, in the order a request meets them:

1. The server URL is ``https://`` unless its host is loopback or
   ``allow_plain_http`` is set (§2.6); certificates are checked against the
   system store or ``ca_file``.
2. Every device request carries ``X-Checkpoint-Device``, ``-Time`` (the gate's
   estimate of *server* time, §2.5), ``-Nonce`` (new for every request and every
   retry) and ``-Signature`` over the request signing text. The signed path starts
   at ``/v1/``: a proxy prefix in the server URL is not part of it. The body
   hash is over the JSON itself; bodies over 4 KiB go gzip-compressed (§3.1).
3. A reply is read as a stream with a size cap on the *decoded* bytes and one
   total deadline (connect timeout apart), so a server that drips bytes cannot
   hold the agent's loop past its watchdog.
4. Every ``time`` object in a reply is verified (server key, our own nonce)
   before it is believed; a verified one goes to ``on_time`` (the server-time
   estimator and the shared clock row), also from error replies: a
   ``401 clock_skew`` carries the time the gate needs to correct itself.
5. Errors are mapped by the caller's next step (STYLE.md §3.3)::

    SyncError
    ├── Unreachable (ConnectionError)   network, timeout, 408/429/5xx -> back off, try again
    │   ├── ServerBusy                  408, 429, 5xx (retry_after_s from Retry-After)
    │   └── BadReply                    unparsable, oversize or unverifiable reply
    └── Rejected                        the server answered no -> never resend unchanged
        ├── BadBatch (400 bad_batch)    ├── SeqGap (409 seq_gap)     ├── Conflict (409 conflict)
        ├── ClockSkew (401 clock_skew)  ├── ReplayedNonce (401)      ├── TooLarge (413)
        ├── Revoked (401 bad_signature / unknown_device, 403)        ├── NotFound (404)
        ├── InvalidCode (403 invalid_code, enrolment)  ├── BadProof (400 bad_proof)
        └── Refused                     any other 4xx (bad_auth, ...): a fault on our side
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from sync.errors import ConfigError, Rejected, SyncError, Unreachable
from sync.keys import KeyFile, verify_ed25519
from sync.signing import new_nonce, request_text, time_text
from sync.timefmt import parse_ms

__all__ = [
    "GZIP_OVER_BYTES",
    "MAX_JSON_REPLY_BYTES",
    "BadBatch",
    "BadProof",
    "BadReply",
    "ClockSkew",
    "Conflict",
    "DeviceClient",
    "InvalidCode",
    "NotFound",
    "Refused",
    "Reply",
    "ReplayedNonce",
    "Revoked",
    "SeqGap",
    "ServerBusy",
    "TooLarge",
    "check_server_url",
]

log = logging.getLogger(__name__)

GZIP_OVER_BYTES = 4096          # sync.md §3.1: the agent gzips any body over 4 KiB
GZIP_LEVEL = 3                  # a third of level 6's CPU for ~14 % more bytes: a Pi's CPU is the tighter budget
MAX_JSON_REPLY_BYTES = 1 << 20  # our JSON replies are small; anything bigger is not our server
_RETRYABLE = {408, 429}


# -- errors ---------------------------------------------------------------------------------------


class ServerBusy(Unreachable):
    """408, 429 or 5xx: the server is there but cannot take the request now."""

    def __init__(self, message: str, *, status: int, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class BadReply(Unreachable):
    """A reply that cannot be used: not JSON, too large, or a signature that does not verify."""


class _RejectedBase(Rejected):
    """A refusal with its status, error code and the (verified where possible) reply."""

    def __init__(self, message: str, *, reply: Reply) -> None:
        super().__init__(message)
        self.reply = reply

    @property
    def status(self) -> int:
        return self.reply.status

    @property
    def code(self) -> str:
        return self.reply.error or ""


class BadBatch(_RejectedBase, ValueError):
    """400 bad_batch: the server names the first bad seq."""


class SeqGap(_RejectedBase):
    """409 seq_gap: the server's contiguous head is behind our first seq (it lost acknowledged data)."""


class Conflict(_RejectedBase):
    """409 conflict: the server holds a different event for one of our seqs."""


class ClockSkew(_RejectedBase):
    """401 clock_skew: our X-Checkpoint-Time is off by more than 300 s; the reply carries a signed time."""


class ReplayedNonce(_RejectedBase):
    """401 replayed_nonce: a proxy delivered this request twice."""


class Revoked(_RejectedBase, PermissionError):
    """401 bad_signature / unknown_device, 403: the server no longer accepts this device's key."""


class TooLarge(_RejectedBase):
    """413: the batch is over the server's limits."""


class NotFound(_RejectedBase, LookupError):
    """404 (``no_bundle``, an unknown manifest or part, a keys version not yet published)."""


class InvalidCode(_RejectedBase, PermissionError):
    """403 invalid_code: unknown, used or expired enrolment code (one message for all)."""


class BadProof(_RejectedBase, ValueError):
    """400 bad_proof: the enrolment proof signature did not verify."""


class Refused(_RejectedBase):
    """Any other 4xx: a fault on our side (missing header, unknown route)."""


# -- replies --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, read whole (within its cap) and, for JSON, parsed.

    ``server_time_ms`` is set only when the reply's ``time`` object verified
    against a server key and our nonce.
    """

    status: int
    raw: bytes
    nonce: str | None
    rtt_s: float
    body: dict[str, Any] | None = None
    server_time_ms: int | None = None
    retry_after_s: float | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return None

    @property
    def detail(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("detail"), str):
            return str(self.body["detail"])[:200]
        return ""


def check_server_url(url: str, *, allow_plain_http: bool) -> str:
    """Normalise the server URL (no trailing ``/``) and apply the TLS rule of §2.6.

    Raises:
        ConfigError: not http(s), no host, or plain http to a non-loopback host.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"server URL {url!r} must be https://HOST[:PORT][/prefix]")
    if parts.query or parts.fragment:
        raise ConfigError(f"server URL {url!r} must not carry a query or fragment")
    if parts.scheme == "http" and not allow_plain_http and not _is_loopback(parts.hostname):
        raise ConfigError(
            f"server URL {url!r} is plain http to a non-loopback host; use https:// "
            "(or [sync] allow_plain_http = true for tests and demos)"
        )
    return url.strip().rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(int(value.strip())))
    except ValueError:
        return None  # an HTTP date: never trusted for timing (bundles.md §5.2: no Date headers)


# -- the client -----------------------------------------------------------------------------------


class DeviceClient:
    """Signed requests of one device to the upstream server.

    Args:
        server_url: base URL; a path prefix (reverse proxy) is allowed and not signed.
        device_id: the enrolled id (``None`` only for enrolment and public GETs).
        device_key: the device's private key (role ``device``).
        server_keys: returns the server public keys (64 hex) to verify ``time`` and acks
            with: the keys document's ``server`` role, or the key from enrolment (§2.5).
        server_time_s: returns the gate's estimate of server time, unix seconds (§2.5).
        on_time: called with ``(server_ms, rtt_s)`` for each verified ``time``.
        transport: an ``httpx`` transport (tests); default: a real connection pool.
        connect_timeout_s, request_timeout_s: connect timeout and total budget of one call.
        ca_file: CA bundle for the server certificate (default: the system store).
        allow_plain_http: allow ``http://`` to a non-loopback host.
        mono: monotonic clock (seconds) for round trips and the total deadline.
        on_request: called before every request (the agent's main loop feeds the systemd
            watchdog there, so several calls in one loop turn cannot starve it).

    Raises (constructor):
        ConfigError: a server URL that §2.6 forbids, or an unreadable CA file.
    """

    def __init__(
        self,
        server_url: str,
        *,
        device_id: str | None,
        device_key: KeyFile | None,
        server_keys: Callable[[], Iterable[str]] = tuple,
        server_time_s: Callable[[], int] | None = None,
        on_time: Callable[[int, float], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        connect_timeout_s: float = 10.0,
        request_timeout_s: float = 60.0,
        ca_file: Path | str | None = None,
        allow_plain_http: bool = False,
        mono: Callable[[], float] = time.monotonic,
        user_agent: str = "checkpoint-agent",
        on_request: Callable[[], None] | None = None,
    ) -> None:
        self.base_url = check_server_url(server_url, allow_plain_http=allow_plain_http)
        self.device_id = device_id
        self._key = device_key
        self._server_keys = server_keys
        self._server_time_s = server_time_s or (lambda: int(time.time()))
        self._on_time = on_time
        self._mono = mono
        self.request_timeout_s = request_timeout_s
        self._on_request = on_request
        verify: ssl.SSLContext | bool = True
        if self.base_url.startswith("http://"):
            verify = False  # no TLS on this URL: skip loading the CA store (a quarter second on a Pi)
        elif ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"[sync] ca_file {ca_file}: cannot load: {exc}") from exc
        timeout = httpx.Timeout(connect=connect_timeout_s, read=request_timeout_s, write=request_timeout_s,
                                pool=connect_timeout_s)
        self._http = httpx.Client(
            transport=transport, verify=verify, timeout=timeout, follow_redirects=False, trust_env=False,
            headers={"User-Agent": user_agent},
        )
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- signed device requests ------------------------------------------------------------------

    def device_path(self, suffix: str) -> str:
        """``/v1/devices/{device_id}/{suffix}``: the path as signed."""
        if self.device_id is None:
            raise SyncError("no device id: enrol first")
        return f"/v1/devices/{self.device_id}/{suffix.lstrip('/')}"

    def signed(
        self,
        method: str,
        path: str,
        *,
        json_body: bytes | None = None,
        nonce: str | None = None,
        expect_json: bool = True,
        expect_time: bool = True,
        max_bytes: int = MAX_JSON_REPLY_BYTES,
        truncate: bool = False,
        deadline_s: float | None = None,
    ) -> Reply:
        """Send one signed device request and map the answer (module docstring, rule 5).

        Args:
            method: ``GET`` or ``POST``.
            path: the path-and-query as signed, starting at ``/v1/``.
            json_body: the JSON bytes (POST); gzip-compressed on the wire when over 4 KiB.
            nonce: the ``X-Checkpoint-Nonce`` (default: a new one; a bundle poll passes its own).
            expect_json: a 2xx must be a JSON object (False for manifests, parts, statements).
            expect_time: a 2xx JSON reply must carry a ``time`` that verifies.
            max_bytes: cap on the decoded reply bytes.
            truncate: return the first ``max_bytes + 1`` bytes instead of failing when over the cap
                (bundle documents: the verifier names ``too_large``, bundles.md §1.7).
            deadline_s: total budget of this call (default ``request_timeout_s``).

        Returns:
            The reply of a 2xx answer.

        Raises:
            Unreachable: network error, timeout, 408/429/5xx, unusable reply.
            Rejected: a subclass per error code (module docstring).
        """
        if self._key is None or self.device_id is None:
            raise SyncError("signed requests need the device id and key")
        nonce = nonce or new_nonce()
        body = json_body or b""
        t = int(self._server_time_s())
        text = request_text(method, path, self.device_id, t, nonce, body)
        headers = {
            "X-Checkpoint-Device": self.device_id,
            "X-Checkpoint-Time": str(t),
            "X-Checkpoint-Nonce": nonce,
            "X-Checkpoint-Signature": self._key.sign(text).hex(),
        }
        wire = body
        if method.upper() == "POST":
            headers["Content-Type"] = "application/json"
            if len(body) > GZIP_OVER_BYTES:
                wire = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
                headers["Content-Encoding"] = "gzip"
        reply = self._exchange(method, path, wire, headers, nonce=nonce, max_bytes=max_bytes, truncate=truncate,
                               deadline_s=deadline_s)
        return self._judge(reply, method, path, expect_json=expect_json, expect_time=expect_time)

    def public_get(self, path: str, *, max_bytes: int, truncate: bool = True) -> bytes | None:
        """An unsigned GET (``/v1/keys/{n}.json``); None on 404.

        Raises:
            Unreachable: network error, timeout or any status other than 200/404.
        """
        reply = self._exchange("GET", path, b"", {}, nonce=None, max_bytes=max_bytes, truncate=truncate)
        if reply.status == 404:
            return None
        if reply.status != 200:
            raise ServerBusy(f"GET {path}: HTTP {reply.status}", status=reply.status,
                             retry_after_s=reply.retry_after_s)
        return reply.raw

    def post_json(self, path: str, doc: Mapping[str, Any], *, max_bytes: int = MAX_JSON_REPLY_BYTES) -> Reply:
        """An unsigned JSON POST (enrolment: authorised by the one-time code, not a device key)."""
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        reply = self._exchange("POST", path, body, {"Content-Type": "application/json"}, nonce=None,
                               max_bytes=max_bytes, truncate=False)
        return self._judge(reply, "POST", path, expect_json=True, expect_time=False)

    # -- plumbing --------------------------------------------------------------------------------

    def _exchange(
        self,
        method: str,
        path: str,
        wire: bytes,
        headers: dict[str, str],
        *,
        nonce: str | None,
        max_bytes: int,
        truncate: bool,
        deadline_s: float | None = None,
    ) -> Reply:
        if self._on_request is not None:
            self._on_request()
        url = self.base_url + path
        start = self._mono()
        deadline = start + (deadline_s if deadline_s is not None else self.request_timeout_s)
        self.requests += 1
        self.bytes_sent += len(wire)
        what = f"{method} {path.split('?')[0]}"
        try:
            with self._http.stream(method, url, content=wire, headers=headers) as resp:
                chunks: list[bytes] = []
                size = 0
                over = False
                for chunk in resp.iter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:
                        over = True
                        break
                    if self._mono() > deadline:
                        raise Unreachable(f"{what}: no complete reply within the deadline")
                raw = b"".join(chunks)
                self.bytes_received += len(raw)
                status = resp.status_code
                hdrs = {k.lower(): v for k, v in resp.headers.items()}
        except httpx.TimeoutException as exc:
            raise Unreachable(f"{what}: timeout ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:  # transport errors, decoding errors, protocol errors
            raise Unreachable(f"{what}: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise Unreachable(f"{what}: {exc}") from exc
        if over:
            if not truncate:
                raise BadReply(f"{what}: reply larger than {max_bytes} bytes")
            raw = raw[: max_bytes + 1]
        rtt = max(0.0, self._mono() - start)
        return Reply(status, raw, nonce, rtt, retry_after_s=_retry_after(hdrs.get("retry-after")), headers=hdrs)

    def _parse(self, reply: Reply) -> Reply:
        try:
            doc = json.loads(reply.raw.decode("utf-8")) if reply.raw else None
        except (UnicodeDecodeError, ValueError):
            doc = None
        if not isinstance(doc, dict):
            return reply
        server_ms = self._verify_time(doc.get("time"), reply.nonce, reply.rtt_s)
        return Reply(reply.status, reply.raw, reply.nonce, reply.rtt_s, doc, server_ms, reply.retry_after_s,
                     reply.headers)

    def _verify_time(self, obj: Any, nonce: str | None, rtt_s: float) -> int | None:
        """The server time of a ``time`` object, or None when it does not verify (§2.5)."""
        if nonce is None or self.device_id is None or not isinstance(obj, dict):
            return None
        st, n, sig = obj.get("server_time"), obj.get("nonce"), obj.get("sig")
        if not (isinstance(st, str) and isinstance(sig, str) and n == nonce):
            return None
        try:
            ms = parse_ms(st)
        except ValueError:
            return None
        if not self.verify_server_sig(time_text(self.device_id, nonce, st), sig):
            log.warning("reply time signature does not verify nonce=%s", nonce)
            return None
        if self._on_time is not None:
            self._on_time(ms, rtt_s)
        return ms

    def verify_server_sig(self, message: bytes, sig_hex: str) -> bool:
        """True when any current server key signed ``message`` (time objects, acks)."""
        return any(verify_ed25519(pub, message, sig_hex) for pub in self._server_keys())

    def _judge(self, reply: Reply, method: str, path: str, *, expect_json: bool, expect_time: bool) -> Reply:
        what = f"{method} {path.split('?')[0]}"
        status = reply.status
        if status >= 500 or status in _RETRYABLE:
            reply = self._parse(reply)
            raise ServerBusy(f"{what}: HTTP {status} {reply.error or ''}".rstrip(), status=status,
                             retry_after_s=reply.retry_after_s)
        if 200 <= status < 300:
            if not expect_json:
                return reply
            parsed = self._parse(reply)
            if parsed.body is None:
                raise BadReply(f"{what}: HTTP {status} with a body that is not a JSON object")
            if expect_time and parsed.server_time_ms is None:
                raise BadReply(f"{what}: reply without a verifiable signed time")
            return parsed
        if 300 <= status < 400:
            raise BadReply(f"{what}: unexpected redirect HTTP {status}")
        parsed = self._parse(reply)
        code = parsed.error or ""
        msg = f"{what}: HTTP {status} {code} {parsed.detail}".rstrip()
        cls: type[_RejectedBase]
        if status == 400:
            cls = {"bad_batch": BadBatch, "bad_proof": BadProof}.get(code, Refused)
        elif status == 401:
            cls = {"clock_skew": ClockSkew, "replayed_nonce": ReplayedNonce, "bad_signature": Revoked,
                   "unknown_device": Revoked}.get(code, Refused)
        elif status == 403:
            cls = InvalidCode if code == "invalid_code" else Revoked
        elif status == 404:
            cls = NotFound
        elif status == 409:
            cls = {"seq_gap": SeqGap, "conflict": Conflict}.get(code, Refused)
        elif status == 413:
            cls = TooLarge
        else:
            cls = Refused
        raise cls(msg, reply=parsed)
