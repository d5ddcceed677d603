"""``checkpoint gate import DIR`` and the anchor of ``checkpoint gate init --keys FILE`` (bundles.md §2.2, §3.5).

Import is the offline path (air-gapped sites, USB): K over the directory's keys
documents, then M for the manifest with the highest (keys_version, version) for
the gate's scope. There is no current statement, so the clock state does not
change. Both commands take the update lock, so they can run beside the agent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from edge.cli.common import config_option, device_id_for, load_config_from
from edge.config import GateConfig, ensure_data_dir

__all__ = ["gate_site", "import_bundle", "install_anchor_file"]


def gate_site(cfg: GateConfig) -> str | None:
    """The enrolled site id, else ``[gate] site_id`` (None: fleet-wide bundles only)."""
    from sync.identity import load_identity

    ident = load_identity(cfg.identity_dir)
    return ident.site_id if ident else cfg.gate.site_id


def _open(cfg: GateConfig, data_dir: Path) -> tuple[Any, Any, Any, Any]:
    from edge.bundles import BundleUpdater
    from edge.clock import TrustedClock
    from edge.store.events import EventStore
    from edge.store.state import StateDB

    device_id = device_id_for(cfg)
    state = StateDB(data_dir)
    events = EventStore(data_dir, device_id, max_db_mb=cfg.store.max_db_mb)
    clock = TrustedClock(state)
    updater = BundleUpdater(data_dir, state=state, events=events, clock=clock, device_id=device_id,
                            site=gate_site(cfg))
    return state, events, clock, updater


def install_anchor_file(cfg: GateConfig, data_dir: Path, path: Path) -> None:
    """``gate init --keys FILE``: install the gate's first keys document and print its root key ids."""
    from sync.bundle import CAPS

    with path.open("rb") as f:
        data = f.read(CAPS["keys"] + 1)
    state, events, _, updater = _open(cfg, data_dir)
    try:
        keys = updater.install_anchor(data)
    finally:
        events.close()
        state.close()
    root = keys.roles["root"]
    click.echo(f"keys version {keys.version} of fleet {keys.fleet} in force")
    click.echo(f"root keys (threshold {root.threshold}): {', '.join(root.keyids)}")
    click.echo("compare these root key ids with the fleet's published list before you leave the gate "
               "(bundles.md §2.2)")


@click.command("import")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, exists=True, path_type=Path))
def import_bundle(config_path: str | None, as_json: bool, directory: Path) -> None:
    """Apply keys documents and a signed bundle from DIR (keys/<n>.json, manifests/<sha256>.json or
    manifest.json, parts/<sha256>). Exit 1 when the bundle is refused; the bundle in force stays."""
    cfg = load_config_from(config_path)
    data_dir = ensure_data_dir(cfg.data_dir)
    state, events, _, updater = _open(cfg, data_dir)
    try:
        updater.startup(wait_s=5)
        result = updater.import_dir(directory)
        status = updater.status()
    finally:
        events.close()
        state.close()
    doc = {
        "status": result.status,
        "version": result.version,
        "keys_version": result.keys_version,
        "keys_applied": list(result.keys_applied),
        "applied": result.applied,
        "reason": result.rejection.reason if result.rejection else None,
        "detail": result.rejection.detail if result.rejection else result.detail,
        "state": status["state"],
        "mode": status["mode"],
    }
    if as_json:
        click.echo(json.dumps(doc, ensure_ascii=False, sort_keys=True))
    else:
        for n in result.keys_applied:
            click.echo(f"keys version {n} applied / 已应用密钥版本 {n}")
        if result.status == "applied":
            click.echo(f"bundle version {result.applied} applied (mode {status['mode']}) / "
                       f"已应用规则版本 {result.applied}")
        elif result.status == "up_to_date":
            click.echo(f"bundle version {result.version} is already in force / 规则已是最新")
        elif result.status == "no_bundle":
            click.echo(f"no manifest for this gate's scope in {directory} / 目录中没有适用于本门岗的规则")
        elif result.status == "no_keys":
            click.echo(f"{result.detail} / 尚无密钥文件", err=True)
        else:
            click.echo(f"bundle refused: {doc['reason'] or result.status}: {doc['detail']} / 规则被拒绝；"
                       f"仍使用版本 {result.version}", err=True)
    if result.status not in ("applied", "up_to_date"):
        raise click.exceptions.Exit(1)
