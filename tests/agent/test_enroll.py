"""Enrolment (sync.md §2.3): key, proof, identity, binding and its event; idempotence; refusals."""

from __future__ import annotations

import json
import stat

import httpx
import pytest

from edge.config import GateConfig
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.agent.enroll import EnrollError, enroll
from sync.identity import load_identity
from tests.agent.conftest import seeded_key
from tests.agent.fakeserver import FakeServer

CODE = "7KQ4-9MZT-H2XC"


def _cfg(tmp_path, **sync):
    return GateConfig.model_validate({"gate": {"device_id": "gate-fc-0007", "data_dir": str(tmp_path / "gate")},
                                      "sync": sync})


def _server():
    s = FakeServer("gate-fc-0007", "", seeded_key("server", "server"))
    s.codes["7KQ49MZTH2XC"] = None
    return s


def test_enroll_writes_identity_key_binding_and_event(tmp_path):
    cfg = _cfg(tmp_path)
    server = _server()
    installed = []
    res = enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=server.transport(),
                 install_anchor=lambda data: installed.append(data) or "installed keys 1")
    ident = load_identity(cfg.identity_dir)
    assert ident is not None and ident.device_id == "gate-fc-0007" and ident.keyid == res.keyid
    key_mode = stat.S_IMODE((cfg.identity_dir / "device.key").stat().st_mode)
    ident_mode = stat.S_IMODE((cfg.identity_dir / "identity.json").stat().st_mode)
    assert key_mode == 0o600 and ident_mode == 0o640
    assert res.anchor.startswith("not found") and installed == []  # this server serves no keys document
    with StateDB(cfg.data_dir) as st, EventStore(cfg.data_dir, "gate-fc-0007") as store:
        row = st.read_row("binding")
        assert row["venue_id"] == "411322-0031-01" and row["source"] == "enrollment"
        ev = json.loads(store.get(row["event_seq"]).body)
        assert ev["kind"] == "venue_bound"
        assert ev["payload"] == {"venue": {"venue_id": "411322-0031-01", "zone": "A", "door": "east"},
                                 "firm_id": "F0012", "source": "enrollment", "kid": None, "venue_name": None,
                                 "by": None}


def test_enroll_fetches_the_keys_anchor_when_it_holds_none(tmp_path):
    cfg = _cfg(tmp_path)
    server = _server()
    server.keys_docs["1"] = b'{"signatures":[],"signed":{}}'
    got = []
    res = enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=server.transport(),
                 install_anchor=lambda data: got.append(data) or "anchor keys v1, root ids ...")
    assert got == [b'{"signatures":[],"signed":{}}'] and res.anchor.startswith("anchor keys v1")


def test_enroll_again_is_harmless_and_completes_a_half_done_binding(tmp_path):
    cfg = _cfg(tmp_path)
    server = _server()
    first = enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=server.transport())
    # a crash right after the event append but before the row kept its seq
    with StateDB(cfg.data_dir) as st:
        st.update_row("binding", lambda old: {"event_seq": None})
    again = enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=server.transport())
    assert again.already and again.venue_bound_seq == first.venue_bound_seq
    with EventStore(cfg.data_dir, "gate-fc-0007") as store:
        assert len(store.recent(["venue_bound"], limit=5)) == 1


def test_refused_code_changes_nothing(tmp_path):
    cfg = _cfg(tmp_path)
    server = _server()
    with pytest.raises(EnrollError, match="refused the code"):
        enroll(cfg, server_url="http://127.0.0.1:8080", code="AAAA-BBBB-CCCC", transport=server.transport())
    assert load_identity(cfg.identity_dir) is None
    # the same key may then enrol with the right code
    enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=server.transport())


@pytest.mark.parametrize("code", ["", "short", "7KQ4-9MZT-H2X!", "x" * 500])
def test_malformed_codes_are_refused_before_any_request(tmp_path, code):
    cfg = _cfg(tmp_path)
    calls = []
    t = httpx.MockTransport(lambda r: calls.append(r) or httpx.Response(500))
    with pytest.raises(EnrollError):
        enroll(cfg, server_url="http://127.0.0.1:8080", code=code, transport=t)
    assert calls == []


@pytest.mark.parametrize("reply", [
    httpx.Response(200, content=b"garbage"),
    httpx.Response(200, json={"device_id": "gate-fc-0007"}),
    httpx.Response(200, json={"x": "y" * 100}),
    httpx.Response(503, json={"error": "down"}),
])
def test_unusable_answers_write_nothing(tmp_path, reply):
    cfg = _cfg(tmp_path)
    with pytest.raises(EnrollError):
        enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=httpx.MockTransport(lambda r: reply))
    assert load_identity(cfg.identity_dir) is None


def test_answer_for_another_key_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    server = _server()

    def other(request: httpx.Request) -> httpx.Response:
        resp = server.handle(request)
        doc = json.loads(resp.content)
        doc["keyid"] = "00" * 8
        return httpx.Response(200, json=doc)

    with pytest.raises(EnrollError, match="bound key"):
        enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=httpx.MockTransport(other))


def test_event_log_of_another_device_is_refused_before_writing(tmp_path):
    cfg = _cfg(tmp_path)
    (tmp_path / "gate").mkdir()
    EventStore(tmp_path / "gate", "gate-other-01").close()
    with pytest.raises(EnrollError, match="gate-other-01"):
        enroll(cfg, server_url="http://127.0.0.1:8080", code=CODE, transport=_server().transport())
    assert load_identity(cfg.identity_dir) is None


def test_plain_http_to_a_remote_host_is_a_config_error(tmp_path):
    from sync.errors import ConfigError

    with pytest.raises(ConfigError):
        enroll(_cfg(tmp_path), server_url="http://10.1.2.3:8080", code=CODE, transport=_server().transport())
