"""Guard accounts, PIN hashes and the PIN gate of the console (console.md §3).

Rules, in the order a request meets them:

1. Accounts come from the ``console`` section of the bundle's settings part:
   ``{"accounts": [{"id", "name", "role", "pin"}]}``. An entry that does not
   parse is skipped with a warning (one typo must not lock every guard out);
   no section means no accounts, so no override, manual entry or set-up mode.
2. At most one PIN check per second per client address (``429``).
3. An account with 5 wrong PINs in a row is locked on this gate for 5 min
   (``423``); a right PIN resets the count. The clock is injectable (tests).
4. The PIN is checked with scrypt (``scrypt$<log2 N>$<r>$<p>$<salt hex>$<hash hex>``)
   in constant time; an unknown account costs the same scrypt as a known one.

Callers run ``PinGate.check`` in a worker thread, never on the decision loop.
Nothing here logs a PIN or a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edge.errors import EdgeError

__all__ = [
    "LOCK_AFTER",
    "LOCK_FOR_S",
    "Account",
    "Accounts",
    "PinCheck",
    "PinFormatError",
    "PinGate",
    "hash_pin",
    "parse_pin_hash",
    "valid_pin",
    "verify_pin",
]

log = logging.getLogger(__name__)

LOCK_AFTER = 5            # wrong PINs in a row
LOCK_FOR_S = 300.0        # console.md §3: 5 min
CHECK_EVERY_S = 1.0       # one check per second per client address
ACCOUNT_ID = re.compile(r"^[a-z0-9_-]{1,32}$")
PIN = re.compile(r"^[0-9]{6,12}$")
_HASH = re.compile(r"^scrypt\$(\d{1,2})\$(\d{1,2})\$(\d{1,2})\$([0-9a-f]{32})\$([0-9a-f]{64})$")
DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P = 14, 8, 1


class PinFormatError(EdgeError, ValueError):
    """A PIN or a PIN hash string is malformed."""


@dataclass(frozen=True)
class PinHash:
    log2_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def valid_pin(pin: str) -> bool:
    return isinstance(pin, str) and bool(PIN.match(pin))


def parse_pin_hash(text: str) -> PinHash:
    """Parse ``scrypt$14$8$1$<salt hex>$<hash hex>``; bounds keep a hostile bundle from costing minutes."""
    m = _HASH.match(text or "")
    if not m:
        raise PinFormatError("pin hash must be scrypt$<log2 N>$<r>$<p>$<32 hex salt>$<64 hex hash>")
    log2_n, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (10 <= log2_n <= 20 and 1 <= r <= 16 and 1 <= p <= 4):
        raise PinFormatError("scrypt parameters out of range (log2 N 10-20, r 1-16, p 1-4)")
    return PinHash(log2_n, r, p, bytes.fromhex(m[4]), bytes.fromhex(m[5]))


def _scrypt(pin: str, h: PinHash) -> bytes:
    n = 1 << h.log2_n
    return hashlib.scrypt(
        pin.encode("ascii"), salt=h.salt, n=n, r=h.r, p=h.p, dklen=32, maxmem=256 * n * h.r + (1 << 20)
    )


def hash_pin(pin: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = DEFAULT_R, p: int = DEFAULT_P,
             salt: bytes | None = None) -> str:
    """The settings string for a PIN of 6-12 digits (console.md §3)."""
    if not valid_pin(pin):
        raise PinFormatError("a PIN is 6 to 12 digits")
    salt = os.urandom(16) if salt is None else salt
    if len(salt) != 16:
        raise PinFormatError("salt must be 16 bytes")
    h = PinHash(log2_n, r, p, salt, b"")
    return f"scrypt${log2_n}${r}${p}${salt.hex()}${_scrypt(pin, h).hex()}"


def verify_pin(pin: str, pin_hash: PinHash) -> bool:
    """Constant-time comparison of the PIN's scrypt with the stored hash."""
    if not valid_pin(pin):
        return False
    return hmac.compare_digest(_scrypt(pin, pin_hash), pin_hash.digest)


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    role: Literal["guard", "admin"]
    pin: PinHash

    def public(self) -> dict[str, str]:
        """What the page may show: never the hash."""
        return {"id": self.id, "name": self.name, "role": self.role}


class Accounts:
    """The accounts of the bundle in force (``settings.console``)."""

    def __init__(self, accounts: Mapping[str, Account] | None = None) -> None:
        self._by_id = dict(accounts or {})

    @classmethod
    def from_settings(cls, console: Any) -> Accounts:
        """From the settings part's ``console`` object (or None)."""
        if console is None:
            return cls()
        raw = console.get("accounts") if isinstance(console, Mapping) else None
        if not isinstance(raw, list):
            log.warning("console settings: 'accounts' is not a list; no guard accounts")
            return cls()
        out: dict[str, Account] = {}
        for i, entry in enumerate(raw):
            try:
                if not isinstance(entry, Mapping):
                    raise PinFormatError("not an object")
                aid, name, role = entry.get("id"), entry.get("name"), entry.get("role")
                if not isinstance(aid, str) or not ACCOUNT_ID.match(aid):
                    raise PinFormatError("id must match [a-z0-9_-]{1,32}")
                if not isinstance(name, str) or not 1 <= len(name) <= 32:
                    raise PinFormatError("name must be 1-32 characters")
                if role not in ("guard", "admin"):
                    raise PinFormatError("role must be guard or admin")
                if aid in out:
                    raise PinFormatError("duplicate id")
                out[aid] = Account(aid, name, role, parse_pin_hash(str(entry.get("pin", ""))))
            except PinFormatError as exc:
                log.warning("console settings: account #%d skipped: %s", i, exc)
        return cls(out)

    def get(self, account_id: str) -> Account | None:
        return self._by_id.get(account_id)

    def public(self) -> list[dict[str, str]]:
        return [a.public() for a in sorted(self._by_id.values(), key=lambda a: a.id)]

    def __len__(self) -> int:
        return len(self._by_id)


@dataclass(frozen=True)
class PinCheck:
    """Outcome of one check: ``ok``, or why not (the console maps it to a status code)."""

    result: Literal["ok", "bad_pin", "locked", "rate_limited", "unknown_account", "no_accounts"]
    account: Account | None = None
    attempts_left: int | None = None
    retry_after_s: int | None = None


_DUMMY = PinHash(DEFAULT_LOG2_N, DEFAULT_R, DEFAULT_P, bytes(16), bytes(32))


class PinGate:
    """Rate limit per client, lockout per account, scrypt check (console.md §3).

    Args:
        clock: monotonic seconds; tests inject one to cross the 5-minute lock.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_check: dict[str, float] = {}
        self._wrong: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self) -> list[str]:
        """Account ids locked now (status bar)."""
        now = self._clock()
        with self._lock:
            return sorted(a for a, t in self._locked_until.items() if t > now)

    def check(self, accounts: Accounts, account_id: str, pin: str, client: str) -> PinCheck:
        """One PIN check; blocking (scrypt), so call it from a worker thread."""
        now = self._clock()
        with self._lock:
            last = self._last_check.get(client)
            if last is not None and now - last < CHECK_EVERY_S:
                return PinCheck("rate_limited", retry_after_s=1)
            self._last_check[client] = now
            if len(self._last_check) > 4096:        # bounded: forget the oldest clients
                for k in sorted(self._last_check, key=self._last_check.__getitem__)[:2048]:
                    del self._last_check[k]
            until = self._locked_until.get(account_id)
            if until is not None and until > now:
                return PinCheck("locked", retry_after_s=max(1, int(until - now + 0.999)))
            if until is not None:
                del self._locked_until[account_id]
                self._wrong.pop(account_id, None)
        if not len(accounts):
            return PinCheck("no_accounts")
        account = accounts.get(account_id)
        ok = verify_pin(pin, account.pin if account else _DUMMY)
        if account is None:
            return PinCheck("unknown_account")
        with self._lock:
            if ok:
                self._wrong.pop(account_id, None)
                return PinCheck("ok", account=account)
            n = self._wrong.get(account_id, 0) + 1
            self._wrong[account_id] = n
            if n >= LOCK_AFTER:
                self._locked_until[account_id] = self._clock() + LOCK_FOR_S
                log.warning("console account locked account=%s wrong_pins=%d for_s=%d", account_id, n,
                            int(LOCK_FOR_S))
            else:
                log.info("console wrong pin account=%s wrong_pins=%d", account_id, n)
            return PinCheck("bad_pin", account=account, attempts_left=max(0, LOCK_AFTER - n))
