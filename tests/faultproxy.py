"""Loopback fault proxy between the sync agent and the server (sync.md §6.3).

tc-netem and Toxiproxy act on packets or TCP streams and cannot duplicate or reorder
*requests*; this asyncio HTTP/1.1 proxy can. It reads each request whole (by
``Content-Length``; a chunked body is de-chunked), forwards it on its own upstream
connection (``Connection: close``) and applies, per request, at most one fault drawn
with seeded probabilities (default 5 % each, all configurable):

=============== ==============================================================================
fault           effect
=============== ==============================================================================
drop_request    close the client connection without forwarding
drop_response   forward, then close without answering (the server committed; the client errs)
duplicate       forward twice at once; return one of the two answers
delay           hold 0.1-5 s before forwarding
reorder         stale delivery: the client's connection is closed at once (to the client the
                request is lost, so it retries), the request itself is held until 1-3 later
                requests have passed (or ``reorder_max_hold_s``), then forwarded; its answer
                goes nowhere. One request in flight per gate (§3.1) means a held request can
                only be overtaken once its sender has given up on it.
error_reply     answer 429, 500 or 503 with ``Retry-After: 1`` without forwarding
truncate        forward, return the headers and half of the body, close
reset           close the client socket with SO_LINGER 0 (RST), before or after forwarding
cut_request     forward only part of the body upstream, then close both sides
=============== ==============================================================================

An upstream that cannot be reached (a killed server) is answered ``502`` as a real
reverse proxy would. Counters (``stats()``) say what happened: requests, faults
applied, upstream sends, answers by status, and for uploads the events sent upstream
(every copy counts: re-sends and duplicates included) and the ``duplicates`` the
server reported in its 200 answers.

Use from a test (a thread runs the event loop)::

    with FaultProxy("http://127.0.0.1:8080", seed=7) as proxy:
        ... point the agent at proxy.url ...
        proxy.faults_off()     # let it drain
        print(proxy.stats())

``force(fault, path_contains=…)`` makes the next matching request(s) get that fault,
for tests that need one exact fault (e.g. the lost ack of sync.md §6.4 case 5).
Run alone: ``python -m tests.faultproxy --upstream http://127.0.0.1:8080 --seed 1``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import logging
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DEFAULT_P", "FAULTS", "FaultProxy"]

log = logging.getLogger(__name__)

FAULTS = ("drop_request", "drop_response", "duplicate", "delay", "reorder", "error_reply", "truncate", "reset",
          "cut_request")
DEFAULT_P = 0.05
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length"}


class _BadMessage(Exception):
    pass


@dataclass
class _Request:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def wire(self, *, body: bytes | None = None, declared: int | None = None) -> bytes:
        """The request for upstream: hop-by-hop headers dropped, ``Connection: close``."""
        body = self.body if body is None else body
        lines = [f"{self.method} {self.target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in _HOP]
        lines.append(f"Content-Length: {len(self.body) if declared is None else declared}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class _Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def wire(self, *, keep_alive: bool, body: bytes | None = None) -> bytes:
        body = self.body if body is None else body
        lines = [f"HTTP/1.1 {self.status} {self.reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k.lower() not in _HOP]
        lines.append(f"Content-Length: {len(self.body)}")  # truncate sends less than it declares
        lines.append("Connection: " + ("keep-alive" if keep_alive else "close"))
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class _Forced:
    fault: str
    path_contains: str | None
    times: int


@dataclass
class _Held:
    request: _Request
    after: int          # forward once this many later requests have gone upstream
    deadline: float     # ... or at this monotonic time
    started: float = field(default_factory=time.monotonic)


async def _read_headers(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise _BadMessage("connection closed inside the headers") from exc
    except asyncio.LimitOverrunError as exc:
        raise _BadMessage("headers too large") from exc
    text = head.decode("latin-1").rstrip("\r\n")
    first, *rest = text.split("\r\n")
    headers = []
    for line in rest:
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadMessage(f"bad header line {line[:60]!r}")
        headers.append((name.strip(), value.strip()))
    return first, headers


async def _read_body(reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, to_eof: bool) -> bytes:
    h = {k.lower(): v for k, v in headers}
    if "chunked" in h.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return bytes(out)
            if len(out) + size > MAX_BODY:
                raise _BadMessage("body too large")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in h:
        n = int(h["content-length"])
        if n < 0 or n > MAX_BODY:
            raise _BadMessage("bad Content-Length")
        return await reader.readexactly(n)
    if to_eof:
        return await reader.read(MAX_BODY)
    return b""


class FaultProxy:
    """An asyncio HTTP/1.1 fault proxy on 127.0.0.1 (module docstring).

    Args:
        upstream: ``http://host:port`` of the server.
        seed: seeds the fault choice, delays and reorder holds (printed by the harness).
        probabilities: fault → probability; faults not named get ``default_p``. At most
            one fault per request, so the sum must be ≤ 1.
        default_p: probability of each fault not named (5 %).
        port: listen port (0 = any free one).
        delay_s: the range of ``delay``.
        reorder_max_hold_s: the longest a reordered request is held.
        upstream_timeout_s: connect + answer budget of one upstream exchange.
    """

    def __init__(self, upstream: str, *, seed: int = 0, probabilities: Mapping[str, float] | None = None,
                 default_p: float = DEFAULT_P, port: int = 0, delay_s: tuple[float, float] = (0.1, 5.0),
                 reorder_max_hold_s: float = 5.0, upstream_timeout_s: float = 90.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.seed = seed
        self.rng = random.Random(seed)
        self.delay_s = delay_s
        self.reorder_max_hold_s = reorder_max_hold_s
        self.upstream_timeout_s = upstream_timeout_s
        self._lock = threading.Lock()
        self._p: dict[str, float] = {}
        self.set_probabilities(probabilities or {}, default_p=default_p)
        self._port = port
        self._forced: list[_Forced] = []
        self._held: list[_Held] = []
        self._c: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    # -- configuration -------------------------------------------------------------------------------

    def set_probabilities(self, probabilities: Mapping[str, float], *, default_p: float | None = None) -> None:
        """Set fault probabilities (names not given keep theirs, or get ``default_p`` when it is given)."""
        unknown = set(probabilities) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
        new = {f: (default_p if default_p is not None else self._p.get(f, DEFAULT_P)) for f in FAULTS}
        new.update({f: float(p) for f, p in probabilities.items()})
        if any(not 0.0 <= p <= 1.0 for p in new.values()) or sum(new.values()) > 1.0 + 1e-9:
            raise ValueError(f"each probability in [0, 1] and their sum ≤ 1 (one fault per request): {new}")
        with self._lock:
            self._p = new

    @property
    def probabilities(self) -> dict[str, float]:
        with self._lock:
            return dict(self._p)

    def faults_off(self) -> None:
        """Pass everything through unchanged (forced faults are dropped too); held requests go out now."""
        self.set_probabilities({}, default_p=0.0)
        with self._lock:
            self._forced.clear()
            for h in self._held:
                h.after, h.deadline = 0, 0.0

    def force(self, fault: str, *, path_contains: str | None = None, times: int = 1) -> None:
        """Give the next ``times`` requests whose target contains ``path_contains`` this fault."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self._lock:
            self._forced.append(_Forced(fault, path_contains, times))

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (``fault.<name>``, ``status.<code>``, ``events_sent``, …)."""
        with self._lock:
            out: dict[str, Any] = dict(self._c)
            out["held"] = len(self._held)
            out["seed"] = self.seed
        return out

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- running -----------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Start listening in the running loop (for asyncio callers); ``aclose`` stops."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self._port, limit=MAX_HEAD)
        self.port = self._server.sockets[0].getsockname()[1]
        self._spawn(self._release_held())

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._clients):
            with contextlib.suppress(Exception):
                w.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def start(self) -> FaultProxy:
        """Run the proxy's loop in a daemon thread; returns once it listens."""

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:
                self._start_error = exc
                self._started.set()
                loop.close()
                return
            self._started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the fault choice --------------------------------------------------------------------------

    def _choose(self, req: _Request) -> str | None:
        with self._lock:
            for f in self._forced:
                if f.path_contains is None or f.path_contains in req.target:
                    f.times -= 1
                    if f.times <= 0:
                        self._forced.remove(f)
                    return f.fault
            r = self.rng.random()
            acc = 0.0
            for fault in FAULTS:
                acc += self._p[fault]
                if r < acc:
                    return fault
        return None

    # -- per connection ----------------------------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        self._count("connections")
        try:
            while True:
                try:
                    got = await _read_headers(reader)
                    if got is None:
                        return
                    first, headers = got
                    method, target, version = first.split(" ", 2)
                    body = await _read_body(reader, headers, to_eof=False)
                except (_BadMessage, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError):
                    self._count("client_errors")
                    return
                conn = next((v.lower() for k, v in headers if k.lower() == "connection"), "")
                keep = "close" not in conn and version.upper() == "HTTP/1.1"
                req = _Request(method.upper(), target, version, headers, body, keep)
                self._count("requests")
                self._count(f"route.{_route(target)}")
                if not await self._handle(req, reader, writer):
                    return
                if not req.keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._clients.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, req: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Apply the fault (if any) to one request; False when the client connection is finished."""
        fault = self._choose(req)
        if fault is not None:
            self._count(f"fault.{fault}")
        if fault == "drop_request":
            return False
        if fault == "error_reply":
            status = self.rng.choice([429, 500, 503])
            body = json.dumps({"error": "rate_limited" if status == 429 else "proxy_fault",
                               "detail": f"fault proxy: injected {status}"}).encode()
            resp = _Response(status, {429: "Too Many Requests", 500: "Internal Server Error",
                                      503: "Service Unavailable"}[status],
                             [("Content-Type", "application/json"), ("Retry-After", "1")], body)
            await self._answer(writer, resp, req)
            return True
        if fault == "reset" and self.rng.random() < 0.5:
            _rst(writer)
            return False
        if fault == "reorder":
            with self._lock:
                self._held.append(_Held(req, after=self._c["passed"] + self.rng.randint(1, 3),
                                        deadline=time.monotonic() + self.rng.uniform(0.2, self.reorder_max_hold_s)))
            return False
        if fault == "cut_request":
            await self._cut(req)
            return False
        if fault == "delay":
            await asyncio.sleep(self.rng.uniform(*self.delay_s))
        if fault == "duplicate":
            answers = await asyncio.gather(self._forward(req), self._forward(req))
            good = [a for a in answers if a is not None]
            resp = self.rng.choice(good) if good else None
        else:
            resp = await self._forward(req)
        if resp is None:
            resp = _Response(502, "Bad Gateway", [("Content-Type", "application/json")],
                             b'{"error":"bad_gateway","detail":"fault proxy: upstream not reachable"}')
        if fault == "drop_response":
            return False
        if fault == "reset":
            _rst(writer)
            return False
        if fault == "truncate":
            with contextlib.suppress(ConnectionError):
                writer.write(resp.wire(keep_alive=False, body=resp.body[: len(resp.body) // 2]))
                await writer.drain()
            return False
        await self._answer(writer, resp, req)
        return True

    async def _answer(self, writer: asyncio.StreamWriter, resp: _Response, req: _Request) -> None:
        self._count(f"answered.{resp.status}")
        writer.write(resp.wire(keep_alive=req.keep_alive))
        await writer.drain()

    # -- upstream ----------------------------------------------------------------------------------

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection(self.upstream_host, self.upstream_port,
                                                              limit=MAX_HEAD), 10)

    async def _forward(self, req: _Request) -> _Response | None:
        """One upstream exchange on a fresh connection; None when upstream cannot be reached or answer."""
        self._count("forwarded")
        self._note_upload(req)
        try:
            return await asyncio.wait_for(self._exchange(req), self.upstream_timeout_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, _BadMessage, ValueError):
            self._count("upstream_errors")
            return None
        finally:
            self._count("passed")  # answered or failed: what a held (reordered) request waits for

    async def _exchange(self, req: _Request) -> _Response:
        reader, writer = await self._open()
        try:
            writer.write(req.wire())
            await writer.drain()
            got = await _read_headers(reader)
            if got is None:
                raise _BadMessage("upstream closed without an answer")
            first, headers = got
            _, status, *reason = first.split(" ", 2)
            no_body = req.method == "HEAD" or status in ("204", "304")
            body = b"" if no_body else await _read_body(reader, headers, to_eof=True)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
        resp = _Response(int(status), reason[0] if reason else "", headers, body)
        self._count(f"upstream.{resp.status}")
        self._note_answer(req, resp)
        return resp

    async def _cut(self, req: _Request) -> None:
        """Send the headers and part of the body upstream, then close both sides."""
        self._count("forwarded_cut")
        try:
            reader, writer = await self._open()
        except (TimeoutError, OSError):
            self._count("upstream_errors")
            return
        try:
            part = req.body[: len(req.body) // 2] if req.body else b""
            writer.write(req.wire(body=part, declared=max(len(req.body), 1)))
            await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _release_held(self) -> None:
        """Forward reordered requests once enough later ones passed or their hold ran out."""
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            with self._lock:
                due = [h for h in self._held if self._c["passed"] >= h.after or now >= h.deadline]
                for h in due:
                    self._held.remove(h)
            for h in due:
                self._count("reorder_delivered")
                self._spawn(self._forward(h.request))

    # -- counting uploads --------------------------------------------------------------------------

    def _note_upload(self, req: _Request) -> None:
        if req.method != "POST" or not req.target.split("?")[0].endswith("/events"):
            return
        self._count("upload_requests")
        try:
            body = req.body
            if (req.header("content-encoding") or "").lower() == "gzip":
                body = gzip.decompress(body)
            doc = json.loads(body)
            self._count("events_sent", len(doc.get("events") or []))
        except (OSError, EOFError, ValueError, AttributeError):
            self._count("upload_unreadable")

    def _note_answer(self, req: _Request, resp: _Response) -> None:
        if req.method != "POST" or not req.target.split("?")[0].endswith("/events") or resp.status != 200:
            return
        try:
            doc = json.loads(resp.body)
            self._count("duplicates_received", int(doc.get("duplicates") or 0))
            self._count("events_stored", int(doc.get("stored") or 0))
        except (ValueError, TypeError, AttributeError):
            self._count("answer_unreadable")


def _route(target: str) -> str:
    path = target.split("?")[0]
    if path.startswith("/v1/devices/"):
        parts = path.split("/")
        return parts[4] if len(parts) > 4 else "device"
    return path.strip("/").split("/")[0] or "root"


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - manual use
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--p", type=float, default=DEFAULT_P, help="probability of each fault")
    args = ap.parse_args(argv)
    proxy = FaultProxy(args.upstream, seed=args.seed, port=args.port, default_p=args.p).start()
    print(f"fault proxy on {proxy.url} -> {args.upstream} (seed {args.seed})", flush=True)
    try:
        while True:
            time.sleep(10)
            print(json.dumps(proxy.stats(), sort_keys=True), flush=True)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
