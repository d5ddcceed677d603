"""Making signed documents: keys documents, manifests, current statements (bundles.md §1.3–1.5, §2, §6).

One implementation for the admin CLI (offline flow) and the server (server flow,
§2.4): the server numbers a manifest (the scope's current version + 1), signs it
with its publisher keys, and answers every poll with a current statement signed
by its server key. Every document is written as its canonical bytes with
signatures sorted by keyid (§1.1), and is re-parsed (D1–D5) before it leaves
this module, so nothing malformed is ever signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from sync.bundle.formats import (
    PART_NAMES,
    BundleRejected,
    DocType,
    KeysDoc,
    Manifest,
    PartRef,
    SignatureEntry,
    SignedDocument,
    envelope_bytes,
    load_signed,
    parse_current,
    parse_keys,
    parse_manifest,
    signing_message,
)
from sync.errors import FormatError, KeyFileError
from sync.keys import KeyFile
from sync.timefmt import format_ms

__all__ = [
    "DEFAULT_KEYS_VALIDITY_S",
    "DEFAULT_MANIFEST_VALIDITY_S",
    "DEFAULT_MAX_MANIFEST_VALIDITY_S",
    "add_signatures",
    "current_body",
    "keys_body",
    "manifest_body",
    "next_manifest_body",
    "part_refs",
    "sign_current",
    "sign_document",
    "sign_manifest",
    "unsigned_document",
]

DEFAULT_KEYS_VALIDITY_S = 365 * 86_400
DEFAULT_MANIFEST_VALIDITY_S = 7 * 86_400
DEFAULT_MAX_MANIFEST_VALIDITY_S = 1_209_600
_ROLE_OF_TYPE = {"keys": "root", "manifest": "publisher", "current": "server"}


def _parse(doc_type: DocType, data: bytes | SignedDocument) -> Any:
    if doc_type == "keys":
        return parse_keys(data)
    if doc_type == "manifest":
        return parse_manifest(data)
    return parse_current(data)


def unsigned_document(doc_type: DocType, signed: Mapping[str, Any]) -> bytes:
    """An envelope with no signatures yet (``keys new``, ``bundle build``), checked by D1–D5.

    Raises:
        BundleRejected: the body does not pass D1–D5.
    """
    data = envelope_bytes(dict(signed), [])
    _parse(doc_type, data)
    return data


def _sign_with(doc_type: DocType, signed: Mapping[str, Any], keys: Sequence[KeyFile]) -> list[SignatureEntry]:
    role = _ROLE_OF_TYPE[doc_type]
    message = signing_message(doc_type, signed)
    out = []
    for key in keys:
        if key.role != role:
            raise KeyFileError(f"key {key.keyid} ({key.label}) has role {key.role!r}; {doc_type} documents are "
                               f"signed by {role} keys")
        if key.alg != "ed25519":
            raise KeyFileError(f"key {key.keyid}: {doc_type} documents are signed with Ed25519 keys")
        out.append(SignatureEntry(key.keyid, key.sign(message).hex()))
    return out


def add_signatures(data: bytes, doc_type: DocType, keys: Sequence[KeyFile]) -> tuple[bytes, list[str]]:
    """Add one signature per key to a document (a key that already signed is re-signed, not doubled).

    Returns:
        The new canonical bytes and the keyids that signed now.

    Raises:
        BundleRejected: the document does not pass D1–D5.
        KeyFileError: a key of the wrong role (``keys sign`` needs root, ``bundle sign`` publisher).
    """
    doc = load_signed(data, doc_type)
    _parse(doc_type, doc)
    new = _sign_with(doc_type, doc.signed, keys)
    mine = {s.keyid for s in new}
    kept = [s for s in doc.signatures if s.keyid not in mine]
    out = envelope_bytes(doc.signed, [*kept, *new])
    _parse(doc_type, out)
    return out, [s.keyid for s in new]


def sign_document(doc_type: DocType, signed: Mapping[str, Any], keys: Sequence[KeyFile]) -> bytes:
    """A new envelope over ``signed`` with one signature per key (checked by D1–D5)."""
    out = envelope_bytes(dict(signed), _sign_with(doc_type, signed, keys))
    _parse(doc_type, out)
    return out


# -- keys documents ------------------------------------------------------------------------------


def _role(
    keys: Sequence[KeyFile], threshold: int | None, role: str, default_threshold: int
) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    if not keys:
        raise FormatError(f"the {role} role needs at least one key")
    entries: dict[str, dict[str, str]] = {}
    for k in keys:
        if k.role != role:
            raise KeyFileError(f"key {k.keyid} ({k.label}) has role {k.role!r}, given for the {role} role")
        if k.alg != "ed25519":
            raise KeyFileError(f"key {k.keyid}: {role} keys are Ed25519")
        if k.keyid in entries:
            raise FormatError(f"key {k.keyid} given twice for the {role} role")
        entries[k.keyid] = {"alg": "ed25519", "label": k.label, "public": k.public}
    t = default_threshold if threshold is None else threshold
    if not 1 <= t <= len(entries):
        raise FormatError(f"{role} threshold {t} must be between 1 and {len(entries)} (the number of keys)")
    if role == "server" and t != 1:
        raise FormatError("the server role has threshold 1")
    return entries, {"keyids": sorted(entries), "threshold": t}


def keys_body(
    *,
    previous: KeysDoc | None,
    fleet: str | None = None,
    root: Sequence[KeyFile] | None = None,
    root_threshold: int | None = None,
    publisher: Sequence[KeyFile] | None = None,
    publisher_threshold: int | None = None,
    server: Sequence[KeyFile] | None = None,
    issued_at_ms: int,
    expires_ms: int | None = None,
    clock_floor_reset_ms: int | None = None,
    max_manifest_validity_s: int | None = None,
) -> dict[str, Any]:
    """The ``signed`` body of keys document N + 1 (or 1 without ``previous``), §1.3 and §2.2.

    A role given no keys keeps the keys of ``previous`` (public halves only); a threshold
    not given keeps the previous one when it still fits, else root takes a majority and
    publisher 1. ``clock_floor_reset`` is never carried over: a reset is a one-time act (§5.6).

    Raises:
        FormatError, KeyFileError: inconsistent roles (a key in two roles, a threshold out of range).
    """
    if previous is None and (fleet is None or not root or not publisher or not server):
        raise FormatError("the first keys document needs a fleet and root, publisher and server keys")

    def keep(role: str) -> list[KeyFile]:
        assert previous is not None
        return [KeyFile("ed25519", role, previous.labels[k], previous.keys[k], k) for k in previous.roles[role].keyids]

    def default_t(role: str, n: int) -> int:
        if previous is not None and previous.roles[role].threshold <= n:
            return previous.roles[role].threshold
        return n // 2 + 1 if role == "root" else 1

    keys: dict[str, dict[str, str]] = {}
    roles: dict[str, dict[str, Any]] = {}
    for role, given, t in (("root", root, root_threshold), ("publisher", publisher, publisher_threshold),
                           ("server", server, None)):
        use = list(given) if given else keep(role)
        entries, spec = _role(use, t, role, default_t(role, len(use)))
        for k in entries:
            if k in keys:
                raise FormatError(f"key {k} is in more than one role (bundles.md §1.3)")
        keys.update(entries)
        roles[role] = spec
    expires = expires_ms if expires_ms is not None else issued_at_ms + DEFAULT_KEYS_VALIDITY_S * 1000
    max_validity = max_manifest_validity_s
    if max_validity is None:
        max_validity = previous.max_manifest_validity_s if previous else DEFAULT_MAX_MANIFEST_VALIDITY_S
    return {
        "type": "keys",
        "spec": 1,
        "fleet": previous.fleet if previous else fleet,
        "version": previous.version + 1 if previous else 1,
        "issued_at": format_ms(issued_at_ms),
        "expires": format_ms(expires),
        "keys": keys,
        "roles": roles,
        "max_manifest_validity_s": max_validity,
        "clock_floor_reset": None if clock_floor_reset_ms is None else format_ms(clock_floor_reset_ms),
    }


# -- manifests -----------------------------------------------------------------------------------


def part_refs(parts: Mapping[str, bytes]) -> dict[str, PartRef]:
    """The manifest listing (length, SHA-256) of part bytes."""
    return {n: PartRef(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in parts.items()}


def manifest_body(
    *,
    fleet: str,
    site: str | None,
    version: int,
    keys_version: int,
    parts: Mapping[str, bytes] | Mapping[str, PartRef],
    issued_at_ms: int,
    server_time_ms: int,
    expires_ms: int,
    previous: Manifest | tuple[int, str] | None,
    note: str = "",
) -> dict[str, Any]:
    """The ``signed`` body of a manifest (§1.4); ``parts`` as bytes or as listed references."""
    refs = {n: (p if isinstance(p, PartRef) else part_refs({n: p})[n]) for n, p in parts.items()}
    missing = [n for n in PART_NAMES if n not in refs]
    if missing:
        raise BundleRejected("part_missing", f"part {missing[0]} is missing", doc="manifest")
    prev = previous
    if isinstance(prev, Manifest):
        prev = (prev.version, prev.id)
    return {
        "type": "manifest",
        "spec": 1,
        "fleet": fleet,
        "site": site,
        "version": version,
        "keys_version": keys_version,
        "issued_at": format_ms(issued_at_ms),
        "server_time": format_ms(server_time_ms),
        "expires": format_ms(expires_ms),
        "previous": None if prev is None else {"version": prev[0], "sha256": prev[1]},
        "parts": {n: {"length": r.length, "sha256": r.sha256} for n, r in sorted(refs.items())},
        "note": note,
    }


def next_manifest_body(
    current: Manifest | None,
    *,
    fleet: str,
    site: str | None,
    keys_version: int,
    parts: Mapping[str, bytes] | Mapping[str, PartRef] | None = None,
    server_time_ms: int,
    validity_s: int = DEFAULT_MANIFEST_VALIDITY_S,
    issued_at_ms: int | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Server flow (§1.4, §2.4): number the scope's next manifest (current version + 1, 1 for the first).

    With ``parts`` None it is a re-signing: same parts, same ``issued_at`` and note, new
    ``server_time`` and ``expires``, ``previous`` = the one replaced.
    """
    if parts is None:
        if current is None:
            raise FormatError("re-signing needs a current manifest")
        parts = current.parts
        issued_at_ms = current.issued_at_ms if issued_at_ms is None else issued_at_ms
        note = current.note if note is None else note
    return manifest_body(
        fleet=fleet,
        site=site,
        version=(current.version + 1) if current is not None else 1,
        keys_version=keys_version,
        parts=parts,
        issued_at_ms=server_time_ms if issued_at_ms is None else issued_at_ms,
        server_time_ms=server_time_ms,
        expires_ms=server_time_ms + validity_s * 1000,
        previous=current,
        note=note or "",
    )


def sign_manifest(signed: Mapping[str, Any], keys: Sequence[KeyFile]) -> bytes:
    """A manifest signed by publisher keys (a threshold of them for gates to accept it)."""
    return sign_document("manifest", signed, keys)


# -- current statements --------------------------------------------------------------------------


def current_body(
    *,
    fleet: str,
    site: str | None,
    device_id: str,
    server_time_ms: int,
    nonce: str,
    manifest: Manifest,
) -> dict[str, Any]:
    """The ``signed`` body of a current statement (§1.5) naming ``manifest``."""
    return {
        "type": "current",
        "spec": 1,
        "fleet": fleet,
        "site": site,
        "device_id": device_id,
        "server_time": format_ms(server_time_ms),
        "nonce": nonce,
        "current": {"keys_version": manifest.keys_version, "version": manifest.version, "sha256": manifest.id},
    }


def sign_current(signed: Mapping[str, Any], server_key: KeyFile) -> bytes:
    """A current statement signed by the server key (≤ 4 KiB by construction)."""
    return sign_document("current", signed, [server_key])
