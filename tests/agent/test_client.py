"""The signed HTTP client: the worked example of sync.md §7, error mapping, caps, bad replies."""

from __future__ import annotations

import gzip
import hashlib
import json

import httpx
import pytest

from sync.client import (
    BadBatch,
    BadReply,
    ClockSkew,
    Conflict,
    DeviceClient,
    NotFound,
    Refused,
    ReplayedNonce,
    Revoked,
    SeqGap,
    ServerBusy,
    TooLarge,
    check_server_url,
)
from sync.errors import ConfigError, Unreachable
from sync.keys import generate_key
from sync.signing import ack_text
from tests.conftest import load_vector


def _vector_keys():
    up = load_vector("events.json")["upload"]
    dev = generate_key("device", "device", seed=bytes.fromhex(up["device_key_seed_hex"]))
    srv = generate_key("server", "server", seed=bytes.fromhex(up["server_key_seed_hex"]))
    return up, dev, srv


def test_request_signature_and_reply_match_the_worked_example():
    up, dev, srv = _vector_keys()
    assert dev.public == up["device_public_key"] and srv.public == up["server_public_key"]
    seen: dict[str, object] = {}
    times: list[tuple[int, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        raw = request.read()
        seen["headers"] = dict(request.headers)
        seen["body"] = gzip.decompress(raw) if request.headers.get("content-encoding") == "gzip" else raw
        return httpx.Response(200, json=up["response"])

    client = DeviceClient("http://127.0.0.1:8080", device_id="gate-fc-0007", device_key=dev,
                          server_keys=lambda: [srv.public], server_time_s=lambda: 1649723466,
                          on_time=lambda ms, rtt: times.append((ms, rtt)), transport=httpx.MockTransport(answer))
    body = up["body"].encode()
    reply = client.signed("POST", "/v1/devices/gate-fc-0007/events", json_body=body,
                          nonce=up["headers"]["X-Checkpoint-Nonce"])
    h = seen["headers"]
    assert h["x-checkpoint-signature"] == up["request_sig"]
    assert h["x-checkpoint-time"] == "1649723466"
    assert "content-encoding" not in h   # 2368 bytes: gzip only over 4 KiB
    assert seen["body"] == body
    assert hashlib.sha256(seen["body"]).hexdigest() == up["body_sha256"]
    assert reply.server_time_ms is not None and times and times[0][0] == reply.server_time_ms
    r = up["response"]
    assert client.verify_server_sig(ack_text("gate-fc-0007", reply.nonce, r["acked_seq"], r["acked_hash"]),
                                    r["ack_sig"])


def test_get_signature_matches_the_bundle_poll_vector():
    up, dev, srv = _vector_keys()
    got = {}

    def answer(request: httpx.Request) -> httpx.Response:
        got.update(request.headers)
        return httpx.Response(404, json={"error": "no_bundle", "detail": "nothing published"})

    client = DeviceClient("https://ck.example.org/prefix", device_id="gate-fc-0007", device_key=dev,
                          server_keys=lambda: [srv.public], server_time_s=lambda: 1649723496,
                          transport=httpx.MockTransport(answer))
    with pytest.raises(NotFound):
        client.signed("GET", "/v1/devices/gate-fc-0007/bundle", nonce="0123456789abcdef0123456789abcdef",
                      expect_json=False)
    assert got["x-checkpoint-signature"] == up["get_bundle"]["request_sig"]


def _client(handler, **kw):
    dev = generate_key("device", "d", seed=b"\1" * 32)
    srv = generate_key("server", "s", seed=b"\2" * 32)
    c = DeviceClient("http://127.0.0.1:1", device_id="gate-x-01", device_key=dev, server_keys=lambda: [srv.public],
                     transport=httpx.MockTransport(handler), **kw)
    return c, srv


@pytest.mark.parametrize("status,code,exc", [
    (400, "bad_batch", BadBatch), (400, "whatever", Refused), (401, "clock_skew", ClockSkew),
    (401, "replayed_nonce", ReplayedNonce), (401, "bad_signature", Revoked), (401, "unknown_device", Revoked),
    (401, "bad_auth", Refused), (403, "device_revoked", Revoked), (403, "device_not_active", Revoked),
    (404, "no_bundle", NotFound), (409, "seq_gap", SeqGap), (409, "conflict", Conflict), (413, "too_large", TooLarge),
    (408, "x", ServerBusy), (429, "rate_limited", ServerBusy), (500, "x", ServerBusy), (503, "x", ServerBusy),
])
def test_error_mapping(status, code, exc):
    c, _ = _client(lambda r: httpx.Response(status, json={"error": code, "detail": "d"}, headers={"Retry-After": "3"}))
    with pytest.raises(exc) as info:
        c.signed("POST", "/v1/devices/gate-x-01/events", json_body=b"{}")
    if isinstance(info.value, ServerBusy):
        assert info.value.retry_after_s == 3
        assert isinstance(info.value, Unreachable)


@pytest.mark.parametrize("reply", [
    b"", b"not json", b"[1,2]", b'{"acked_seq": 1', "{\"a\": \"\udcff\"}".encode("utf-8", "surrogatepass"),
    b'{"time": {"server_time": "2022-01-01T00:00:00.000Z", "nonce": "x", "sig": "00"}}',
])
def test_garbage_and_truncated_200_replies_are_unreachable_not_crashes(reply):
    c, _ = _client(lambda r: httpx.Response(200, content=reply))
    with pytest.raises(BadReply):
        c.signed("POST", "/v1/devices/gate-x-01/events", json_body=b"{}")


def test_oversize_reply_is_capped_while_streaming():
    big = b'{"x":"' + b"a" * (3 << 20) + b'"}'
    c, _ = _client(lambda r: httpx.Response(200, content=big))
    with pytest.raises(BadReply, match="larger than"):
        c.signed("GET", "/v1/devices/gate-x-01/state")
    raw = c.signed("GET", "/v1/devices/gate-x-01/parts/" + "0" * 64, expect_json=False, max_bytes=1000,
                   truncate=True).raw
    assert len(raw) == 1001


def test_gzip_reply_is_capped_on_decoded_bytes():
    payload = b"a" * (200_000)
    c, _ = _client(lambda r: httpx.Response(200, content=gzip.compress(payload),
                                            headers={"Content-Encoding": "gzip"}))
    raw = c.signed("GET", "/v1/devices/gate-x-01/parts/" + "0" * 64, expect_json=False, max_bytes=65536,
                   truncate=True).raw
    assert len(raw) == 65537 and set(raw) == {ord("a")}


def test_time_from_another_nonce_or_key_is_not_believed():
    got = []
    other = generate_key("server", "o", seed=b"\3" * 32)

    def answer(request: httpx.Request) -> httpx.Response:
        from sync.signing import time_text
        n = request.headers["x-checkpoint-nonce"]
        st = "2026-11-23T10:00:00.000Z"
        return httpx.Response(200, json={"time": {"server_time": st, "nonce": n,
                                                  "sig": other.sign(time_text("gate-x-01", n, st)).hex()}})

    c, _ = _client(answer, on_time=lambda ms, rtt: got.append(ms))
    with pytest.raises(BadReply):
        c.signed("GET", "/v1/devices/gate-x-01/state")
    assert got == []


def test_network_errors_are_unreachable():
    def boom(request):
        raise httpx.ConnectError("refused", request=request)

    c, _ = _client(boom)
    with pytest.raises(Unreachable):
        c.signed("GET", "/v1/devices/gate-x-01/state")

    def slow(request):
        raise httpx.ReadTimeout("slow", request=request)

    c, _ = _client(slow)
    with pytest.raises(Unreachable, match="timeout"):
        c.signed("GET", "/v1/devices/gate-x-01/state")


def test_proxy_prefix_is_sent_but_not_signed():
    paths = []
    c = DeviceClient("https://ck.example.org/gw/", device_id="gate-x-01",
                     device_key=generate_key("device", "d", seed=b"\1" * 32),
                     transport=httpx.MockTransport(lambda r: (paths.append(r.url.path),
                                                              httpx.Response(404, json={"error": "no_bundle"}))[1]))
    with pytest.raises(NotFound):
        c.signed("GET", "/v1/devices/gate-x-01/bundle", expect_json=False)
    assert paths == ["/gw/v1/devices/gate-x-01/bundle"]


@pytest.mark.parametrize("url,ok", [
    ("https://ck.example.org", True), ("http://127.0.0.1:8080", True), ("http://localhost:8080/", True),
    ("http://[::1]:8080", True), ("http://10.0.0.5:8080", False), ("ftp://x.org", False), ("https://", False),
    ("https://x.org/?a=1", False), ("garbage", False),
])
def test_server_url_rule(url, ok):
    if ok:
        assert not check_server_url(url, allow_plain_http=False).endswith("/")
    else:
        with pytest.raises(ConfigError):
            check_server_url(url, allow_plain_http=False)
    assert check_server_url("http://10.0.0.5:8080", allow_plain_http=True)


def test_reply_json_with_time_for_error_bodies():
    c, srv = _client(lambda r: httpx.Response(409, content=json.dumps({"error": "seq_gap", "expected_seq": 3})))
    with pytest.raises(SeqGap) as info:
        c.signed("POST", "/v1/devices/gate-x-01/events", json_body=b"{}")
    assert info.value.reply.body["expected_seq"] == 3 and info.value.code == "seq_gap"


def test_ca_file_that_cannot_be_loaded_is_a_config_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="ca_file"):
        DeviceClient("https://ck.example.org", device_id="gate-x-01", device_key=None, ca_file=bad)
    with pytest.raises(ConfigError):
        DeviceClient("https://ck.example.org", device_id="gate-x-01", device_key=None, ca_file=tmp_path / "none")


def test_public_surface_of_the_agent_package():
    import sync.agent as pkg

    for name in pkg.__all__:
        assert getattr(pkg, name) is not None
    with pytest.raises(AttributeError):
        pkg.nothing_here  # noqa: B018
