"""Errors of ``edge.policy``.

PolicyError (EdgeError)
├── RuleSetError (also ValueError)     a rule set or the policy settings fail a load-time check
│                                      (rules.md §2.1, §2.3): reject the whole bundle, keep the
│                                      previous one; the message names the rule id and the field
├── BundleDataError (also ValueError)  a bundle part handed to ``InMemoryBundle.from_parts`` is
│                                      malformed; the message names the part and the field
├── RuleTestError (also ValueError)    a rule test file or case is malformed (rules.md §5.1):
│                                      ``rules test`` exits 2 naming the file and the reason
└── NotJudged (also ValueError)        ``decide`` was handed a venue or material code: those are
                                       never judged (rules.md §3.1); the gate routes them itself

``CertLogicError`` and ``MissingDataError`` live in ``edge.policy.certlogic``, which
is stdlib-only so that the conformance runners can import it alone (rules.md §1.2).
"""

from __future__ import annotations

from edge.errors import EdgeError
from edge.policy.certlogic import CertLogicError, MissingDataError

__all__ = [
    "BundleDataError",
    "CertLogicError",
    "MissingDataError",
    "NotJudged",
    "PolicyError",
    "RuleSetError",
    "RuleTestError",
]


class PolicyError(EdgeError):
    """Base of every error raised on purpose by ``edge.policy``."""


class RuleSetError(PolicyError, ValueError):
    """The rule set or its settings failed a load-time check; nothing of it is used."""


class BundleDataError(PolicyError, ValueError):
    """A bundle part does not have the shape of bundles.md §1.6."""


class RuleTestError(PolicyError, ValueError):
    """A rule test file or case is malformed (rules.md §5.1)."""


class NotJudged(PolicyError, ValueError):
    """Venue and material codes make no decision (rules.md §3.1)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"a {kind} code is not judged by the policy")
        self.kind = kind
