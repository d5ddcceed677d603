"""``checkpoint gate``: create, run and inspect this gate's state."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from edge.cli.common import config_option, device_id_for, echo_json, load_config_from
from edge.cli.lazy import LazyGroup
from edge.config import ensure_data_dir

log = logging.getLogger("edge.gate")

GATE_COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("edge.cli.run:run", "Run the gate process (camera, decisions, relay, console)."),
    "safe-state": ("edge.cli.run:safe_state", "Drive the relay, lights and buzzer to their safe state."),
    "import": ("edge.cli.bundles:import_bundle", "Apply keys and a bundle from a directory (USB, air gap)."),
}


@click.group(cls=LazyGroup, lazy=GATE_COMMANDS)
def gate() -> None:
    """Run and look after this gate."""


@gate.command()
@config_option
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The fleet's keys document to trust first (bundles.md §2.2); prints its root key ids.")
def init(config_path: str | None, keys_file: Path | None) -> None:
    """Create the data directory, the event log and the clock row (idempotent)."""
    from edge.clock import TrustedClock
    from edge.store.events import EventStore
    from edge.store.state import StateDB

    cfg = load_config_from(config_path)
    data_dir = ensure_data_dir(cfg.data_dir, create=True)
    device_id = device_id_for(cfg)
    with EventStore(data_dir, device_id, max_db_mb=cfg.store.max_db_mb) as store, StateDB(data_dir) as state:
        TrustedClock(state)
        head = store.head()
    click.echo(f"gate {device_id}: data directory {data_dir} ready, event log at seq {head.last_seq}")
    if keys_file is not None:
        from edge.cli.bundles import install_anchor_file

        install_anchor_file(cfg, data_dir, keys_file)


@gate.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def status(config_path: str | None, as_json: bool) -> None:
    """Show the event log head, the upload backlog and the clock state."""
    from edge.clock import TrustedClock
    from edge.store.events import EventStore
    from edge.store.state import StateDB

    cfg = load_config_from(config_path)
    data_dir = ensure_data_dir(cfg.data_dir)
    with EventStore(data_dir, device_id_for(cfg), max_db_mb=cfg.store.max_db_mb) as store, StateDB(data_dir) as state:
        head, ob = store.head(), store.outbox()
        used, budget = store.storage_bytes()
        reading = TrustedClock(state).read()
        bundle = state.read_row("bundle")
    doc = {
        "device_id": head.device_id,
        "data_dir": str(data_dir),
        "head_seq": head.last_seq,
        "acked_seq": ob.acked_seq,
        "backlog": max(0, head.last_seq - ob.acked_seq),
        "upload_state": ob.state,
        "rebase_pending": head.rebase_pending,
        "storage": {"db_bytes": used, "budget_bytes": budget},
        "clock": {"state": reading.state, "now": reading.wall, "floor_lo": _fmt(reading.lo_ms),
                  "ntp_synced": reading.ntp},
        "bundle": None if bundle is None else {"version": bundle["version"], "keys_version": bundle["keys_version"]},
    }
    if as_json:
        echo_json(doc)
        return
    click.echo(f"gate {doc['device_id']}  data {doc['data_dir']}")
    click.echo(f"event log: head seq {doc['head_seq']}, acked {doc['acked_seq']}, backlog {doc['backlog']} "
               f"({doc['upload_state']})")
    click.echo(f"storage: {used / 1048576:.1f} MiB of {budget / 1048576:.0f} MiB")
    click.echo(f"clock: {reading.state}, now {reading.wall}, NTP {'synced' if reading.ntp else 'not synced'}")
    click.echo("bundle: none" if bundle is None else f"bundle: version {bundle['version']}")


def _fmt(ms: int) -> str:
    from sync.timefmt import format_ms

    return format_ms(ms)


@gate.command("verify-log")
@config_option
def verify_log(config_path: str | None) -> None:
    """Re-derive every hash of the event log; exit 1 naming the first broken seq."""
    from edge.store.events import EventStore

    cfg = load_config_from(config_path)
    data_dir = ensure_data_dir(cfg.data_dir)
    with EventStore(data_dir, device_id_for(cfg), max_db_mb=cfg.store.max_db_mb) as store:
        report = store.verify_chain()
    if report.ok:
        click.echo(f"event log intact: {report.checked} events checked, head seq {report.head_seq}, "
                   f"{report.holes} declared hole(s)")
        return
    click.echo(f"event log broken at seq {report.first_bad_seq}: {report.problem}", err=True)
    raise click.exceptions.Exit(1)


@gate.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def clock(config_path: str | None, as_json: bool) -> None:
    """Show trusted_now(), the clock state and the floor (bundles.md §5)."""
    from edge.clock import TrustedClock
    from edge.store.state import StateDB

    cfg = load_config_from(config_path)
    data_dir = ensure_data_dir(cfg.data_dir)
    with StateDB(data_dir) as state:
        r = TrustedClock(state).read()
    doc = {"state": r.state, "now": r.wall, "system": _fmt(max(0, r.system_ms)), "floor": _fmt(r.floor_ms),
           "lo": _fmt(r.lo_ms), "ntp_synced": r.ntp, "offset_ms": r.offset_ms, "case": r.case}
    if as_json:
        echo_json(doc)
    else:
        click.echo(f"{r.state}: now {r.wall} (system {doc['system']}, floor now {doc['lo']}, "
                   f"NTP {'synced' if r.ntp else 'not synced'})")


@gate.command("clock-floor")
@config_option
def clock_floor(config_path: str | None) -> None:
    """Boot-time oneshot: move the system clock forward to the persisted floor, never back.

    Exits 0 in every case (a fresh install has no store yet) with one log line.
    """
    from edge.clock import TrustedClock
    from edge.store.state import StateDB
    from sync.timefmt import format_ms

    cfg = load_config_from(config_path)
    state_path = Path(cfg.data_dir) / "state.db"
    if not state_path.exists():
        click.echo(f"clock-floor: no state at {state_path} yet (fresh install); clock left alone")
        return
    with StateDB(cfg.data_dir) as state:
        r = TrustedClock(state, ntp=lambda: False).read()
    now_ms = time.time_ns() // 1_000_000
    if now_ms >= r.lo_ms:
        click.echo(f"clock-floor: system clock {format_ms(now_ms)} is at or after the floor {format_ms(r.lo_ms)}")
        return
    try:
        time.clock_settime(time.CLOCK_REALTIME, r.lo_ms / 1000)
    except PermissionError:
        click.echo(f"clock-floor: system clock {format_ms(now_ms)} is behind the floor {format_ms(r.lo_ms)} "
                   "but this process may not set it (needs CAP_SYS_TIME)")
        return
    click.echo(f"clock-floor: moved the system clock from {format_ms(now_ms)} forward to {format_ms(r.lo_ms)}")
