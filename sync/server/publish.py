"""What the server numbers, signs and serves (bundles.md §1.3-1.6, §2.4, §6; sync.md §4.1).

Storage: keys documents by version, manifests by document id (one ``current``
per scope: a site id, or ``*`` for the fleet-wide chain), parts by SHA-256.
Signing, numbering and verification are ``sync.bundle``'s (one implementation
for the admin CLI, the server and the gate); this module only decides *what*
to sign and keeps the tables consistent, each publication in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, func, select, update

from sync.bundle import (
    ANY_SITE,
    PART_NAMES,
    BundleRejected,
    KeysDoc,
    Manifest,
    SourceError,
    build_parts,
    parse_keys,
    parse_manifest,
    peek_signed,
    read_bundle_tar,
    verify_bundle,
)
from sync.bundle.publish import current_body, next_manifest_body, sign_current, sign_manifest
from sync.bundle.verify import check_anchor, check_keys_update
from sync.server import tables as t
from sync.server.db import insert_ignore
from sync.server.errors import ApiError
from sync.timefmt import format_ms

__all__ = [
    "CurrentManifest",
    "publish_bundle_tar",
    "publish_mode",
    "publish_sources",
    "resign_due",
    "store_keys",
    "current_manifest_for",
    "current_statement",
    "keys_doc_bytes",
    "manifest_bytes",
    "manifest_known",
    "part_bytes",
]

log = logging.getLogger(__name__)

FLEET_SCOPE = "*"


@dataclass(frozen=True)
class CurrentManifest:
    sha256: str
    scope: str
    site_id: str | None
    keys_version: int
    version: int
    issued_ms: int
    server_ms: int
    expires_ms: int


def _scope_row(conn: Connection, scope: str) -> Any:
    m = t.manifests.c
    return conn.execute(select(m.sha256, m.scope, m.site_id, m.keys_version, m.version, m.issued_ms, m.server_ms,
                               m.expires_ms).where(m.scope == scope, m.current.is_(True))).first()


def current_manifest_for(conn: Connection, site_id: str | None) -> CurrentManifest | None:
    """The manifest current for a device of ``site_id``: its site's chain, else the fleet-wide one."""
    row = _scope_row(conn, site_id) if site_id else None
    if row is None:
        row = _scope_row(conn, FLEET_SCOPE)
    if row is None:
        return None
    return CurrentManifest(row.sha256, row.scope, row.site_id, int(row.keys_version), int(row.version),
                           int(row.issued_ms), int(row.server_ms), int(row.expires_ms))


def manifest_known(conn: Connection, sha256: str) -> bool:
    return conn.execute(select(t.manifests.c.sha256).where(t.manifests.c.sha256 == sha256)).first() is not None


def manifest_bytes(st: Any, sha256: str) -> bytes | None:
    with st.db.read() as conn:
        row = conn.execute(select(t.manifests.c.bytes).where(t.manifests.c.sha256 == sha256)).first()
    return bytes(row.bytes) if row is not None else None


def part_bytes(st: Any, sha256: str) -> bytes | None:
    with st.db.read() as conn:
        row = conn.execute(select(t.parts.c.bytes).where(t.parts.c.sha256 == sha256)).first()
    return bytes(row.bytes) if row is not None else None


def keys_doc_bytes(st: Any, version: int) -> bytes | None:
    with st.db.read() as conn:
        row = conn.execute(select(t.keys_docs.c.bytes).where(t.keys_docs.c.version == version)).first()
    return bytes(row.bytes) if row is not None else None


def latest_keys_version(conn: Connection) -> int | None:
    v = conn.execute(select(func.max(t.keys_docs.c.version))).scalar()
    return int(v) if v is not None else None


def manifest_mode(conn: Connection, sha256: str) -> str | None:
    """``normal``/``emergency`` of a stored manifest, read from its mode part (for the fleet view)."""
    row = conn.execute(select(t.manifests.c.bytes).where(t.manifests.c.sha256 == sha256)).first()
    if row is None:
        return None
    try:
        ref = json.loads(bytes(row.bytes))["signed"]["parts"]["mode"]["sha256"]
        part = conn.execute(select(t.parts.c.bytes).where(t.parts.c.sha256 == ref)).first()
        mode = json.loads(bytes(part.bytes))["mode"] if part is not None else None
    except (ValueError, KeyError, TypeError):
        return None
    return mode if mode in ("normal", "emergency") else None



# -- parsed documents, cached (they are immutable once stored) ------------------------------------------------

_cache_lock = threading.Lock()
_manifests: dict[str, Manifest] = {}
_keys: dict[tuple[int, str], KeysDoc] = {}


def _manifest(conn: Connection, sha256: str) -> Manifest:
    with _cache_lock:
        hit = _manifests.get(sha256)
    if hit is not None:
        return hit
    raw = conn.execute(select(t.manifests.c.bytes).where(t.manifests.c.sha256 == sha256)).scalar_one()
    m = parse_manifest(bytes(raw))
    with _cache_lock:
        if len(_manifests) > 256:
            _manifests.clear()
        _manifests[sha256] = m
    return m


def keys_doc(conn: Connection, version: int | None = None) -> KeysDoc | None:
    """A stored keys document (the latest without ``version``)."""
    k = t.keys_docs.c
    q = select(k.version, k.sha256, k.bytes)
    q = q.where(k.version == version) if version is not None else q.order_by(k.version.desc()).limit(1)
    row = conn.execute(q).first()
    if row is None:
        return None
    key = (int(row.version), row.sha256)
    with _cache_lock:
        hit = _keys.get(key)
    if hit is None:
        hit = parse_keys(bytes(row.bytes))
        with _cache_lock:
            _keys[key] = hit
    return hit


def _scope(site: str | None) -> str:
    return site or FLEET_SCOPE


def _rejected(exc: BundleRejected, status: int = 422) -> ApiError:
    return ApiError(status, exc.reason, exc.detail)


# -- keys documents (bundles.md §2.2, §6 POST /v1/admin/keys) ---------------------------------------------------

def store_keys(st: Any, data: bytes) -> tuple[int, dict[str, Any]]:
    """Check a keys document against the latest stored one (K2-K5; the first one as an anchor) and serve it.

    Returns ``(status, body)``: 201 stored, 200 the same document again.
    """
    now = st.now_ms()
    with st.db.write() as conn:
        held = keys_doc(conn)
        try:
            if held is None:
                new = check_anchor(data)
            else:
                checked = check_keys_update(held, data, fleet=held.fleet, now_ms=now, synced=True)
                if checked is None:
                    return 200, {"version": held.version, "sha256": held.id, "stored": False}
                new = checked
        except BundleRejected as exc:
            raise _rejected(exc) from exc
        conn.execute(t.keys_docs.insert().values(version=new.version, sha256=new.id, bytes=new.raw, stored_ms=now))
    warnings = []
    if st.server_key.keyid not in new.roles["server"].keyids:
        warnings.append(f"this server's key {st.server_key.keyid} is not in the server role: gates will reject "
                        "its current statements until the server runs with a listed key")
    mine = {k.keyid for k in st.publisher_keys}
    if mine and len(mine & set(new.roles["publisher"].keyids)) < new.roles["publisher"].threshold:
        warnings.append("this server's publisher keys do not reach the publisher threshold: offline flow only")
    for w in warnings:
        log.warning("keys version %d: %s", new.version, w)
    log.info("keys document stored version=%d sha256=%s", new.version, new.id)
    return 201, {"version": new.version, "sha256": new.id, "stored": True, "warnings": warnings}


# -- storing a verified manifest --------------------------------------------------------------------------------

def _check_scope(conn: Connection, site: str | None) -> None:
    """A fleet uses one fleet-wide chain or per-site chains, never both (bundles.md §1.4)."""
    m = t.manifests.c
    if site is not None:
        if conn.execute(select(t.sites.c.site_id).where(t.sites.c.site_id == site)).first() is None:
            raise ApiError(422, "scope_mismatch", f"site {site} does not exist on this server")
        other = conn.execute(select(m.sha256).where(m.scope == FLEET_SCOPE).limit(1)).first()
    else:
        other = conn.execute(select(m.sha256).where(m.scope != FLEET_SCOPE).limit(1)).first()
    if other is not None:
        raise ApiError(409, "scope_conflict", "this fleet already uses " + (
            "a fleet-wide chain" if site is not None else "per-site chains") +
            "; a fleet uses one or the other, never both (bundles.md §1.4)")


def _store(conn: Connection, m: Manifest, parts: Mapping[str, bytes], now: int, by: str | None) -> None:
    for name, data in parts.items():
        ref = m.parts[name]
        conn.execute(insert_ignore(conn, t.parts).values(sha256=ref.sha256, length=ref.length, bytes=data))
    scope = _scope(m.site)
    mc = t.manifests.c
    conn.execute(update(t.manifests).where(mc.scope == scope, mc.current.is_(True)).values(current=False))
    conn.execute(t.manifests.insert().values(
        sha256=m.id, site_id=m.site, scope=scope, keys_version=m.keys_version, version=m.version, bytes=m.raw,
        issued_ms=m.issued_at_ms, server_ms=m.server_time_ms, expires_ms=m.expires_ms, published_by=by,
        current=True))
    log.info("manifest published scope=%s version=%d keys_version=%d id=%s by=%s", scope, m.version,
             m.keys_version, m.id, by)


def _current(conn: Connection, scope: str) -> Manifest | None:
    row = _scope_row(conn, scope)
    return _manifest(conn, row.sha256) if row is not None else None


def _current_parts(conn: Connection, m: Manifest) -> dict[str, bytes]:
    out = {}
    for name in PART_NAMES:
        ref = m.parts[name]
        out[name] = bytes(conn.execute(select(t.parts.c.bytes).where(t.parts.c.sha256 == ref.sha256)).scalar_one())
    return out


# -- offline flow: a signed bundle uploaded (POST /v1/admin/bundles) ----------------------------------------------

def publish_bundle_tar(st: Any, data: bytes, by: str | None) -> dict[str, Any]:
    """Verify a signed bundle as a gate would (D, S, M4-M11), store it and make it current for its scope.

    Raises:
        ApiError: 422 ``{error: reason, detail}``; 409 rollback / version_reuse with ``current_version``.
    """
    try:
        manifest, parts = read_bundle_tar(data)
    except BundleRejected as exc:
        raise _rejected(exc) from exc
    peek = peek_signed(manifest) or {}
    kv = peek.get("keys_version")
    now = st.now_ms()
    with st.db.write() as conn:
        keys = keys_doc(conn, kv) if type(kv) is int else None
        if keys is None:
            raise ApiError(422, "keys_version_mismatch",
                           f"no keys document version {kv} on this server: upload it first (POST /v1/admin/keys)")
        site = peek.get("site") if isinstance(peek.get("site"), str) else None
        _check_scope(conn, site)
        current = _current(conn, _scope(site))

        def read_part(sha256: str, max_bytes: int) -> bytes:
            if sha256 not in parts:
                raise FileNotFoundError(sha256)
            return parts[sha256][:max_bytes]

        previous = current if current is not None and current.keys_version == keys.version else None
        report = verify_bundle(manifest, read_part, keys=keys, now_ms=now, site=ANY_SITE, previous=previous)
        if not report.ok or report.manifest is None:
            status = 409 if report.reason in ("rollback", "version_reuse", "fork") else 422
            if status == 409 and current is not None:
                raise ApiError(status, report.reason or "malformed", report.detail, current_version=current.version)
            raise ApiError(status, report.reason or "malformed", report.detail)
        _store(conn, report.manifest, report.part_bytes, now, by)
    return {"id": report.manifest.id, "version": report.manifest.version, "server_time": format_ms(now)}


# -- server flow: sources and the mode switch -----------------------------------------------------------------------

def _signing_keys(st: Any, keys: KeysDoc) -> list[Any]:
    role = keys.roles["publisher"]
    mine = [k for k in st.publisher_keys if k.keyid in role.keyids]
    if len(mine) < role.threshold:
        raise ApiError(409, "offline_flow", "this server does not hold a threshold of the publisher keys of keys "
                       f"version {keys.version}: publish signed bundles (POST /v1/admin/bundles)")
    return mine


def _validity_s(parts: Mapping[str, bytes], keys: KeysDoc) -> int:
    try:
        fresh = json.loads(parts["settings"])["freshness"]["expires_after_s"]
    except (KeyError, ValueError, TypeError):
        fresh = 604_800
    return int(min(fresh, keys.max_manifest_validity_s))


def _sign_and_store(conn: Connection, st: Any, site: str | None, parts: Mapping[str, bytes], *, note: str | None,
                    by: str | None, now: int, resign: bool = False) -> Manifest:
    keys = keys_doc(conn)
    if keys is None:
        raise ApiError(409, "no_keys", "no keys document on this server yet (POST /v1/admin/keys)")
    signers = _signing_keys(st, keys)
    current = _current(conn, _scope(site))
    chain = current if current is not None and current.keys_version == keys.version else None
    body = next_manifest_body(chain, fleet=keys.fleet, site=site, keys_version=keys.version,
                              parts=None if resign else parts, server_time_ms=now,
                              validity_s=_validity_s(parts, keys), note=note)
    data = sign_manifest(body, signers)
    # bundles.md §6: the server runs bundle verify on everything before serving it.
    by_sha = {_sha(v): v for v in parts.values()}
    report = verify_bundle(data, lambda sha, n: by_sha[sha][:n], keys=keys, now_ms=now, site=ANY_SITE,
                           previous=chain)
    if not report.ok or report.manifest is None:
        raise ApiError(422, report.reason or "malformed", report.detail)
    _store(conn, report.manifest, report.part_bytes, now, by)
    return report.manifest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish_sources(st: Any, files: Mapping[str, bytes], *, site: str | None, note: str, by: str | None) -> dict[str, Any]:
    """``POST /v1/admin/sources``: build the parts (those not given stay as current), number, sign, publish."""
    if not st.can_publish:
        raise ApiError(409, "offline_flow", "this server holds no publisher key: publish signed bundles")
    now = st.now_ms()
    with st.db.write() as conn:
        _check_scope(conn, site)
        current = _current(conn, _scope(site))
        base = _current_parts(conn, current) if current is not None else None
        try:
            parts = build_parts(files, base=base)
        except SourceError as exc:
            raise ApiError(422, "invalid_source", str(exc)) from exc
        except BundleRejected as exc:
            raise _rejected(exc) from exc
        m = _sign_and_store(conn, st, site, parts, note=note, by=by, now=now)
    return {"id": m.id, "version": m.version, "server_time": format_ms(now)}


def publish_mode(st: Any, *, site: str | None, mode: str, reason: str, by: str) -> dict[str, Any]:
    """The one-key switch (bundles.md §4.3): a new mode part and a new signed manifest, current at once.

    With ``site`` None and per-site chains, every site's chain gets the switch.
    """
    if not st.can_publish:
        raise ApiError(409, "offline_flow", "this server holds no publisher key: publish signed bundles")
    now = st.now_ms()
    part = json.dumps({"part": "mode", "schema": 1, "mode": mode, "since": format_ms(now), "reason": reason,
                       "set_by": by[:64]}, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()
    published = []
    with st.db.write() as conn:
        mc = t.manifests.c
        if site is None and _scope_row(conn, FLEET_SCOPE) is None:
            scopes = [r.scope for r in conn.execute(select(mc.scope).where(mc.current.is_(True)).order_by(mc.scope))]
        else:
            scopes = [_scope(site)]
            if site is not None and _scope_row(conn, site) is None and _scope_row(conn, FLEET_SCOPE) is not None:
                raise ApiError(409, "scope_conflict", "this fleet uses one fleet-wide chain: switch it with site null")
        for scope in scopes:
            current = _current(conn, scope)
            if current is None:
                raise ApiError(409, "no_bundle", "nothing published for this scope yet: publish sources first")
            parts = _current_parts(conn, current)
            parts["mode"] = part
            note = f"mode {mode}: {reason}"[:1000]
            m = _sign_and_store(conn, st, current.site, parts, note=note, by=by, now=now)
            published.append({"site": m.site, "id": m.id, "version": m.version})
        if not published:
            raise ApiError(409, "no_bundle", "nothing published yet: publish sources first")
    log.warning("mode switched to %s scopes=%s by=%s", mode, [p["site"] for p in published], by)
    return {**{k: published[0][k] for k in ("id", "version")}, "server_time": format_ms(now), "published": published}


def resign_due(st: Any) -> list[str]:
    """Re-sign each current manifest older than its ``freshness.resign_after_s`` (bundles.md §1.4)."""
    if not st.can_publish:
        return []
    now = st.now_ms()
    done = []
    with st.db.write() as conn:
        keys = keys_doc(conn)
        if keys is None:
            return []
        mc = t.manifests.c
        for row in conn.execute(select(mc.scope, mc.sha256, mc.server_ms, mc.keys_version)
                                .where(mc.current.is_(True))).all():
            if row.keys_version != keys.version:
                continue  # a new keys version needs a new chain from an admin (bundles.md §2.3 step 4)
            current = _manifest(conn, row.sha256)
            settings = conn.execute(select(t.parts.c.bytes).where(
                t.parts.c.sha256 == current.parts["settings"].sha256)).scalar_one()
            try:
                resign_s = json.loads(bytes(settings))["freshness"]["resign_after_s"]
            except (KeyError, ValueError, TypeError):
                resign_s = 86_400
            if now - row.server_ms < resign_s * 1000:
                continue  # checked every minute: only the small settings part is read until one is due
            parts = _current_parts(conn, current)
            try:
                m = _sign_and_store(conn, st, current.site, parts, note=None, by="server", now=now, resign=True)
            except ApiError as exc:
                log.warning("re-signing scope=%s skipped: %s", row.scope, exc.detail)
                continue
            done.append(m.id)
    return done


# -- polls (bundles.md §1.5, §3.3) -----------------------------------------------------------------------------------

def current_statement(st: Any, device: Any, nonce: str) -> bytes | None:
    """A current statement for the asking device, answering its nonce; None = nothing published (404)."""
    with st.db.read() as conn:
        cur = current_manifest_for(conn, device.site_id)
        if cur is None:
            return None
        m = _manifest(conn, cur.sha256)
    body = current_body(fleet=m.fleet, site=device.site_id, device_id=device.device_id,
                        server_time_ms=st.now_ms(), nonce=nonce, manifest=m)
    return sign_current(body, st.server_key)


def publisher_ready(st: Any) -> bool:
    with st.db.read() as conn:
        keys = keys_doc(conn)
    if keys is None or not st.publisher_keys:
        return False
    try:
        _signing_keys(st, keys)
    except ApiError:
        return False
    return True

