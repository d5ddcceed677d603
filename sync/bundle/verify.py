"""The pure trust core of bundles.md §3: threshold (S), keys (K2–K5), current (T1–T5), manifest (M2–M10).

Bytes and the gate's state in, verified objects out; no I/O, no clock reads:
the caller takes ``now`` once per update (§3) and passes it with the clock
state. A rejection is a ``BundleRejected`` carrying the §3.7 reason; "nothing
new" is a return value, never an error (M6 no-op, K4 replay).

S, the threshold check for one role (§3.2), in order:

1. S1 two signatures with one keyid                  → ``duplicate_keyid``
2. S2 count distinct keyids of the role whose signature verifies; ≥ threshold passes
3. S3 otherwise the first that applies: a role key's signature failed →
   ``bad_signature``; a signer is a key of another role of the same document →
   ``wrong_role``; a signer the document does not list → ``unknown_keyid``;
   else ``below_threshold``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from sync.bundle.formats import (
    PART_CAPS,
    PARTS_TOTAL_CAP,
    TOL_MS,
    BundleRejected,
    CurrentStatement,
    KeysDoc,
    Manifest,
    PartRef,
    SignedDocument,
    load_signed,
    parse_current,
    parse_keys,
    parse_manifest,
)
from sync.keys import verify_ed25519
from sync.timefmt import format_ms

__all__ = [
    "InForce",
    "ManifestCheck",
    "check_anchor",
    "check_current",
    "check_keys_update",
    "check_manifest",
    "check_part_bytes",
    "check_part_listing",
    "check_threshold",
    "keys_expired",
    "root_signatures",
]

log = logging.getLogger(__name__)


def check_threshold(doc: SignedDocument, keys: KeysDoc, role: str) -> tuple[str, ...]:
    """S1–S3: the keyids of ``role`` in ``keys`` whose signatures over ``doc`` verify.

    Raises:
        BundleRejected: ``duplicate_keyid``, ``bad_signature``, ``wrong_role``, ``unknown_keyid``
            or ``below_threshold``.
    """
    ids = [s.keyid for s in doc.signatures]
    if len(ids) != len(set(ids)):  # S1
        dup = next(k for k in ids if ids.count(k) > 1)
        raise BundleRejected("duplicate_keyid", f"keyid {dup} signed twice", doc=doc.doc_type, sha256=doc.id)
    want = keys.roles[role]
    message = doc.message
    good: list[str] = []
    failed: list[str] = []
    for s in doc.signatures:  # S2
        if s.keyid in want.keyids:
            if verify_ed25519(keys.keys[s.keyid], message, s.sig):
                good.append(s.keyid)
            else:
                failed.append(s.keyid)
    if len(good) >= want.threshold:
        if failed:
            log.warning("bundle signature ignored doc=%s keyid=%s reason=bad_signature", doc.doc_type, failed[0])
        return tuple(good)

    def reject(reason: str, detail: str) -> BundleRejected:
        return BundleRejected(reason, detail, doc=doc.doc_type, sha256=doc.id)

    if failed:  # S3
        raise reject("bad_signature", f"signature by {role} key {failed[0]} does not verify")
    others = [k for k in ids if k not in want.keyids and k in keys.keys]
    if others:
        raise reject("wrong_role", f"signed by {keys.role_of(others[0])} key {others[0]}, needs {role} keys")
    unknown = [k for k in ids if k not in keys.keys]
    if unknown:
        raise reject("unknown_keyid", f"signed by key {unknown[0]}, not in keys version {keys.version}")
    raise reject("below_threshold", f"{len(good)} valid {role} signature(s), threshold {want.threshold}")


def keys_expired(keys: KeysDoc, now_ms: int) -> bool:
    return now_ms >= keys.expires_ms


def root_signatures(doc: SignedDocument, roots: KeysDoc) -> tuple[int, list[str]]:
    """(valid signatures by the root keys of ``roots``, keyids of root keys whose signature failed)."""
    role = roots.roles["root"]
    message = doc.message
    good, failed = 0, []
    for s in doc.signatures:
        if s.keyid in role.keyids:
            if verify_ed25519(roots.keys[s.keyid], message, s.sig):
                good += 1
            else:
                failed.append(s.keyid)
    return good, failed


def check_anchor(data: bytes) -> KeysDoc:
    """A first keys document (§2.2.1): D1–D5 and the threshold of its own root role.

    Raises:
        BundleRejected: any D or S reason.
    """
    keys = parse_keys(data)
    try:
        check_threshold(keys.doc, keys, "root")
    except BundleRejected as exc:
        exc.about("keys", version=keys.version)
        raise
    return keys


def check_keys_update(
    held: KeysDoc, data: bytes, *, fleet: str, now_ms: int, synced: bool
) -> KeysDoc | None:
    """K2–K5: keys document N + 1 offered to a gate holding ``held`` (version N).

    Returns:
        The new keys document, or None when it is the held document again (K4 no-op).

    Raises:
        BundleRejected: a D reason, ``scope_mismatch``, ``duplicate_keyid``, ``bad_signature``,
            ``rotation_old_threshold``, ``rotation_new_threshold``, ``rollback``,
            ``keys_version_not_next`` or ``issued_in_future``.
    """
    new = parse_keys(data)  # K2: D1–D5

    def reject(reason: str, detail: str) -> BundleRejected:
        return BundleRejected(reason, detail, doc="keys", sha256=new.id, version=new.version)

    if new.fleet != fleet:
        raise reject("scope_mismatch", f"fleet {new.fleet}, this gate is in {fleet}")
    ids = [s.keyid for s in new.doc.signatures]  # K3: S1, then both root thresholds
    if len(ids) != len(set(ids)):
        raise reject("duplicate_keyid", "a keyid signed twice")
    old_good, old_failed = root_signatures(new.doc, held)
    new_good, new_failed = root_signatures(new.doc, new)
    old_ok = old_good >= held.roles["root"].threshold
    new_ok = new_good >= new.roles["root"].threshold
    if not (old_ok and new_ok):
        if old_failed or new_failed:
            raise reject("bad_signature", f"signature by root key {(old_failed or new_failed)[0]} does not verify")
        if not old_ok:
            raise reject("rotation_old_threshold",
                         f"{old_good} valid signature(s) by root keys of version {held.version}, "
                         f"threshold {held.roles['root'].threshold}")
        raise reject("rotation_new_threshold",
                     f"{new_good} valid signature(s) by its own root keys, threshold {new.roles['root'].threshold}")
    if new.version <= held.version:  # K4
        if new.version == held.version and new.raw == held.raw:
            return None
        raise reject("rollback", f"keys version {new.version}, this gate holds {held.version}")
    if new.version > held.version + 1:
        raise reject("keys_version_not_next", f"keys version {new.version}, expected {held.version + 1}")
    if synced and new.issued_at_ms > now_ms + TOL_MS:  # K5
        raise reject("issued_in_future", f"issued_at {format_ms(new.issued_at_ms)} is ahead of now {format_ms(now_ms)}")
    return new


def check_current(
    data: bytes,
    *,
    keys: KeysDoc,
    fleet: str,
    site: str | None,
    device_id: str,
    nonce: str,
    floor_ms: int,
    now_ms: int,
    synced: bool,
) -> CurrentStatement:
    """T1–T5 for a current statement (§3.3).

    Raises:
        BundleRejected: a D or S reason, ``keys_expired``, ``scope_mismatch``, ``nonce_mismatch``,
            ``time_below_floor`` or ``issued_in_future``.
    """
    doc = load_signed(data, "current")
    try:
        cur = parse_current(doc)  # T1
        check_threshold(cur.doc, keys, "server")  # T2
    except BundleRejected as exc:
        exc.about("current", sha256=doc.id)
        raise

    def reject(reason: str, detail: str) -> BundleRejected:
        return BundleRejected(reason, detail, doc="current", sha256=doc.id, version=cur.version,
                              keys_version=cur.keys_version)

    if keys_expired(keys, now_ms):
        raise reject("keys_expired", f"keys version {keys.version} expired {format_ms(keys.expires_ms)}")
    if cur.fleet != fleet or cur.device_id != device_id or (cur.site is not None and cur.site != site):  # T3
        raise reject("scope_mismatch",
                     f"statement for {cur.fleet}/{cur.site}/{cur.device_id}, this gate is {fleet}/{site}/{device_id}")
    if cur.nonce != nonce:
        raise reject("nonce_mismatch", "the statement answers another request")
    if cur.server_time_ms < floor_ms - TOL_MS:  # T4
        raise reject("time_below_floor",
                     f"server_time {format_ms(cur.server_time_ms)} is below the clock floor {format_ms(floor_ms)}")
    if synced and cur.server_time_ms > now_ms + TOL_MS:  # T5
        raise reject("issued_in_future",
                     f"server_time {format_ms(cur.server_time_ms)} is ahead of now {format_ms(now_ms)}")
    return cur


@dataclass(frozen=True)
class InForce:
    """What M6/M7 need to know about the manifest in force.

    ``same_scope`` is true when the gate's site has not changed since it was applied
    (versions count per scope, §2.4); ``reapply`` allows the same id again (a corrupt bundle, §3.6).
    """

    keys_version: int
    version: int
    id: str
    same_scope: bool = True
    reapply: bool = False


@dataclass(frozen=True)
class ManifestCheck:
    manifest: Manifest
    noop: bool = False  # M6: the manifest in force again
    gap: bool = False  # M7: previous.version is above the version in force


def check_manifest(
    data: bytes,
    *,
    keys: KeysDoc,
    fleet: str,
    site: str | None,
    now_ms: int,
    synced: bool,
    expected_id: str | None = None,
    in_force: InForce | None = None,
) -> ManifestCheck:
    """M2–M9 for a manifest (§3.5). Parts are checked afterwards (M10, M11).

    Args:
        site: the gate's site (None: only fleet-wide manifests fit).
        expected_id: the id it was fetched by (M2), None for a manifest read from a file.
        in_force: the manifest in force, for M6/M7.

    Raises:
        BundleRejected: a D or S reason or ``manifest_hash_mismatch``, ``keys_expired``,
            ``keys_version_mismatch``, ``scope_mismatch``, ``version_reuse``, ``rollback``, ``fork``,
            ``validity_too_long``, ``expired``, ``issued_in_future``, ``part_missing``, ``part_too_large``.
    """
    try:
        doc = load_signed(data, "manifest")
    except BundleRejected as exc:
        if expected_id is not None:
            exc.sha256 = expected_id  # the id it was asked by: what the 1 h memory and the event name
        raise
    if expected_id is not None and doc.id != expected_id:  # M2
        raise BundleRejected("manifest_hash_mismatch", f"asked for {expected_id[:16]}…, got {doc.id[:16]}…",
                             doc="manifest", sha256=expected_id)
    try:
        m = parse_manifest(doc)
        check_threshold(m.doc, keys, "publisher")  # M3
    except BundleRejected as exc:
        exc.about("manifest", sha256=doc.id)
        raise

    def reject(reason: str, detail: str) -> BundleRejected:
        return BundleRejected(reason, detail, doc="manifest", sha256=m.id, version=m.version,
                              keys_version=m.keys_version)

    if keys_expired(keys, now_ms):
        raise reject("keys_expired", f"keys version {keys.version} expired {format_ms(keys.expires_ms)}")
    if m.keys_version != keys.version:  # M4
        raise reject("keys_version_mismatch", f"manifest under keys version {m.keys_version}, gate holds {keys.version}")
    if m.fleet != fleet or (m.site is not None and m.site != site):  # M5
        raise reject("scope_mismatch", f"manifest for {m.fleet}/{m.site}, this gate is {fleet}/{site}")
    gap = False
    if in_force is not None and in_force.keys_version == m.keys_version and in_force.same_scope:
        if m.version == in_force.version:  # M6
            if m.id == in_force.id:
                if not in_force.reapply:
                    return ManifestCheck(m, noop=True)
            else:
                raise reject("version_reuse", f"version {m.version} again with other content")
        elif m.version < in_force.version:
            raise reject("rollback", f"version {m.version}, this gate runs {in_force.version}")
        if m.id != in_force.id:  # M7
            prev = m.previous
            if prev is None:
                raise reject("fork", f"previous is null, this gate runs version {in_force.version}")
            if prev[0] < in_force.version or (prev[0] == in_force.version and prev[1] != in_force.id):
                raise reject("fork", f"previous is version {prev[0]} {prev[1][:16]}…, this gate runs "
                                     f"version {in_force.version} {in_force.id[:16]}…")
            gap = prev[0] > in_force.version
    validity_s = (m.expires_ms - m.server_time_ms) // 1000  # M8
    if m.expires_ms - m.server_time_ms > keys.max_manifest_validity_s * 1000:
        raise reject("validity_too_long", f"valid {validity_s} s after server_time, cap {keys.max_manifest_validity_s} s")
    if now_ms >= m.expires_ms:
        raise reject("expired", f"expired {format_ms(m.expires_ms)}, now {format_ms(now_ms)}")
    if synced and m.server_time_ms > now_ms + TOL_MS:
        raise reject("issued_in_future", f"server_time {format_ms(m.server_time_ms)} is ahead of now {format_ms(now_ms)}")
    try:
        check_part_listing(m)  # M9
    except BundleRejected as exc:
        exc.about("manifest", sha256=m.id, version=m.version, keys_version=m.keys_version)
        raise
    return ManifestCheck(m, gap=gap)


def check_part_listing(m: Manifest) -> list[PartRef]:
    """M9: every required part listed, each length and the sum within their caps.

    Returns the listed parts this software knows, in §1.6 order (unknown names are ignored).
    """
    missing = [n for n in PART_CAPS if n not in m.parts]
    if missing:
        raise BundleRejected("part_missing", f"part {missing[0]} is not listed", doc="manifest")
    for name in m.parts:
        if name not in PART_CAPS:
            log.info("bundle part ignored name=%s reason=unknown_part version=%d", name, m.version)
    known = [m.parts[n] for n in PART_CAPS]
    for p in known:
        if p.length > PART_CAPS[p.name]:
            raise BundleRejected("part_too_large", f"part {p.name} listed at {p.length} bytes, cap {PART_CAPS[p.name]}",
                                 doc="manifest")
    total = sum(p.length for p in known)
    if total > PARTS_TOTAL_CAP:
        raise BundleRejected("part_too_large", f"parts total {total} bytes, cap {PARTS_TOTAL_CAP}", doc="manifest")
    return known


def check_part_bytes(ref: PartRef, data: bytes) -> None:
    """M10: the served bytes have the listed length and SHA-256.

    ``data`` is what was read with a limit of length + 1, so a longer answer shows up as longer.
    """
    if len(data) != ref.length:
        raise BundleRejected("part_length_mismatch",
                             f"part {ref.name}: {len(data)}{'+' if len(data) > ref.length else ''} bytes, "
                             f"listed {ref.length}", doc="manifest")
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise BundleRejected("part_hash_mismatch", f"part {ref.name}: SHA-256 {digest[:16]}… differs from the listing",
                             doc="manifest")
