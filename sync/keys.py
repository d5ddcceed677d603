"""Key ids, key files and signatures of every key of ours (bundles.md §1.2).

- Key id = first 8 bytes of SHA-256 over the public key's DER SubjectPublicKeyInfo,
  as 16 lowercase hex characters. For Ed25519 the SPKI DER is a fixed 12-byte
  prefix followed by the 32 raw key bytes.
- Public keys (Ed25519) and signatures are lowercase hex in every document of
  ours; the trust file of credentials.md is the one base64 exception and is not
  handled here.
- A key file is JSON: ``alg``, ``role``, ``label``, ``seed`` (hex; the Ed25519 seed
  or the P-256 private scalar), ``public`` (hex: 32 raw bytes for Ed25519, the
  130-hex uncompressed point for ES256) and ``keyid``. ``FILE.pub`` is the same
  without ``seed``. Private key files are written 0600, atomically.
- A signing text is lines joined by one LF, no trailing LF, the first line a
  domain tag; integers are decimal without leading zeros (sync.md §0).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from sync.errors import KeyFileError

__all__ = [
    "ED25519_SPKI_PREFIX",
    "ROLES",
    "KeyFile",
    "atomic_write",
    "ed25519_keyid",
    "generate_key",
    "keyid_of_spki",
    "load_key_file",
    "signing_text",
    "verify_ed25519",
    "write_key_file",
]

ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
ROLES = ("root", "publisher", "server", "issuer", "device")
Alg = Literal["ed25519", "es256"]


def keyid_of_spki(spki_der: bytes) -> str:
    """Key id of any public key given its DER SubjectPublicKeyInfo."""
    return hashlib.sha256(spki_der).digest()[:8].hex()


def ed25519_keyid(public: bytes | str) -> str:
    """Key id of a raw 32-byte Ed25519 public key (bytes or 64 hex)."""
    raw = bytes.fromhex(public) if isinstance(public, str) else public
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return keyid_of_spki(ED25519_SPKI_PREFIX + raw)


def signing_text(tag: str, *lines: str | int) -> bytes:
    """Join a domain tag and its lines with LF, no trailing LF (sync.md §0)."""
    parts = [tag]
    for line in lines:
        if isinstance(line, bool):
            raise TypeError("booleans are not signing-text lines")
        parts.append(str(line))
    for p in parts:
        if "\n" in p:
            raise ValueError("a signing-text line cannot contain LF")
    return "\n".join(parts).encode("utf-8")


def verify_ed25519(public_hex: str, message: bytes, sig_hex: str) -> bool:
    """True when ``sig_hex`` is a valid Ed25519 signature of ``message``; never raises on bad input."""
    try:
        pub = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex))
        sig = bytes.fromhex(sig_hex)
        if len(sig) != 64:
            return False
        pub.verify(sig, message)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


@dataclass(frozen=True)
class KeyFile:
    """One key of ours, as stored in a key file; ``seed`` is None for a ``.pub`` file."""

    alg: Alg
    role: str
    label: str
    public: str
    keyid: str
    seed: str | None = None

    @property
    def has_private(self) -> bool:
        return self.seed is not None

    def public_bytes(self) -> bytes:
        return bytes.fromhex(self.public)

    def spki_der(self) -> bytes:
        return self.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def public_key(self) -> ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey:
        raw = self.public_bytes()
        if self.alg == "ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(raw)
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)

    def private_key(self) -> ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey:
        if self.seed is None:
            raise KeyFileError(f"key {self.keyid} ({self.label}) has no private half")
        raw = bytes.fromhex(self.seed)
        if self.alg == "ed25519":
            return ed25519.Ed25519PrivateKey.from_private_bytes(raw)
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())

    def sign(self, message: bytes) -> bytes:
        """Sign ``message``: Ed25519 directly; ES256 over SHA-256, raw ``r‖s`` (64 bytes).

        ES256 uses RFC 6979 deterministic nonces so a signature is repeatable.
        """
        key = self.private_key()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        der = key.sign(message, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            pub = self.public_key()
            if isinstance(pub, ed25519.Ed25519PublicKey):
                pub.verify(signature, message)
            else:
                if len(signature) != 64:
                    return False
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                pub.verify(der, message, ec.ECDSA(hashes.SHA256()))
            return True
        except (ValueError, InvalidSignature):
            return False

    def to_json(self, *, private: bool = True) -> dict[str, str]:
        doc = {"alg": self.alg, "role": self.role, "label": self.label, "public": self.public, "keyid": self.keyid}
        if private and self.seed is not None:
            doc["seed"] = self.seed
        return doc

    def public_only(self) -> KeyFile:
        return KeyFile(self.alg, self.role, self.label, self.public, self.keyid, None)


def _from_private(alg: Alg, role: str, label: str, seed: bytes) -> KeyFile:
    if alg == "ed25519":
        priv = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        pub = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return KeyFile(alg, role, label, pub.hex(), ed25519_keyid(pub), seed.hex())
    priv_ec = ec.derive_private_key(int.from_bytes(seed, "big"), ec.SECP256R1())
    pub_ec = priv_ec.public_key()
    point = pub_ec.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    spki = pub_ec.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return KeyFile(alg, role, label, point.hex(), keyid_of_spki(spki), seed.hex())


def generate_key(role: str, label: str, alg: Alg = "ed25519", *, seed: bytes | None = None) -> KeyFile:
    """Make a new key pair (``seed`` only for deterministic test keys).

    Raises:
        KeyFileError: unknown role, ES256 for a role other than issuer, or a bad label.
    """
    if role not in ROLES:
        raise KeyFileError(f"unknown key role {role!r}; expected one of {', '.join(ROLES)}")
    if alg not in ("ed25519", "es256"):
        raise KeyFileError(f"unknown algorithm {alg!r}; expected ed25519 or es256")
    if alg == "es256" and role != "issuer":
        raise KeyFileError("es256 is allowed for issuer keys only (bundles.md §6)")
    if not 1 <= len(label) <= 64:
        raise KeyFileError("a key label has 1-64 characters")
    if seed is None:
        if alg == "ed25519":
            seed = os.urandom(32)
        else:
            priv = ec.generate_private_key(ec.SECP256R1())
            seed = priv.private_numbers().private_value.to_bytes(32, "big")
    return _from_private(alg, role, label, seed)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename, fsync dir.

    A power cut leaves the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_key_file(path: Path | str, key: KeyFile, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``FILE`` (0600, with the private half) and ``FILE.pub`` (0644).

    Raises:
        KeyFileError: the file exists and ``overwrite`` is false (never clobber a key by accident).
    """
    path = Path(path)
    pub_path = path.with_name(path.name + ".pub")
    if not overwrite and path.exists():
        raise KeyFileError(f"{path} exists; refusing to overwrite a key file")
    body = json.dumps(key.to_json(), indent=2, sort_keys=True) + "\n"
    atomic_write(path, body.encode(), mode=0o600)
    pub = json.dumps(key.to_json(private=False), indent=2, sort_keys=True) + "\n"
    atomic_write(pub_path, pub.encode(), mode=0o644)
    return path, pub_path


def load_key_file(
    path: Path | str, *, role: str | tuple[str, ...] | None = None, private: bool = True
) -> KeyFile:
    """Read and check a key file.

    Args:
        role: required role(s); a key of another role is refused (never sign with the wrong key).
        private: require the private half (``seed``).

    Raises:
        KeyFileError: unreadable, malformed, inconsistent (public or keyid not derived from the
            seed), of the wrong role, or without the private half when it is needed.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: no such key file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyFileError(f"{path}: not a key file: {exc}") from exc
    return key_from_json(doc, source=str(path), role=role, private=private)


def key_from_json(
    doc: object, *, source: str = "key", role: str | tuple[str, ...] | None = None, private: bool = True
) -> KeyFile:
    """Build a ``KeyFile`` from its parsed JSON, with the checks of ``load_key_file``."""
    if not isinstance(doc, dict):
        raise KeyFileError(f"{source}: a key file is a JSON object")
    try:
        alg, krole, label, public, keyid = (doc[k] for k in ("alg", "role", "label", "public", "keyid"))
    except KeyError as exc:
        raise KeyFileError(f"{source}: missing field {exc.args[0]!r}") from exc
    seed = doc.get("seed")
    if alg not in ("ed25519", "es256") or krole not in ROLES:
        raise KeyFileError(f"{source}: unknown alg {alg!r} or role {krole!r}")
    if not all(isinstance(x, str) for x in (label, public, keyid)) or (seed is not None and not isinstance(seed, str)):
        raise KeyFileError(f"{source}: fields must be strings")
    if role is not None:
        wanted = (role,) if isinstance(role, str) else role
        if krole not in wanted:
            raise KeyFileError(f"{source}: key {keyid} has role {krole!r}, this needs {' or '.join(wanted)}")
    if private and seed is None:
        raise KeyFileError(f"{source}: this is a public key file; the private key file is needed")
    try:
        if seed is not None:
            key = _from_private(alg, krole, label, bytes.fromhex(seed))
            if key.public != public.lower() or key.keyid != keyid.lower():
                raise KeyFileError(f"{source}: public key or keyid does not belong to the seed")
            return key
        key = KeyFile(alg, krole, label, public.lower(), keyid.lower(), None)
        if keyid_of_spki(key.spki_der()) != key.keyid:
            raise KeyFileError(f"{source}: keyid is not derived from the public key")
        return key
    except ValueError as exc:
        raise KeyFileError(f"{source}: bad key material: {exc}") from exc
