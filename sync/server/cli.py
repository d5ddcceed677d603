"""``checkpoint server``: run the upstream server and do its admin chores from a shell (sync.md §2.6-2.7, §5.1).

``run`` refuses what would be unsafe rather than warn about it:

- a non-loopback listen address without ``behind_proxy`` or ``allow_plain_http``
  (plain HTTP on a LAN, §2.6);
- more than one worker on SQLite (one writer process, §5.1);
- PostgreSQL with ``synchronous_commit = off`` unless ``allow_async_commit`` (§5.1).

Under systemd (``Type=notify``) it sends ``READY=1`` once listening and pings
the watchdog from the server's event loop (hardware.md §4.4). Refusals are
configuration errors: one line, exit 78, no restart.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from sync.configfile import resolve_config_path
from sync.server.config import ServerConfig, load_server_config
from sync.server.errors import StartupRefused

__all__ = ["server"]

log = logging.getLogger(__name__)

CONFIG_ENV = "CHECKPOINT_SERVER_CONFIG"
_CONFIG_JSON_ENV = "CHECKPOINT_SERVER_CONFIG_JSON"  # hands the resolved config to worker processes


def _config(config: Path | None, database: str | None, listen: str | None = None,
            workers: int | None = None) -> ServerConfig:
    cfg = load_server_config(resolve_config_path(config, env=CONFIG_ENV))
    updates: dict[str, Any] = {}
    if database:
        updates["database"] = database
    if listen:
        updates["listen"] = listen
    if workers:
        updates["workers"] = workers
    if updates:
        cfg = ServerConfig.model_validate({**cfg.model_dump(), **updates})
    return cfg


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_startup(cfg: ServerConfig) -> None:
    """The refusals of ``run`` (see the module docstring). Raises ``StartupRefused``."""
    if not _is_loopback(cfg.listen_host) and not (cfg.behind_proxy or cfg.allow_plain_http):
        raise StartupRefused(
            f"listen = {cfg.listen!r} is not a loopback address: put a TLS reverse proxy in front and set "
            "behind_proxy = true, or set allow_plain_http = true for a test network (sync.md §2.6)")
    if cfg.is_sqlite and cfg.workers > 1:
        raise StartupRefused(f"workers = {cfg.workers} on SQLite: exactly one server process may write a SQLite "
                             "database (sync.md §5.1); use PostgreSQL for more processes")


config_option = click.option("--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
                             help=f"server.toml (default: ${CONFIG_ENV}, else built-in defaults).")
database_option = click.option("--database", default=None, help="Database URL (overrides the config).")


@click.group()
def server() -> None:
    """Upstream server: run it, create tokens, add devices, export events."""


@server.command()
@config_option
@database_option
@click.option("--listen", default=None, help="HOST:PORT (default 127.0.0.1:8080).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Server processes (PostgreSQL only).")
def run(config: Path | None, database: str | None, listen: str | None, workers: int | None) -> None:
    """Run the server until SIGTERM."""
    import uvicorn

    from sync.logformat import setup_logging
    from sync.server.app import create_app
    from sync.server.notify import notify, watchdog_interval_s
    from sync.server.state import open_state

    cfg = _config(config, database, listen, workers)
    check_startup(cfg)
    setup_logging(cfg.log_level, cfg.log_format)
    notify("STATUS=opening the database")
    # Migrations run once, here, before any worker starts (a long one extends systemd's start timeout).
    notify("EXTEND_TIMEOUT_USEC=600000000")
    state = open_state(cfg)
    log.info("server starting listen=%s database=%s workers=%d keyid=%s publisher_keys=%d", cfg.listen,
             cfg.database_url.split("@")[-1], cfg.workers, state.server_key.keyid, len(state.publisher_keys))
    uv = dict(host=cfg.listen_host, port=cfg.listen_port, proxy_headers=False, server_header=False,
              log_level=cfg.log_level.lower(), access_log=False, timeout_keep_alive=30)
    if cfg.workers == 1:
        app = create_app(state)
        srv = uvicorn.Server(uvicorn.Config(app, **uv))  # type: ignore[arg-type]
        app.state.started = lambda: srv.started
        # uvicorn re-raises the stop signal after its graceful shutdown; with a handler of ours in place
        # that re-raise is a no-op and a SIGTERM stop exits 0 (hardware.md §4.4: 0 = normal stop).
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        srv.run()
        return
    state.db.dispose()
    os.environ[_CONFIG_JSON_ENV] = cfg.model_dump_json()
    stop = threading.Event()
    threading.Thread(target=_supervisor_notify, args=(cfg, stop, watchdog_interval_s()), daemon=True,
                     name="server:notify").start()
    try:
        uvicorn.run("sync.server.cli:worker_app", factory=True, workers=cfg.workers, **uv)  # type: ignore[arg-type]
    finally:
        stop.set()


def worker_app() -> Any:
    """The app of one worker process (``--workers`` > 1, PostgreSQL): the schema is already current."""
    from sync.logformat import setup_logging
    from sync.server.app import create_app
    from sync.server.state import open_state

    cfg = ServerConfig.model_validate_json(os.environ[_CONFIG_JSON_ENV])
    setup_logging(cfg.log_level, cfg.log_format)
    return create_app(open_state(cfg, migrate=False))


def _supervisor_notify(cfg: ServerConfig, stop: threading.Event, interval: float | None) -> None:
    """With several workers the main process speaks to systemd: READY once /healthz answers, then a
    watchdog ping for every answered probe (a wedged set of workers stops the pings)."""
    import httpx

    from sync.server.notify import notify

    url = f"http://{'127.0.0.1' if cfg.listen_host in ('0.0.0.0', '::') else cfg.listen_host}:{cfg.listen_port}/healthz"
    ready = False
    while not stop.wait(0.5 if not ready else (interval or 5.0)):
        try:
            ok = httpx.get(url, timeout=5).status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok and not ready:
            notify("READY=1")
            ready = True
        elif ok and interval:
            notify("WATCHDOG=1")


# -- tokens ------------------------------------------------------------------------------------------------

def _db(cfg: ServerConfig) -> Any:
    from sync.server.db import Database

    db = Database(cfg.database_url)
    db.create_schema()
    return db


@server.group()
def token() -> None:
    """Admin and auditor tokens (sync.md §2.7)."""


@token.command("create")
@config_option
@database_option
@click.option("--role", type=click.Choice(["admin", "auditor"]), required=True)
@click.option("--name", required=True, help="Who or what holds the token (1-64 characters).")
@click.option("--expires-days", type=click.IntRange(1, 3650), default=None, help="Lifetime (default: no expiry).")
def token_create(config: Path | None, database: str | None, role: str, name: str, expires_days: int | None) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from sync.server.tokens import create_token
    from sync.timefmt import utc_now_ms

    if not 1 <= len(name) <= 64:
        raise click.BadParameter("1-64 characters", param_hint="--name")
    db = _db(_config(config, database))
    with db.write() as conn:
        tok, tid = create_token(conn, role=role, name=name, now_ms=utc_now_ms(), expires_days=expires_days)
    db.dispose()
    click.echo(tok)
    click.echo(f"token id {tid}, role {role}, name {name!r}: shown once, store it now", err=True)


@token.command("list")
@config_option
@database_option
def token_list(config: Path | None, database: str | None) -> None:
    """List tokens (prefix, role, name, state; never the tokens)."""
    from sqlalchemy import select

    from sync.server import tables as t
    from sync.timefmt import format_ms, utc_now_ms

    db = _db(_config(config, database))
    with db.read() as conn:
        rows = conn.execute(select(t.api_tokens).order_by(t.api_tokens.c.id)).all()
    db.dispose()
    now = utc_now_ms()
    for r in rows:
        state = ("revoked" if r.revoked_ms else "expired" if r.expires_ms and r.expires_ms <= now else "active")
        used = format_ms(r.last_used_ms) if r.last_used_ms else "never"
        click.echo(f"{r.id:>5}  {r.prefix}…  {r.role:<7}  {state:<7}  last used {used}  {r.name}")


@token.command("revoke")
@config_option
@database_option
@click.argument("token_id", type=click.IntRange(1))
def token_revoke(config: Path | None, database: str | None, token_id: int) -> None:
    """Revoke a token by id."""
    from sqlalchemy import update

    from sync.server import tables as t
    from sync.timefmt import utc_now_ms

    db = _db(_config(config, database))
    with db.write() as conn:
        n = conn.execute(update(t.api_tokens).where(t.api_tokens.c.id == token_id).values(
            revoked_ms=utc_now_ms())).rowcount
    db.dispose()
    if not n:
        raise click.ClickException(f"no token with id {token_id}")
    click.echo(f"token {token_id} revoked")


# -- sites and devices -------------------------------------------------------------------------------------

@server.command("site-add")
@config_option
@database_option
@click.option("--site", "site_id", required=True)
@click.option("--name", required=True)
@click.option("--tz", default="Asia/Shanghai", show_default=True, help="IANA time zone of the site.")
def site_add(config: Path | None, database: str | None, site_id: str, name: str, tz: str) -> None:
    """Create a site (the daily report's day is computed in its time zone)."""
    from pydantic import ValidationError
    from sqlalchemy import select

    from sync.server import models as m
    from sync.server import tables as t
    from sync.timefmt import utc_now_ms

    try:
        site = m.SiteIn(site_id=site_id, name=name, tz=tz)
    except ValidationError as exc:
        raise click.BadParameter(str(exc.errors()[0]["msg"])) from exc
    db = _db(_config(config, database))
    with db.write() as conn:
        if conn.execute(select(t.sites.c.site_id).where(t.sites.c.site_id == site_id)).first():
            raise click.ClickException(f"site {site_id} exists")
        conn.execute(t.sites.insert().values(site_id=site.site_id, name=site.name, tz=site.tz, created_ms=utc_now_ms()))
    db.dispose()
    click.echo(f"site {site_id} created")


@server.group()
def device() -> None:
    """Devices: create one and print its enrolment code (sync.md §2.3)."""


@device.command("add")
@config_option
@database_option
@click.option("--device", "device_id", required=True)
@click.option("--site", "site_id", required=True)
@click.option("--venue-id", required=True)
@click.option("--zone", required=True)
@click.option("--door", default=None)
@click.option("--firm", "firm_id", default=None)
@click.option("--label", default="")
def device_add(config: Path | None, database: str | None, device_id: str, site_id: str, venue_id: str, zone: str,
               door: str | None, firm_id: str | None, label: str) -> None:
    """Create a pending device; prints its one-time enrolment code (valid 72 h)."""
    from pydantic import ValidationError

    from sync.server import models as m
    from sync.server.enrollment import create_device
    from sync.server.errors import ApiError
    from sync.timefmt import utc_now_ms

    try:
        body = m.DeviceIn(device_id=device_id, site_id=site_id, label=label, firm_id=firm_id,
                          venue=m.Venue(venue_id=venue_id, zone=zone, door=door))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise click.BadParameter(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc
    db = _db(_config(config, database))
    try:
        with db.write() as conn:
            out = create_device(conn, device_id=body.device_id, site_id=body.site_id, venue=body.venue.model_dump(),
                                firm_id=body.firm_id, label=body.label, now_ms=utc_now_ms())
    except ApiError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        db.dispose()
    click.echo(out["enrollment_code"])
    click.echo(f"device {device_id} pending; code valid until {out['code_expires_at']}; shown once", err=True)


@device.command("enrollment-code")
@config_option
@database_option
@click.argument("device_id")
def device_code(config: Path | None, database: str | None, device_id: str) -> None:
    """Issue a new enrolment code for a pending device."""
    from sync.server.enrollment import issue_code
    from sync.server.errors import ApiError
    from sync.timefmt import utc_now_ms

    db = _db(_config(config, database))
    try:
        with db.write() as conn:
            out = issue_code(conn, device_id, utc_now_ms())
    except ApiError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        db.dispose()
    click.echo(out["enrollment_code"])


# -- fleet and export ---------------------------------------------------------------------------------------

@server.command()
@config_option
@database_option
@click.option("--site", "site_id", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def fleet(config: Path | None, database: str | None, site_id: str | None, as_json: bool) -> None:
    """The fleet table, worst first: health, backlog, acked seq, bundle, clock (sync.md §5.8)."""
    from rich.console import Console
    from rich.table import Table

    from sync.server.fleet import fleet_devices
    from sync.timefmt import utc_now_ms

    cfg = _config(config, database)
    db = _db(cfg)
    with db.read() as conn:
        rows = fleet_devices(conn, utc_now_ms(), cfg.offline_after_s, site_id)
    db.dispose()
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    table = Table("gate", "site", "health", "last seen", "backlog", "acked", "holes", "bundle", "clock", "storage")
    for r in rows:
        age = r["last_seen_age_s"]
        table.add_row(r["device_id"], r["site_id"], ("CONFLICT " if r["conflict"] else "") + r["health"],
                      "—" if age is None else f"{age // 60} min", str(r["backlog"] or 0), str(r["acked_seq"]),
                      str(r["holes"]), f"{r['bundle_version'] or '—'}/{r['current_version'] or '—'}",
                      r["clock"] or "—", r["storage"] or "—")
    Console().print(table)


@server.command()
@config_option
@database_option
@click.option("--site", "site_id", default=None)
@click.option("--venue", "venue_id", default=None)
@click.option("--from", "from_", required=True, help="ISO 8601 with offset, e.g. 2022-04-12T00:00:00+08:00")
@click.option("--to", required=True)
@click.option("--kinds", default="decision,override,temp_alert", show_default=True)
@click.option("--include-pid", is_flag=True, help="Add the pid column (the admin's choice, sync.md §2.7).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def export(config: Path | None, database: str | None, site_id: str | None, venue_id: str | None, from_: str, to: str,
           kinds: str, include_pid: bool, out: Path) -> None:
    """Export events as CSV (the masked columns of sync.md §5.4), with progress."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sync.server.audit import MAX_EXPORT_DAYS, ExportQuery, export_count, export_csv, parse_window
    from sync.server.errors import ApiError

    if site_id is None and venue_id is None:
        raise click.UsageError("give --site or --venue")
    try:
        q = ExportQuery(window=parse_window(from_, to, max_days=MAX_EXPORT_DAYS), site_id=site_id, venue_id=venue_id,
                        kinds=tuple(k for k in kinds.split(",") if k), include_pid=include_pid)
    except ApiError as exc:
        raise click.UsageError(exc.detail) from exc
    db = _db(_config(config, database))
    tmp = out.with_name(f".{out.name}.part")
    try:
        with db.read() as conn, tmp.open("w", encoding="utf-8", newline="") as f:
            os.fchmod(f.fileno(), 0o600)  # masked, but still personal data
            total = export_count(conn, q)
            with Progress(TextColumn("export"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                          disable=not sys.stderr.isatty()) as bar:
                task = bar.add_task("rows", total=total)
                for i, piece in enumerate(export_csv(conn, q)):
                    f.write(piece)
                    bar.update(task, advance=max(0, piece.count("\r\n") - (1 if i == 0 else 0)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except ApiError as exc:
        raise click.ClickException(exc.detail) from exc
    finally:
        db.dispose()
        tmp.unlink(missing_ok=True)
    click.echo(f"{total} events written to {out}", err=True)


@server.command()
@config_option
@database_option
def migrate(config: Path | None, database: str | None) -> None:
    """Create or upgrade the schema and exit (``run`` does this too)."""
    from sync.server.db import Database

    db = Database(_config(config, database).database_url)
    t0 = time.monotonic()
    what = db.create_schema()
    click.echo(f"schema {what} (revision {db.alembic_revision()}, {time.monotonic() - t0:.1f} s)")
    db.dispose()
