"""``checkpoint admin pin-hash``: turn a guard's PIN into the string the settings part holds (console.md §3)."""

from __future__ import annotations

import click

from edge.console.accounts import PinFormatError, hash_pin, valid_pin

__all__ = ["pin_hash"]


@click.command("pin-hash")
def pin_hash() -> None:
    """Ask for a PIN twice (6-12 digits) and print scrypt$14$8$1$<salt>$<hash>.

    Put the line into the settings part's console.accounts[].pin. The PIN itself
    is never printed or logged.
    """
    pin = click.prompt("PIN (6-12 digits)", hide_input=True, confirmation_prompt="PIN again", err=True)
    if not valid_pin(pin):
        raise click.UsageError("a PIN is 6 to 12 digits")
    try:
        click.echo(hash_pin(pin))
    except PinFormatError as exc:      # pragma: no cover - valid_pin checked above
        raise click.UsageError(str(exc)) from exc
