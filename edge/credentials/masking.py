"""Masking of names, id numbers and phone numbers (credentials.md §7.2, PIPL).

One definition for the whole project: issuers mask before minting, the gate masks DCC
names and anything else it shows, the server's exports mask again with these functions.
Masking twice is harmless: a masked name masks to itself (or, for a mixed-script name
whose CJK characters were all masked away, to a still more masked form).

| function | rule |
|---|---|
| ``mask_name`` with any CJK character | trim, drop spaces; 1 code point -> ``*``; 2 -> first + ``*``; n >= 3 -> first + ``*`` x (n-2) + last |
| ``mask_name`` otherwise | trim; split on spaces and ``<``; each word keeps its first letter, the rest ``*``; join with one space |
| ``mask_id`` | keep the last 4 characters, ``*`` for the rest, same length (4 or fewer: all ``*``) |
| ``mask_phone`` | keep the first 3 and the last 4 (7 or fewer digits: as ``mask_id``) |

``looks_masked`` answers the server's ``pii_unmasked`` question (sync.md §5.5): does a
name reveal no more characters than its masked form would?
"""

from __future__ import annotations

import re

__all__ = ["has_cjk", "looks_masked", "mask_id", "mask_name", "mask_phone"]

_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")
_WORD_SPLIT = re.compile(r"[\s<]+")


def has_cjk(text: str) -> bool:
    """True when ``text`` holds a CJK ideograph of the ranges of §7.2."""
    return _CJK.search(text) is not None


def mask_name(name: str) -> str:
    """Masked form of a person's name (§7.2); "" for an empty name."""
    s = name.strip()
    if has_cjk(s):
        s = "".join(s.split())
        n = len(s)
        if n <= 1:
            return "*" * n
        if n == 2:
            return s[0] + "*"
        return s[0] + "*" * (n - 2) + s[-1]
    words = [w for w in _WORD_SPLIT.split(s) if w]
    return " ".join(w[0] + "*" * (len(w) - 1) for w in words)


def mask_id(value: str) -> str:
    """An id number with all but its last 4 characters as ``*``, same length."""
    s = value.strip()
    if len(s) <= 4:
        return "*" * len(s)
    return "*" * (len(s) - 4) + s[-4:]


def mask_phone(value: str) -> str:
    """A phone number with its first 3 and last 4 characters kept: 13800000000 -> 138****0000."""
    s = value.strip()
    if len(s) <= 7:
        return mask_id(s)
    return s[:3] + "*" * (len(s) - 7) + s[-4:]


def _revealed(text: str) -> int:
    return sum(1 for c in text if c != "*" and not c.isspace() and c != "<")


def looks_masked(name: str | None) -> bool:
    """True when ``name`` is of a masked shape (sync.md §5.5 ``pii_unmasked``).

    That is: it is its own masked form, or it holds ``*`` and shows no more characters
    than a mask of either rule would, so names issuers masked a little differently
    (``张**``) or whose masked form has no CJK character left (``0*0``) pass, while a
    full name (``张三``, ``ZHAO SAN``) does not.
    """
    if name is None or name == "":
        return True
    if mask_name(name) == name:
        return True
    if "*" not in name:
        return False
    compact = "".join(name.split())
    n = len(compact)
    if _revealed(compact) <= (0 if n <= 1 else 1 if n == 2 else 2):
        return True  # the CJK rule: at most first and last
    return all(_revealed(w) <= 1 for w in _WORD_SPLIT.split(name.strip()) if w)  # the word rule
