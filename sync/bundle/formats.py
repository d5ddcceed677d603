"""Signed documents of bundles.md §1: envelope, keys document, manifest, current statement.

Loading a signed document is step D of bundles.md §3.1, in this order, first
failure wins:

1. D1 size ≤ the document's cap (§1.7)                → ``too_large``
2. D2 strict parse (sync.md §1.3), envelope exactly ``signatures`` + ``signed``,
   each signature exactly ``keyid`` (16 hex) + ``sig`` (128 hex) → ``malformed``
3. D3 the bytes are the canonical form of the parsed value and the signatures
   are sorted by keyid                                  → ``not_canonical``
4. D4 ``type`` is the one the caller expects            → ``wrong_type``;
   ``spec`` = 1                                         → ``unsupported_spec``
5. D5 the body matches its table (§1.3–1.5): every field, no other, types, id
   and time formats, time order                         → ``malformed``;
   a keys-document key id not derived from its key      → ``keyid_mismatch``

The verifier builds the signing tag from the type it expects, never from the
document (§1.2). Bodies are checked with pydantic (strict: no bool for int, no
str for int) and returned as frozen dataclasses with times as epoch ms.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from sync.canonical import canonical, loads_strict
from sync.errors import CanonicalError, FormatError, SyncError
from sync.events import valid_device_id
from sync.keys import ed25519_keyid
from sync.timefmt import parse_ms

__all__ = [
    "CAPS",
    "KEYS_CHAIN_MAX",
    "MAX_RTT_S",
    "PARTS_TOTAL_CAP",
    "PART_CAPS",
    "PART_NAMES",
    "REASONS",
    "TOL_MS",
    "BundleRejected",
    "CurrentStatement",
    "DocType",
    "KeysDoc",
    "Manifest",
    "PartRef",
    "Role",
    "SignatureEntry",
    "SignedDocument",
    "document_id",
    "envelope_bytes",
    "load_signed",
    "parse_current",
    "parse_keys",
    "parse_manifest",
    "peek_signed",
    "signing_message",
    "validation_detail",
]

DocType = Literal["keys", "manifest", "current"]

# §1.7: caps are constants of the code, never settings.
CAPS: dict[str, int] = {"keys": 65_536, "manifest": 65_536, "current": 4_096}
PART_CAPS: dict[str, int] = {
    "rules": 1 << 20,
    "settings": 256 << 10,
    "trust": 1 << 20,
    "roster": 16 << 20,
    "firms": 4 << 20,
    "preregistrations": 8 << 20,
    "revocations": 8 << 20,
    "mode": 4 << 10,
}
PART_NAMES: tuple[str, ...] = tuple(PART_CAPS)
PARTS_TOTAL_CAP = 32 << 20
TOL_MS = 300_000  # §3: TOL = 300 s
MAX_RTT_S = 10.0  # §5.2: a confirmation anchor needs a round trip ≤ 10 s
KEYS_CHAIN_MAX = 32  # §2.2.4 / K8

# §3.7, the reason codes: the only values of ``bundle_rejected.reason``.
REASONS = frozenset(
    {
        "too_large", "malformed", "not_canonical", "wrong_type", "unsupported_spec", "keyid_mismatch",
        "duplicate_keyid", "bad_signature", "wrong_role", "unknown_keyid", "below_threshold",
        "rotation_old_threshold", "rotation_new_threshold", "rollback", "keys_version_not_next",
        "keys_expired", "scope_mismatch", "nonce_mismatch", "time_below_floor", "issued_in_future",
        "manifest_hash_mismatch", "keys_version_mismatch", "version_reuse", "fork", "validity_too_long",
        "expired", "part_missing", "part_too_large", "part_length_mismatch", "part_hash_mismatch",
        "part_invalid", "fetch_failed",
    }
)


class BundleRejected(SyncError, ValueError):
    """A keys document, manifest, current statement or part failed a check of bundles.md §3.

    Attributes:
        reason: a reason code of §3.7 (``REASONS``).
        detail: one line for people and for ``bundle_rejected.detail``; never personal data.
        doc: ``keys``, ``manifest`` or ``current`` (the ``detail`` prefix of the event).
        sha256, version, keys_version: what is known about the rejected document.
    """

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        doc: DocType | None = None,
        sha256: str | None = None,
        version: int | None = None,
        keys_version: int | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        self.reason = reason
        self.detail = " ".join(str(detail).split())
        self.doc = doc
        self.sha256 = sha256
        self.version = version
        self.keys_version = keys_version
        super().__init__(f"{reason}: {self.detail}")

    def about(
        self, doc: DocType, *, sha256: str | None = None, version: int | None = None, keys_version: int | None = None
    ) -> BundleRejected:
        """Fill in what the caller knows about the document (keeps values already set)."""
        self.doc = self.doc or doc
        self.sha256 = self.sha256 or sha256
        self.version = self.version if self.version is not None else version
        self.keys_version = self.keys_version if self.keys_version is not None else keys_version
        return self


def validation_detail(exc: ValidationError, prefix: str = "") -> str:
    """One line naming the first failing field of a pydantic error (``a.b[3].c: message``)."""
    err = exc.errors(include_url=False)[0]
    path = prefix
    for loc in err["loc"]:
        if isinstance(loc, int):
            path += f"[{loc}]"
        else:
            path += f".{loc}" if path else str(loc)
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return f"{path or 'value'}: {msg}"


# -- envelope (§1.2) -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureEntry:
    keyid: str
    sig: str


@dataclass(frozen=True)
class SignedDocument:
    """A signed document after D1–D4: raw bytes, the ``signed`` body, signatures and id."""

    doc_type: DocType
    raw: bytes
    signed: dict[str, Any]
    signatures: tuple[SignatureEntry, ...]
    id: str  # §1.2: SHA-256 hex of canonical(signed), no tag

    @property
    def message(self) -> bytes:
        return signing_message(self.doc_type, self.signed)


def signing_message(doc_type: str, signed: Any) -> bytes:
    """§1.2: ASCII tag ``checkpoint/<type>/v1``, one LF, the canonical bytes of ``signed``."""
    return f"checkpoint/{doc_type}/v1\n".encode("ascii") + canonical(signed)


def document_id(signed: Any) -> str:
    return hashlib.sha256(canonical(signed)).hexdigest()


def envelope_bytes(signed: Any, signatures: Sequence[dict[str, str] | SignatureEntry]) -> bytes:
    """The canonical file bytes of an envelope; signatures sorted by keyid (§1.1)."""
    sigs = [{"keyid": s.keyid, "sig": s.sig} if isinstance(s, SignatureEntry) else dict(s) for s in signatures]
    sigs.sort(key=lambda s: s["keyid"])
    return canonical({"signatures": sigs, "signed": signed})


_HEX16 = r"^[0-9a-f]{16}$"
_HEX64 = r"^[0-9a-f]{64}$"
_HEX128 = r"^[0-9a-f]{128}$"


def _is_hex(value: Any, n: int) -> bool:
    return isinstance(value, str) and len(value) == n and all(c in "0123456789abcdef" for c in value)


def load_signed(data: bytes, doc_type: DocType, *, cap: int | None = None) -> SignedDocument:
    """D1–D4 for a document of ``doc_type``.

    Raises:
        BundleRejected: ``too_large``, ``malformed``, ``not_canonical``, ``wrong_type`` or
            ``unsupported_spec``, with ``doc`` set.
    """
    limit = CAPS[doc_type] if cap is None else cap
    sha = hashlib.sha256(data).hexdigest()

    def reject(reason: str, detail: str) -> BundleRejected:
        return BundleRejected(reason, detail, doc=doc_type, sha256=sha)

    if len(data) > limit:  # D1
        raise reject("too_large", f"{len(data)} bytes, over the {limit}-byte cap")
    try:  # D2
        value = loads_strict(data)
    except CanonicalError as exc:
        raise reject("malformed", str(exc)) from exc
    if not isinstance(value, dict) or set(value) != {"signatures", "signed"}:
        raise reject("malformed", "envelope must have exactly 'signatures' and 'signed'")
    sigs_raw, signed = value["signatures"], value["signed"]
    if not isinstance(signed, dict):
        raise reject("malformed", "'signed' is not an object")
    if not isinstance(sigs_raw, list):
        raise reject("malformed", "'signatures' is not an array")
    sigs: list[SignatureEntry] = []
    for i, s in enumerate(sigs_raw):
        if not isinstance(s, dict) or set(s) != {"keyid", "sig"}:
            raise reject("malformed", f"signatures[{i}] must have exactly 'keyid' and 'sig'")
        if not _is_hex(s["keyid"], 16) or not _is_hex(s["sig"], 128):
            raise reject("malformed", f"signatures[{i}]: keyid is 16 and sig 128 lowercase hex")
        sigs.append(SignatureEntry(s["keyid"], s["sig"]))
    try:  # D3
        canon = canonical(value)
    except CanonicalError as exc:
        # Parsed fine but outside the profile (e.g. an object key with capitals): not canonical form.
        raise reject("not_canonical", str(exc)) from exc
    if canon != data:
        raise reject("not_canonical", "bytes differ from the canonical form")
    if [s.keyid for s in sigs] != sorted(s.keyid for s in sigs):
        raise reject("not_canonical", "signatures are not sorted by keyid")
    doc_id = hashlib.sha256(canonical(signed)).hexdigest()
    if signed.get("type") != doc_type:  # D4
        raise BundleRejected("wrong_type", f"type {str(signed.get('type'))[:40]!r}, expected {doc_type!r}",
                             doc=doc_type, sha256=doc_id)
    if signed.get("spec") != 1 or type(signed.get("spec")) is not int:
        raise BundleRejected("unsupported_spec", f"spec {str(signed.get('spec'))[:20]}, this gate reads spec 1",
                             doc=doc_type, sha256=doc_id)
    return SignedDocument(doc_type, bytes(data), signed, tuple(sigs), doc_id)


# -- D5 body models ------------------------------------------------------------------------------


def _time(v: str) -> str:
    parse_ms(v)  # raises TimeFormatError (a ValueError): pydantic reports it on the field
    return v


def _id(v: str) -> str:
    if not valid_device_id(v):
        raise ValueError("must match ^[a-z0-9][a-z0-9-]{2,62}$")
    return v


Time = Annotated[str, AfterValidator(_time)]
Ident = Annotated[str, AfterValidator(_id)]
Hex16 = Annotated[str, StringConstraints(pattern=_HEX16)]
Hex32 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
Hex64 = Annotated[str, StringConstraints(pattern=_HEX64)]
PosInt = Annotated[int, Field(ge=1)]
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class _KeyEntry(BaseModel):
    model_config = _STRICT
    alg: Literal["ed25519"]
    label: Annotated[str, StringConstraints(max_length=64)]
    public: Hex64


class _RoleEntry(BaseModel):
    model_config = _STRICT
    keyids: Annotated[list[Hex16], Field(min_length=1)]
    threshold: PosInt


class _Roles(BaseModel):
    model_config = _STRICT
    root: _RoleEntry
    publisher: _RoleEntry
    server: _RoleEntry


class _KeysBody(BaseModel):
    model_config = _STRICT
    type: Literal["keys"]
    spec: Literal[1]
    fleet: Ident
    version: PosInt
    issued_at: Time
    expires: Time
    keys: dict[Hex16, _KeyEntry]
    roles: _Roles
    max_manifest_validity_s: Annotated[int, Field(ge=3600)]
    clock_floor_reset: Time | None


class _PartEntry(BaseModel):
    model_config = _STRICT
    length: Annotated[int, Field(ge=0)]
    sha256: Hex64


class _Previous(BaseModel):
    model_config = _STRICT
    version: PosInt
    sha256: Hex64


class _ManifestBody(BaseModel):
    model_config = _STRICT
    type: Literal["manifest"]
    spec: Literal[1]
    fleet: Ident
    site: Ident | None
    version: PosInt
    keys_version: PosInt
    issued_at: Time
    server_time: Time
    expires: Time
    previous: _Previous | None
    parts: dict[Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")], _PartEntry]
    note: Annotated[str, StringConstraints(max_length=1000)]


class _CurrentRef(BaseModel):
    model_config = _STRICT
    keys_version: PosInt
    version: PosInt
    sha256: Hex64


class _CurrentBody(BaseModel):
    model_config = _STRICT
    type: Literal["current"]
    spec: Literal[1]
    fleet: Ident
    site: Ident | None
    device_id: Ident
    server_time: Time
    nonce: Hex32
    current: _CurrentRef


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class KeysDoc:
    """A keys document after D1–D5 (§1.3). ``keys`` maps keyid → Ed25519 public key hex."""

    doc: SignedDocument
    fleet: str
    version: int
    issued_at_ms: int
    expires_ms: int
    keys: dict[str, str]
    labels: dict[str, str]
    roles: dict[str, Role]
    max_manifest_validity_s: int
    clock_floor_reset_ms: int | None

    @property
    def id(self) -> str:
        return self.doc.id

    @property
    def raw(self) -> bytes:
        return self.doc.raw

    def role_of(self, keyid: str) -> str | None:
        for name, role in self.roles.items():
            if keyid in role.keyids:
                return name
        return None


@dataclass(frozen=True)
class PartRef:
    name: str
    length: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A manifest after D1–D5 (§1.4)."""

    doc: SignedDocument
    fleet: str
    site: str | None
    version: int
    keys_version: int
    issued_at_ms: int
    server_time_ms: int
    expires_ms: int
    previous: tuple[int, str] | None
    parts: dict[str, PartRef]
    note: str

    @property
    def id(self) -> str:
        return self.doc.id

    @property
    def raw(self) -> bytes:
        return self.doc.raw

    @property
    def issued_at(self) -> str:
        return str(self.doc.signed["issued_at"])


@dataclass(frozen=True)
class CurrentStatement:
    """A current statement after D1–D5 (§1.5)."""

    doc: SignedDocument
    fleet: str
    site: str | None
    device_id: str
    server_time_ms: int
    nonce: str
    keys_version: int
    version: int
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


def _body(model: type[BaseModel], doc: SignedDocument) -> BaseModel:
    try:
        return model.model_validate(doc.signed)
    except ValidationError as exc:
        raise BundleRejected("malformed", validation_detail(exc, "signed"), doc=doc.doc_type, sha256=doc.id) from exc


def _reject(doc: SignedDocument, reason: str, detail: str, version: int | None = None) -> BundleRejected:
    return BundleRejected(reason, detail, doc=doc.doc_type, sha256=doc.id, version=version)


def parse_keys(data: bytes | SignedDocument) -> KeysDoc:
    """D1–D5 for a keys document (§1.3).

    Raises:
        BundleRejected: any D reason, ``keyid_mismatch`` for a key id not derived from its key.
    """
    doc = data if isinstance(data, SignedDocument) else load_signed(data, "keys")
    body = _body(_KeysBody, doc)
    assert isinstance(body, _KeysBody)
    v = body.version
    issued, expires = parse_ms(body.issued_at), parse_ms(body.expires)
    if expires <= issued:
        raise _reject(doc, "malformed", "signed.expires must be after signed.issued_at", v)
    seen: dict[str, str] = {}
    roles: dict[str, Role] = {}
    for name in ("root", "publisher", "server"):
        r: _RoleEntry = getattr(body.roles, name)
        ids = list(r.keyids)
        if ids != sorted(set(ids)):
            raise _reject(doc, "malformed", f"signed.roles.{name}.keyids must be sorted and unique", v)
        for k in ids:
            if k not in body.keys:
                raise _reject(doc, "malformed", f"signed.roles.{name}: keyid {k} is not in signed.keys", v)
            if k in seen:
                raise _reject(doc, "malformed", f"keyid {k} is in roles {seen[k]} and {name}", v)
            seen[k] = name
        if r.threshold > len(ids):
            raise _reject(doc, "malformed", f"signed.roles.{name}.threshold {r.threshold} > {len(ids)} keys", v)
        if name == "server" and r.threshold != 1:
            raise _reject(doc, "malformed", "signed.roles.server.threshold must be 1", v)
        roles[name] = Role(tuple(ids), r.threshold)
    for keyid, entry in body.keys.items():
        if ed25519_keyid(entry.public) != keyid:
            raise _reject(doc, "keyid_mismatch", f"keyid {keyid} is not derived from its public key", v)
    reset = None if body.clock_floor_reset is None else parse_ms(body.clock_floor_reset)
    return KeysDoc(
        doc=doc,
        fleet=body.fleet,
        version=v,
        issued_at_ms=issued,
        expires_ms=expires,
        keys={k: e.public for k, e in body.keys.items()},
        labels={k: e.label for k, e in body.keys.items()},
        roles=roles,
        max_manifest_validity_s=body.max_manifest_validity_s,
        clock_floor_reset_ms=reset,
    )


def parse_manifest(data: bytes | SignedDocument) -> Manifest:
    """D1–D5 for a manifest (§1.4). Parts are not checked against §1.6 here (that is M9).

    Raises:
        BundleRejected: any D reason.
    """
    doc = data if isinstance(data, SignedDocument) else load_signed(data, "manifest")
    body = _body(_ManifestBody, doc)
    assert isinstance(body, _ManifestBody)
    v = body.version
    issued, server, expires = parse_ms(body.issued_at), parse_ms(body.server_time), parse_ms(body.expires)
    if not issued <= server < expires:
        raise _reject(doc, "malformed", "time order must be issued_at <= server_time < expires", v)
    prev = None
    if body.previous is not None:
        prev = (body.previous.version, body.previous.sha256)
        if prev[0] >= v:
            raise _reject(doc, "malformed", f"previous.version {prev[0]} is not below version {v}", v)
    return Manifest(
        doc=doc,
        fleet=body.fleet,
        site=body.site,
        version=v,
        keys_version=body.keys_version,
        issued_at_ms=issued,
        server_time_ms=server,
        expires_ms=expires,
        previous=prev,
        parts={n: PartRef(n, p.length, p.sha256) for n, p in body.parts.items()},
        note=body.note,
    )


def parse_current(data: bytes | SignedDocument) -> CurrentStatement:
    """D1–D5 for a current statement (§1.5).

    Raises:
        BundleRejected: any D reason.
    """
    doc = data if isinstance(data, SignedDocument) else load_signed(data, "current")
    body = _body(_CurrentBody, doc)
    assert isinstance(body, _CurrentBody)
    return CurrentStatement(
        doc=doc,
        fleet=body.fleet,
        site=body.site,
        device_id=body.device_id,
        server_time_ms=parse_ms(body.server_time),
        nonce=body.nonce,
        keys_version=body.current.keys_version,
        version=body.current.version,
        sha256=body.current.sha256,
    )


def peek_signed(data: bytes) -> dict[str, Any] | None:
    """The ``signed`` body of a document without any check, or None (hints and file names only)."""
    try:
        value = loads_strict(data)
    except (CanonicalError, FormatError):
        return None
    signed = value.get("signed") if isinstance(value, dict) else None
    return signed if isinstance(signed, dict) else None
