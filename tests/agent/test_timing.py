"""Timers: full-jitter backoff (sync.md §3.4), bundle poll rhythm (bundles.md §4.3), server time (§2.5),
systemd notifications (hardware.md §4.4)."""

from __future__ import annotations

import random
import socket
import threading

import httpx

from edge.store.state import StateDB
from sync.agent.bundlepoll import BundlePoller
from sync.agent.fetcher import HttpFetcher
from sync.agent.notify import Notifier
from sync.agent.timing import Backoff, PollTimer, ServerClock
from sync.client import DeviceClient
from sync.errors import Unreachable
from sync.keys import generate_key


def test_backoff_full_jitter_bounds_and_retry_after():
    b = Backoff(2, 600, rng=random.Random(1))
    for n in range(1, 15):
        d = b.failure()
        assert 0 <= d <= min(600, 2 * 2 ** (n - 1))
    assert b.failure(retry_after_s=900) == 600  # Retry-After honoured up to the cap
    b.reset()
    assert b.failures == 0 and b.failure(retry_after_s=5) >= 5


def test_poll_timer_never_waits_longer_than_the_interval():
    t = PollTimer(30, rng=random.Random(2))
    for _ in range(200):
        assert 18 <= t.after_success() <= 27
    waits = [t.after_failure() for _ in range(8)]
    assert waits == [1, 2, 4, 8, 16, 30, 30, 30]
    assert 18 <= t.after_success() <= 27 and t.failed_in_row == 0


def _fetcher(handler):
    dev = generate_key("device", "d", seed=b"\1" * 32)
    return HttpFetcher(DeviceClient("http://127.0.0.1:1", device_id="gate-x-01", device_key=dev,
                                    transport=httpx.MockTransport(handler)))


def test_poller_polls_at_start_then_on_its_rhythm_and_now():
    calls = []
    f = _fetcher(lambda r: httpx.Response(404, json={"error": "no_bundle"}))

    def update(fetcher):
        calls.append(fetcher.current("ab" * 16))

    p = BundlePoller(update=update, fetcher=f, interval_s=30)
    p.start()
    try:
        deadline = threading.Event()
        while not calls and not deadline.wait(0.01):
            pass
        assert calls == [None]                     # 404 no_bundle -> None
        assert 18 <= p.next_in_s <= 27
        p.poll_now()
        while len(calls) < 2 and not deadline.wait(0.01):
            pass
        assert len(calls) == 2
    finally:
        p.stop()
    assert not p.alive


def test_poller_failures_retry_after_2_to_the_k():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    f = _fetcher(down)

    def update(fetcher):
        try:
            fetcher.current("ab" * 16)
        except Unreachable:
            return "fetch_failed"   # the update names it; the fetcher remembers it failed

    p = BundlePoller(update=update, fetcher=f, interval_s=30)
    waits = []
    for _ in range(7):
        assert p.poll_once() is False
        waits.append(p.next_in_s)
    assert waits == [1, 2, 4, 8, 16, 30, 30]


def test_fetcher_caps_and_errors():
    served = {"manifests": b"m" * 70_000, "parts": b"p" * 100}

    def handler(r):
        kind = r.url.path.split("/")[-2]
        if r.url.path.endswith("/bundle"):
            return httpx.Response(200, content=b"c" * 5000)
        return httpx.Response(200, content=served[kind])

    f = _fetcher(handler)
    assert len(f.current("ab" * 16)) == 4097          # reads stop at cap + 1
    assert len(f.manifest("a" * 64)) == 65537
    assert f.part("b" * 64, 100) == b"p" * 100
    assert len(f.part("b" * 64, 50)) == 51
    assert f.fetched == ["current", "manifest/" + "a" * 64, "part/" + "b" * 64, "part/" + "b" * 64]
    try:
        f.manifest("../../etc/passwd")
    except Unreachable:
        pass
    else:
        raise AssertionError("a non-hash id must not be requested")
    assert f.failed
    g = _fetcher(lambda r: httpx.Response(500))
    for call in (lambda: g.manifest("a" * 64), lambda: g.part("a" * 64, 10), lambda: g.keys(2)):
        try:
            call()
        except Unreachable:
            continue
        raise AssertionError("expected Unreachable")
    assert _fetcher(lambda r: httpx.Response(404)).keys(3) is None


def test_server_clock_estimate_survives_restart_in_the_same_boot(tmp_path):
    state = StateDB(tmp_path)
    b = {"now": 10_000}
    sc = ServerClock(state, None, boottime=lambda: b["now"], boot="boot-a", system_ms=lambda: 1)
    assert sc.now_ms() == 1                        # the system time until a signed time arrives
    sc.accept(1_700_000_000_000, rtt_s=0.2)
    b["now"] += 5000
    assert sc.now_ms() == 1_700_000_000_000 + 100 + 5000
    again = ServerClock(state, None, boottime=lambda: b["now"], boot="boot-a", system_ms=lambda: 1)
    assert again.now_ms() == sc.now_ms()
    other_boot = ServerClock(state, None, boottime=lambda: b["now"], boot="boot-b", system_ms=lambda: 1)
    assert other_boot.now_ms() == 1
    state.close()


def test_notifier_ready_status_watchdog(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    t = {"now": 0.0}
    n = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}, mono=lambda: t["now"])
    n2 = Notifier(env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert n2.watchdog_s is None                   # another process's watchdog: never ping
    n.ready()
    n.ready()
    n.status("upload=ok")
    n.status("upload=ok")
    n.ping()
    n.ping()                                       # rate-limited: at most once a second
    t["now"] = 1.5
    n.ping()
    got = []
    sock.settimeout(0.2)
    try:
        while True:
            got.append(sock.recv(100).decode())
    except TimeoutError:
        pass
    assert got == ["READY=1", "STATUS=upload=ok", "WATCHDOG=1", "WATCHDOG=1"]
    sock.close()
