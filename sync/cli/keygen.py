"""``checkpoint admin keygen``: make a key file (bundles.md §6, credentials.md §4.2)."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from sync.keys import generate_key, write_key_file


@click.command()
@click.option("--role", type=click.Choice(["root", "publisher", "server", "issuer"]), default="issuer",
              show_default=True, help="What the key will sign.")
@click.option("--alg", type=click.Choice(["ed25519", "es256"]), default="ed25519", show_default=True,
              help="es256 only for issuer keys.")
@click.option("--label", required=True, help="A name for the key (1-64 characters), shown in keys documents.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Private key file to write (0600); FILE.pub is written beside it.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(role: str, alg: str, label: str, out: Path, force: bool) -> None:
    """Make a new key pair and write it as a key file; print its key id."""
    if alg == "es256" and role != "issuer":
        raise click.UsageError("--alg es256 is allowed for --role issuer only")
    key = generate_key(role, label, alg)  # type: ignore[arg-type]
    path, pub = write_key_file(out, key, overwrite=force)
    click.echo(f"keyid {key.keyid}  role {role}  alg {alg}")
    click.echo(f"wrote {path} (private, 0600) and {pub}")
    if role == "issuer":
        click.echo(f"kid (base64, for the trust file): {base64.b64encode(bytes.fromhex(key.keyid)).decode()}")
        click.echo(f"public key (SPKI, base64): {base64.b64encode(key.spki_der()).decode()}")
