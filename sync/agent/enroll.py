"""Enrolment with a one-time code, and the venue binding it sets (sync.md §2.2-2.3).

Steps of ``enroll`` (each safe to repeat after a crash):

1. ``device.key`` is made once (0600, key file of bundles.md §1.2, role ``device``)
   and reused: the server answers the same code with the same key again with the
   same answer (a lost response), so re-running is harmless.
2. ``POST /v1/enroll`` with the code, the public key, the software version and
   the proof (the key's signature over the ``checkpoint/enroll/v1`` text).
3. The answer is checked (its ``keyid`` must be ours; an ``events.db`` made for
   another device id is refused before anything is written), then
   ``identity.json`` is written (0640).
4. A gate that holds no keys document fetches ``/v1/keys/{keys_version}.json``
   as its anchor; the installer compares the printed root key ids with the
   fleet's published list (bundles.md §2.2).
5. The binding row of ``state.db`` is set, then the ``venue_bound`` event
   (``source: enrollment``) is appended and its seq stored in the row: state
   first, event second (§1.6), and a row without its event seq gets its event at
   the next start of the agent (``ensure_binding``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge import __version__
from edge.clock import TrustedClock
from edge.config import GateConfig, ensure_data_dir
from edge.errors import EdgeError, WrongDevice
from edge.store.events import EventStore
from edge.store.state import StateDB
from sync.client import BadProof, DeviceClient, InvalidCode
from sync.errors import Rejected, SyncError, Unreachable
from sync.identity import Identity, Venue, load_identity, write_identity
from sync.keys import KeyFile, generate_key, load_key_file, write_key_file
from sync.signing import enroll_text, normalise_code

__all__ = ["DEVICE_KEY_FILE", "EnrollError", "EnrollResult", "enroll", "ensure_binding", "load_device_key"]

log = logging.getLogger(__name__)

DEVICE_KEY_FILE = "device.key"


class EnrollError(SyncError):
    """Enrolment did not complete; the message says what to do."""


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    device_id: str
    site_id: str
    venue: Venue
    firm_id: str | None = None
    keyid: str = Field(pattern=r"^[0-9a-f]{16}$")
    server_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    pid_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    pid_kid: int = Field(1, ge=1)
    keys_version: int | None = Field(None, ge=1)
    server_time: str | None = None


@dataclass(frozen=True)
class EnrollResult:
    identity: Identity
    keyid: str
    already: bool
    venue_bound_seq: int | None
    anchor: str  # what happened to the keys anchor, one line for the installer


def load_device_key(identity_dir: Path, *, create: bool = False) -> KeyFile:
    """The device key (role ``device``); made once when ``create``.

    Raises:
        KeyFileError: unreadable or of another role.
    """
    path = Path(identity_dir) / DEVICE_KEY_FILE
    if create and not path.exists():
        Path(identity_dir).mkdir(parents=True, exist_ok=True, mode=0o750)
        write_key_file(path, generate_key("device", "device"))
        log.info("device key created keyid=%s", load_key_file(path, role="device").keyid)
    key = load_key_file(path, role="device")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)  # sync.md §2.2: the agent's alone
    return key


def venue_bound_payload(ident: Identity) -> dict[str, Any]:
    return {
        "venue": {"venue_id": ident.venue.venue_id, "zone": ident.venue.zone, "door": ident.venue.door},
        "firm_id": ident.firm_id,
        "source": "enrollment",
        "kid": None,
        "venue_name": None,
        "by": None,
    }


def ensure_binding(state: StateDB, store: EventStore, clock: TrustedClock, ident: Identity) -> int | None:
    """Set the binding from enrolment if there is none, and give it its ``venue_bound`` event.

    Returns the seq of the binding's event (None when the binding came from set-up
    mode without one: the gate process owns that case).
    """
    def initial(old: dict[str, Any] | None) -> dict[str, Any] | None:
        if old is not None:
            return None
        return {"venue_id": ident.venue.venue_id, "zone": ident.venue.zone, "door": ident.venue.door,
                "firm_id": ident.firm_id, "venue_name": None, "source": "enrollment", "kid": None,
                "bound_by": None, "event_seq": None}

    row = state.update_row("binding", initial)
    assert row is not None
    if row.get("event_seq") is not None:
        return int(row["event_seq"])
    if row.get("source") != "enrollment":
        return None
    payload = venue_bound_payload(ident)
    # A crash after the append but before the row update must not log the binding twice.
    for ev in store.recent(["venue_bound"], limit=1):
        body = ev.event()
        if body.get("payload") == payload:
            seq = ev.seq
            break
    else:
        seq = store.append("venue_bound", payload, clock.read().at()).seq
    state.update_row("binding", lambda old: {"event_seq": seq} if old and old.get("event_seq") is None else None)
    log.info("venue bound venue=%s zone=%s seq=%d", ident.venue.venue_id, ident.venue.zone, seq)
    return seq


def enroll(
    cfg: GateConfig,
    *,
    server_url: str,
    code: str,
    transport: httpx.BaseTransport | None = None,
    install_anchor: Callable[[bytes], str] | None = None,
) -> EnrollResult:
    """Enrol this gate (module docstring). Idempotent once ``identity.json`` exists.

    Raises:
        EnrollError: refused code, bad proof, unreachable server, a key id that does
            not match, or an event log of another device.
        ConfigError: a server URL that sync.md §2.6 forbids.
    """
    data_dir = ensure_data_dir(cfg.data_dir, create=True)
    ident_dir = cfg.identity_dir
    existing = load_identity(ident_dir)
    key = load_device_key(ident_dir, create=existing is None)
    if existing is not None:
        if existing.keyid != key.keyid:
            raise EnrollError(f"{ident_dir}: identity.json names key {existing.keyid} but device.key is {key.keyid}")
        seq = _bind(cfg, data_dir, existing)
        return EnrollResult(existing, key.keyid, True, seq, "unchanged")
    if not normalise_code(code).isalnum() or len(normalise_code(code)) != 12:
        raise EnrollError("an enrolment code has 12 letters and digits, e.g. 7KQ4-9MZT-H2XC")
    client = DeviceClient(server_url, device_id=None, device_key=None, transport=transport,
                          connect_timeout_s=cfg.sync.connect_timeout_s, request_timeout_s=cfg.sync.request_timeout_s,
                          ca_file=cfg.sync.ca_file, allow_plain_http=cfg.sync.allow_plain_http)
    with client:
        req = {"code": code, "public_key": key.public, "software": __version__,
               "proof": key.sign(enroll_text(code, key.public)).hex()}
        try:
            reply = client.post_json("/v1/enroll", req)
        except InvalidCode as exc:
            raise EnrollError("the server refused the code: unknown, already used, or expired "
                              "(ask the admin for a new one)") from exc
        except BadProof as exc:
            raise EnrollError(f"the server could not verify this gate's proof: {exc}") from exc
        except Unreachable as exc:
            raise EnrollError(f"server not reachable, nothing changed; try again: {exc}") from exc
        except Rejected as exc:
            raise EnrollError(f"enrolment refused: {exc}") from exc
        try:
            ans = _Answer.model_validate(reply.body)
        except ValidationError as exc:
            raise EnrollError(f"the server's enrolment answer is not usable: {str(exc).splitlines()[0]}") from exc
        if ans.keyid != key.keyid:
            raise EnrollError(f"the server bound key {ans.keyid}, but this gate's key is {key.keyid}")
        events = data_dir / "events.db"
        if events.exists():
            try:
                EventStore(data_dir, ans.device_id).close()
            except WrongDevice as exc:
                raise EnrollError(
                    f"{exc}. Set [gate] device_id = \"{ans.device_id}\" only on a fresh data directory, or move "
                    f"the old events.db aside after it was uploaded; then run enroll again with the same code"
                ) from exc
        ident = Identity(device_id=ans.device_id, server_url=client.base_url, server_key=ans.server_key,
                         keyid=key.keyid, pid_key=ans.pid_key, pid_kid=ans.pid_kid, site_id=ans.site_id,
                         venue=ans.venue, firm_id=ans.firm_id, keys_version=ans.keys_version)
        anchor = "kept (this gate already holds a keys document)"
        with StateDB(data_dir) as state:
            if state.read_row("keys") is None:
                install = install_anchor or _bundles_anchor(cfg, data_dir, state, ident)
                anchor = _fetch_anchor(client, ans.keys_version, install)
        write_identity(ident_dir, ident)
    seq = _bind(cfg, data_dir, ident)
    log.info("enrolled device=%s keyid=%s", ident.device_id, key.keyid)
    return EnrollResult(ident, key.keyid, False, seq, anchor)


def _bind(cfg: GateConfig, data_dir: Path, ident: Identity) -> int | None:
    with StateDB(data_dir) as state, EventStore(data_dir, ident.device_id, max_db_mb=cfg.store.max_db_mb) as store:
        clock = TrustedClock(state)
        return ensure_binding(state, store, clock, ident)


def _fetch_anchor(client: DeviceClient, keys_version: int | None, install: Callable[[bytes], str] | None) -> str:
    if keys_version is None:
        return "none: the server has no keys document yet (give one with 'checkpoint gate init --keys')"
    try:
        data = client.public_get(f"/v1/keys/{keys_version}.json", max_bytes=64 * 1024)
    except Unreachable as exc:
        return f"not fetched ({exc}); the gate needs one before it can accept bundles"
    if data is None:
        return f"not found: /v1/keys/{keys_version}.json"
    if install is None:
        return "fetched but not installed: this build has no bundle support"
    try:
        return install(data)
    except (SyncError, EdgeError, ValueError) as exc:
        raise EnrollError(f"the keys document from the server is not a valid anchor: {exc}") from exc


def _bundles_anchor(cfg: GateConfig, data_dir: Path, state: StateDB, ident: Identity) -> Callable[[bytes], str] | None:
    """bundles.md §2.2.1: install the fetched keys document as the gate's anchor (D1-D5, own root threshold)."""
    try:
        from edge.bundles.updater import BundleUpdater
    except ImportError:
        return None

    def install(data: bytes) -> str:
        with EventStore(data_dir, ident.device_id, max_db_mb=cfg.store.max_db_mb) as store:
            clock = TrustedClock(state)
            keys = BundleUpdater(data_dir, state=state, events=store, clock=clock, device_id=ident.device_id,
                                 site=ident.site_id).install_anchor(data)
        root = keys.roles["root"]
        return (f"keys version {keys.version} of fleet {keys.fleet}; root key ids {', '.join(root.keyids)} "
                f"(threshold {root.threshold}): compare them with the fleet's published list")

    return install
