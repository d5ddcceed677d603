"""``checkpoint admin``: tools for the people who run a fleet (keys, bundles, credentials, rules, PINs)."""

from __future__ import annotations

import click

from edge.cli.lazy import LazyGroup

ADMIN_COMMANDS: dict[str, tuple[str, str]] = {
    "keygen": ("sync.cli.keygen:keygen", "Make a key pair (root, publisher, server, issuer) as a key file."),
    "keys": ("sync.cli.bundle:keys", "Keys documents: new, sign, verify (root rotation)."),
    "bundle": ("sync.cli.bundle:bundle", "Signed rule bundles: build, sign, verify."),
    "mint": ("edge.credentials.cli:mint", "Issue a CK1 credential (health, pass, venue, material)."),
    "rules": ("edge.policy.cli:rules", "Rule sets: run rule tests, explain an evaluation."),
    "pin-hash": ("edge.console.cli:pin_hash", "Hash a guard PIN for the settings part."),
}


@click.group(cls=LazyGroup, lazy=ADMIN_COMMANDS)
def admin() -> None:
    """Admin tools: keys, bundles, credentials, rules, PINs."""
