"""``checkpoint sync``: enrol this gate, run the sync agent, show and drain the upload backlog.

Exit codes as for every command: 0 done; 1 a runtime failure (one line); 78 a
configuration error (systemd does not restart); ``run`` exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from edge.cli.common import config_option, echo_json, load_config_from
from edge.config import GateConfig

__all__ = ["sync"]

NOT_ENROLLED_RECHECK_S = 5.0


@click.group()
def sync() -> None:
    """Sync agent: enrol with the server, upload events, fetch bundles."""


def _logging(cfg: GateConfig) -> None:
    from sync.logformat import setup_logging

    ctx = click.get_current_context()
    root = ctx.find_root()
    level = (root.obj or {}).get("log_level") if root.obj else None
    setup_logging(level or cfg.log.level, cfg.log.format)


@sync.command()
@config_option
def run(config_path: str | None) -> None:
    """Run the sync agent until SIGTERM (systemd: checkpoint-sync.service)."""
    from sync.agent.core import Agent, NotEnrolled
    from sync.agent.notify import Notifier
    from sync.identity import load_identity

    cfg = load_config_from(config_path)
    _logging(cfg)
    stop = threading.Event()
    notifier = Notifier()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Not enrolled yet: stay up and wait, so that enrolling is all an installer has to do.
    if load_identity(cfg.identity_dir) is None:
        logging.getLogger("sync.agent").warning(
            "not enrolled: waiting for identity.json in %s (run 'checkpoint sync enroll')", cfg.identity_dir)
    while load_identity(cfg.identity_dir) is None:
        notifier.ready()
        notifier.status("not enrolled: run 'checkpoint sync enroll' / 未注册")
        notifier.ping()
        if stop.wait(NOT_ENROLLED_RECHECK_S):
            notifier.stopping()
            return
    try:
        agent = Agent(cfg, notifier=notifier)
    except NotEnrolled as exc:  # pragma: no cover - the file vanished between check and open
        raise click.ClickException(str(exc)) from exc
    with agent:
        agent.run(stop)


@sync.command()
@config_option
@click.option("--server", "server_url", required=True, help="Upstream server URL, e.g. https://ck.example.org")
@click.option("--code", required=True, help="One-time enrolment code from the admin, e.g. 7KQ4-9MZT-H2XC.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def enroll(config_path: str | None, server_url: str, code: str, as_json: bool) -> None:
    """Enrol this gate with a one-time code (makes device.key if absent)."""
    from sync.agent.enroll import enroll as do_enroll

    cfg = load_config_from(config_path)
    res = do_enroll(cfg, server_url=server_url, code=code)
    ident = res.identity
    venue = ident.venue
    if as_json:
        echo_json({"device_id": ident.device_id, "keyid": res.keyid, "site_id": ident.site_id,
                   "venue": venue.model_dump(), "firm_id": ident.firm_id, "already_enrolled": res.already,
                   "venue_bound_seq": res.venue_bound_seq, "anchor": res.anchor})
        return
    if res.already:
        click.echo(f"已注册 / already enrolled as {ident.device_id}")
    else:
        click.echo(f"注册成功 / enrolled as {ident.device_id} (site {ident.site_id})")
    door = f"/{venue.door}" if venue.door else ""
    click.echo(f"场所 / venue: {venue.venue_id} zone {venue.zone}{door}" + (f", firm {ident.firm_id}"
                                                                          if ident.firm_id else ""))
    click.echo(f"密钥 / keys anchor: {res.anchor}")
    click.echo("请核对管理页面显示的密钥编号 / check that the admin page shows the same key id:")
    click.echo(f"keyid {res.keyid}")


def _reader(path: Path) -> Any:
    from edge.store.schema import connect

    return connect(path, "reader")


def _status_doc(cfg: GateConfig) -> dict[str, Any]:
    from edge.clock import boot_id, boottime_ms
    from edge.config import ensure_data_dir
    from sync.agent.gate_status import read_gate_status
    from sync.identity import load_identity

    data_dir = ensure_data_dir(cfg.data_dir)
    ident = load_identity(cfg.identity_dir)
    doc: dict[str, Any] = {"enrolled": ident is not None, "data_dir": str(data_dir)}
    if ident is not None:
        doc.update(device_id=ident.device_id, keyid=ident.keyid, server_url=cfg.sync.server_url or ident.server_url,
                   site_id=ident.site_id)
    events = data_dir / "events.db"
    if events.exists():
        c = _reader(events)
        try:
            next_seq, rebase = c.execute("SELECT next_seq, rebase_pending FROM meta WHERE id = 1").fetchone()
            acked, state, failures, last_ok, last_err, pruned = c.execute(
                "SELECT acked_seq, state, failures, last_ok_wall, last_error, pruned_through FROM outbox WHERE id = 1"
            ).fetchone()
            holes = c.execute("SELECT count(*), coalesce(sum(to_seq - from_seq + 1), 0) FROM dropped").fetchone()
        finally:
            c.close()
        doc["upload"] = {"head_seq": next_seq - 1, "acked_seq": acked, "backlog": max(0, next_seq - 1 - acked),
                         "state": state, "failures": failures, "last_ok_at": last_ok, "last_error": last_err,
                         "pruned_through": pruned, "rebase_pending": bool(rebase), "holes": holes[0],
                         "events_in_holes": holes[1]}
    state_db = data_dir / "state.db"
    if state_db.exists():
        from edge.store.state import StateDB

        with StateDB(data_dir, readonly=True) as st:
            flash = st.kv_get("flash_through")
            sample = st.kv_get("server_time")
            gate = read_gate_status(st, boot=boot_id(), boottime_ms=boottime_ms())
            bundle = st.read_row("bundle")
        doc["flash_through"] = int(flash) if flash and flash.isdigit() else None
        doc["server_time_sample"] = json.loads(sample) if sample else None
        doc["gate_process"] = {"running": gate.running, "reason": gate.reason,
                               "status_age_s": None if gate.age_s is None else round(gate.age_s, 1)}
        doc["bundle"] = None if bundle is None else {"version": bundle["version"],
                                                    "keys_version": bundle["keys_version"]}
    lock = data_dir / "agent.lock"
    doc["agent_running"] = _lock_held(lock)
    return doc


def _lock_held(path: Path) -> bool:
    import fcntl
    import os

    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@sync.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of text.")
def status(config_path: str | None, as_json: bool) -> None:
    """Show enrolment, the upload backlog and cursor, and whether the agent runs (read-only)."""
    cfg = load_config_from(config_path)
    doc = _status_doc(cfg)
    if as_json:
        echo_json(doc)
        return
    if not doc["enrolled"]:
        click.echo("未注册 / not enrolled: run 'checkpoint sync enroll --server URL --code CODE'")
    else:
        click.echo(f"gate {doc['device_id']} (keyid {doc['keyid']}) -> {doc['server_url']}")
    click.echo(f"agent: {'running' if doc['agent_running'] else 'not running'}")
    up = doc.get("upload")
    if up:
        click.echo(f"上传 / upload: {up['state']}, acked {up['acked_seq']} of {up['head_seq']}, "
                   f"backlog {up['backlog']}" + (", REBASE PENDING" if up["rebase_pending"] else ""))
        if up["last_ok_at"]:
            click.echo(f"last upload ok at {up['last_ok_at']}")
        if up["last_error"]:
            click.echo(f"last error: {up['last_error']}")
        if up["holes"]:
            click.echo(f"declared holes: {up['holes']} ({up['events_in_holes']} events lost)")
    gp = doc.get("gate_process")
    if gp:
        click.echo(f"gate process: {'reporting' if gp['running'] else 'not reporting (' + gp['reason'] + ')'}")


@sync.command()
@config_option
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Give up after this many seconds.")
def drain(config_path: str | None, timeout_s: float) -> None:
    """Upload the whole backlog now and show progress (e.g. before replacing a gate's SD card).

    When the agent service already runs, this only watches it drain.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sync.agent.core import Agent, AgentBusy

    cfg = load_config_from(config_path)
    _logging(cfg)
    agent: Agent | None = None
    try:
        agent = Agent(cfg, bundle_update=None)
    except AgentBusy:
        agent = None
    doc = _status_doc(cfg)
    if "upload" not in doc:
        raise click.ClickException("no event log in the data directory")
    target = doc["upload"]["head_seq"]
    start_acked = doc["upload"]["acked_seq"]
    stop = threading.Event()
    worker: threading.Thread | None = None
    if agent is not None:
        worker = threading.Thread(target=agent.run, args=(stop,), name="sync:drain", daemon=True)
        worker.start()
    end = time.monotonic() + timeout_s
    ok = False
    try:
        with Progress(TextColumn("上传 / uploading"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[state]}"),
                      TimeRemainingColumn(), transient=False) as progress:
            task = progress.add_task("drain", total=max(1, target - start_acked), state="")
            while time.monotonic() < end:
                up = _status_doc(cfg)["upload"]
                progress.update(task, completed=max(0, min(up["acked_seq"], target) - start_acked), state=up["state"])
                if up["acked_seq"] >= target:
                    ok = True
                    break
                if up["state"] in ("conflict", "revoked", "blocked"):
                    break
                time.sleep(0.5)
    finally:
        stop.set()
        if worker is not None:
            worker.join(30)
        if agent is not None:
            agent.close()
    up = _status_doc(cfg)["upload"]
    if ok:
        click.echo(f"完成 / drained: acked {up['acked_seq']} (head was {target})")
        return
    raise click.ClickException(
        f"not drained: acked {up['acked_seq']} of {target}, upload state {up['state']}"
        + (f": {up['last_error']}" if up["last_error"] else "")
    )
