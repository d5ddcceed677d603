"""The fault proxy itself (sync.md §6.3): every fault does what the table says, seen from both sides.

The upstream is a plain threaded HTTP server that records what reaches it, so each test
can tell "never forwarded" from "forwarded, answer lost" from "forwarded twice".
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.faultproxy import FAULTS, FaultProxy


class Upstream:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with outer.lock:
                    outer.seen.append({"method": self.command, "path": self.path, "body": body, "declared": n,
                                       "headers": dict(self.headers), "t": time.monotonic()})
                if self.path.endswith("/events"):
                    answer = {"acked_seq": 3, "stored": 2, "duplicates": 1}
                else:
                    answer = {"path": self.path, "len": len(body), "pad": "x" * 2000}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_seen(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if len(self.seen) >= n:
                    return list(self.seen)
            time.sleep(0.01)
        with self.lock:
            return list(self.seen)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.url, seed=11, default_p=0.0, delay_s=(0.1, 0.2), reorder_max_hold_s=5.0) as p:
        yield p


def client(proxy: FaultProxy) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, timeout=10)


def test_passes_requests_through_on_one_kept_alive_connection(proxy: FaultProxy, upstream: Upstream) -> None:
    with client(proxy) as c:
        assert c.get("/healthz").json()["path"] == "/healthz"
        r = c.post("/v1/devices/gate-1/heartbeat", content=b'{"a":1}', headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["len"] == 7
        batch = json.dumps({"events": [{"seq": i} for i in range(5)]}).encode()
        r = c.post("/v1/devices/gate-1/events", content=gzip.compress(batch), headers={"Content-Encoding": "gzip"})
        assert r.json()["stored"] == 2
        # a chunked request body arrives de-chunked with a Content-Length
        r = c.post("/v1/x", content=iter([b"ab", b"cde"]))
        assert r.json()["len"] == 5
    seen = upstream.wait_seen(4)
    assert [s["path"] for s in seen] == ["/healthz", "/v1/devices/gate-1/heartbeat", "/v1/devices/gate-1/events",
                                         "/v1/x"]
    assert seen[1]["headers"]["Connection"] == "close" and seen[2]["headers"]["Content-Encoding"] == "gzip"
    st = proxy.stats()
    assert st["requests"] == 4 and st["connections"] == 1 and st["forwarded"] == 4
    assert st["events_sent"] == 5 and st["duplicates_received"] == 1 and st["events_stored"] == 2
    assert st["route.events"] == 1 and st["route.heartbeat"] == 1 and not any(k.startswith("fault.") for k in st)


def test_drop_request_never_reaches_upstream(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("drop_request")
    with client(proxy) as c, pytest.raises(httpx.TransportError):
        c.post("/v1/devices/gate-1/events", content=b"{}")
    assert upstream.wait_seen(1, timeout=0.5) == []
    assert proxy.stats()["fault.drop_request"] == 1


def test_drop_response_reaches_upstream_but_not_the_client(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("drop_response")
    with client(proxy) as c, pytest.raises(httpx.TransportError):
        c.post("/v1/devices/gate-1/events", content=b'{"events":[{}]}')
    assert len(upstream.wait_seen(1)) == 1


def test_duplicate_forwards_twice_and_answers_once(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("duplicate")
    with client(proxy) as c:
        assert c.post("/v1/devices/gate-1/events", content=b'{"events":[{},{}]}').status_code == 200
    seen = upstream.wait_seen(2)
    assert len(seen) == 2 and seen[0]["body"] == seen[1]["body"]
    st = proxy.stats()
    assert st["forwarded"] == 2 and st["events_sent"] == 4 and st["answered.200"] == 1


def test_delay_holds_then_forwards(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("delay")
    with client(proxy) as c:
        assert c.get("/a").status_code == 200
    assert len(upstream.wait_seen(1)) == 1 and proxy.stats()["fault.delay"] == 1


def test_reorder_delivers_the_held_request_after_a_later_one(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("reorder", path_contains="/first")
    with client(proxy) as c:
        with pytest.raises(httpx.TransportError):
            c.post("/first", content=b"old")      # to the client it is lost ...
        for _ in range(3):                        # it waits for 1-3 later requests to pass
            assert c.post("/second", content=b"new").status_code == 200
    seen = upstream.wait_seen(4)
    # ... and the network delivers it late, after a request sent after it
    paths = [s["path"] for s in seen]
    assert paths[0] == "/second" and paths.index("/first") >= 1 and seen[paths.index("/first")]["body"] == b"old"
    assert proxy.stats()["reorder_delivered"] == 1


def test_reorder_hold_is_bounded_when_nothing_follows(upstream: Upstream) -> None:
    with FaultProxy(upstream.url, seed=1, default_p=0.0, reorder_max_hold_s=0.3) as p, client(p) as c:
        p.force("reorder")
        with pytest.raises(httpx.TransportError):
            c.get("/lonely")
        assert [s["path"] for s in upstream.wait_seen(1, timeout=5)] == ["/lonely"]


def test_error_reply_answers_without_forwarding(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("error_reply", times=6)
    with client(proxy) as c:
        statuses = set()
        for _ in range(6):
            r = c.get("/x")
            assert r.headers["Retry-After"] == "1" and r.json()["error"]
            statuses.add(r.status_code)
    assert statuses <= {429, 500, 503} and len(statuses) >= 2
    assert upstream.wait_seen(1, timeout=0.3) == []


def test_truncate_sends_half_the_body_and_closes(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("truncate")
    with client(proxy) as c, pytest.raises(httpx.TransportError):
        c.get("/big")
    assert len(upstream.wait_seen(1)) == 1


def test_reset_is_an_rst_before_or_after_forwarding(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("reset", times=8)
    with client(proxy) as c:
        for _ in range(8):
            with pytest.raises(httpx.TransportError):
                c.get("/r")
    forwarded = len(upstream.wait_seen(8, timeout=1))
    assert 0 < forwarded < 8   # seeded: some before, some after forwarding


def test_cut_request_sends_part_of_the_body_then_closes_both_sides(proxy: FaultProxy, upstream: Upstream) -> None:
    proxy.force("cut_request")
    with client(proxy) as c, pytest.raises(httpx.TransportError):
        c.post("/v1/devices/gate-1/events", content=b"0123456789" * 100)
    seen = upstream.wait_seen(1)
    assert len(seen) == 1 and seen[0]["declared"] == 1000 and len(seen[0]["body"]) == 500


def test_unreachable_upstream_is_a_502(upstream: Upstream) -> None:
    url = upstream.url
    upstream.close()
    with FaultProxy(url, seed=1, default_p=0.0) as p, client(p) as c:
        r = c.get("/v1/devices/gate-1/state")
        assert r.status_code == 502 and r.json()["error"] == "bad_gateway"
        assert p.stats()["upstream_errors"] == 1


def test_seeded_choice_is_reproducible_and_probabilities_are_checked(upstream: Upstream) -> None:
    def faults(seed: int) -> list[str | None]:
        p = FaultProxy(upstream.url, seed=seed)
        from tests.faultproxy import _Request

        req = _Request("GET", "/x", "HTTP/1.1", [], b"", True)
        return [p._choose(req) for _ in range(400)]

    a, b = faults(5), faults(5)
    assert a == b and a != faults(6)
    got = {f for f in a if f}
    assert got == set(FAULTS)                        # 5 % each: all nine show up in 400 requests
    assert 0.3 < sum(1 for f in a if f) / len(a) < 0.6
    with pytest.raises(ValueError):
        FaultProxy(upstream.url, default_p=0.2)      # 9 × 20 % > 100 %
    with pytest.raises(ValueError):
        FaultProxy(upstream.url, probabilities={"teleport": 0.1})
    with pytest.raises(ValueError):
        FaultProxy("https://example.org")
    p = FaultProxy(upstream.url, probabilities={"delay": 0.5}, default_p=0.0)
    assert p.probabilities["delay"] == 0.5 and p.probabilities["reset"] == 0.0
    p.faults_off()
    assert sum(p.probabilities.values()) == 0.0


def test_garbage_from_the_client_closes_only_that_connection(proxy: FaultProxy) -> None:
    import socket

    for junk in (b"NOT HTTP\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"GET / HTTP/1.1\r\nbad\r\n\r\n",
                 b"POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", b"\x00" * 100):
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(100) == b""
    with client(proxy) as c:
        assert c.get("/still-fine").status_code == 200
    assert proxy.stats()["client_errors"] >= 4
