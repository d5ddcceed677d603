"""What the fault proxy showed the server: a request cut off in the middle of its body.

``cut_request`` (sync.md §6.3) sends the headers and part of the body, then closes. The
server must treat that as the client's problem: no 500, no ``internal error`` log line
with a traceback, nothing stored, and the next request served as usual. (Before the fix
each cut upload logged a traceback as an internal error and uvicorn an "Exception in
ASGI application".)
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.harness import ServerHarness


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHarness]:
    h = ServerHarness(f"sqlite:///{tmp_path / 'server.db'}", tmp_path)
    yield h
    h.close()


def cut(url: str, head: str, declared: int, sent: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall((head + f"Content-Length: {declared}\r\nContent-Type: application/json\r\n\r\n").encode() + sent)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        chunks = []
        while True:
            try:
                b = s.recv(4096)
            except OSError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def test_a_body_cut_off_mid_way_is_not_a_server_error(server: ServerHarness, caplog: pytest.LogCaptureFixture) -> None:
    gate = server.gate()
    gate.chain.append("decision", {"outcome": "admit"})
    body = gate.batch(1, 1)
    import json

    raw = json.dumps(body).encode()
    path = f"/v1/devices/{gate.device_id}/events"
    headers = gate.sign_headers("POST", path, raw)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    admin = f"POST /v1/admin/sites HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.admin_token}\r\n"
    enroll = "POST /v1/enroll HTTP/1.1\r\nHost: x\r\n"
    with caplog.at_level(logging.INFO):
        for h, declared, sent in [(head, len(raw), raw[: len(raw) // 2]), (head, len(raw), b""),
                                  (admin, 200, b'{"site_id": "x'), (enroll, 300, b'{"code"')]:
            answer = cut(server.url, h, declared, sent)
            assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
        time.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    assert any("request body incomplete" in r.getMessage() or "client disconnected" in r.getMessage()
               for r in caplog.records)
    # nothing was stored, and the whole request still goes through afterwards
    assert server.rows("SELECT count(*) AS n FROM events")[0].n == 0
    r = gate.upload(body)
    assert r.status_code == 200 and r.json()["acked_seq"] == 1
