"""``checkpoint thermometer`` and ``checkpoint thermometer-sim`` (hardware.md §1.11, §1.12).

``thermometer`` is the technician's tool: it opens a port with the gate's defaults
and prints raw readings, for wiring checks and for the site calibration of §1.9
(``--json`` is the only JSON of the project with float temperatures). No reading
within ``--timeout`` prints one line naming the port, the state and the counters
on stderr and exits 1; usage errors exit 2.

``thermometer-sim`` runs the pty simulator, prints one JSON line
``{"port": "/dev/pts/N", "link": "...", "protocol": "..."}`` and runs until SIGINT,
SIGTERM or ``--duration``.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from datetime import UTC, datetime
from typing import Any

import click

from firmware_bridge.protocols import PROTOCOLS
from firmware_bridge.records import Reading

__all__ = ["format_time", "thermometer", "thermometer_sim"]


def format_time(dt: datetime) -> str:
    """``2022-04-12T08:00:01.234Z`` (the project's JSON time format, milliseconds, UTC)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _c(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f} °C"


def _human(r: Reading) -> str:
    return (f"{format_time(r.at)}  物体/object {_c(r.object_c)}  环境/ambient {_c(r.ambient_c)}"
            f"  体温估计/body {_c(r.body_c, 1)}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--port", required=True, help='Serial device (prefer /dev/serial/by-id/...), or "sim".')
@click.option("--protocol", required=True, type=click.Choice(PROTOCOLS), help="Wire protocol.")
@click.option("--baud", type=click.IntRange(300, 4_000_000), default=None, help="Baud rate (default 9600).")
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after N readings (default: run).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True, max=3600), default=5.0,
              show_default=True, help="Give up when no reading arrives for this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per reading.")
@click.pass_context
def thermometer(ctx: click.Context, port: str, protocol: str, baud: int | None, count: int | None,
                timeout_s: float, as_json: bool) -> None:
    """Read a serial thermometer and print raw readings (for wiring checks and calibration)."""
    from firmware_bridge.reader import open_thermometer

    if not (ctx.find_root().obj or {}).get("log_level"):
        # The stderr line below says what went wrong; the reader's state-change warnings
        # would only repeat it (``checkpoint --log-level INFO thermometer`` shows them).
        logging.getLogger("firmware_bridge").setLevel(logging.ERROR)
    options: dict[str, Any] = {}
    if baud is not None:
        options["baudrate"] = baud
    printed = 0
    with open_thermometer(port, protocol, **options) as therm:
        while count is None or printed < count:
            reading = therm.read(timeout_s)
            if reading is None:
                st = therm.status()
                detail = f"; last error: {st.last_error}" if st.state == "fault" and st.last_error else ""
                click.echo(
                    f"no reading from {port} in {timeout_s:g} s: {st.state}, "
                    f"{st.counters.bad_frames} bad frames{detail} ({timeout_s:g} 秒内无读数)",
                    err=True,
                )
                ctx.exit(1)
            if as_json:
                click.echo(json.dumps({"at": format_time(reading.at), "object_c": reading.object_c,
                                       "ambient_c": reading.ambient_c, "body_c": reading.body_c}))
            else:
                click.echo(_human(reading))
            printed += 1


def _faults(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from firmware_bridge.simulator import SimError, parse_faults

    try:
        return parse_faults(value)
    except SimError as exc:
        raise click.BadParameter(str(exc)) from exc


def _people(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    from firmware_bridge.simulator import SimError, parse_people

    try:
        people = parse_people(value)
    except SimError as exc:
        raise click.BadParameter(str(exc)) from exc
    return people


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--protocol", required=True, type=click.Choice(PROTOCOLS), help="Protocol to speak.")
@click.option("--link", type=click.Path(dir_okay=False), default=None,
              help="Symlink to the pty (default $XDG_RUNTIME_DIR/checkpoint/thermometer-<protocol>).")
@click.option("--period", type=click.FloatRange(0.005, 60), default=None,
              help="Output period in s (GY 0.1, ASCII 0.5).")
@click.option("--ambient", type=click.FloatRange(-40, 60), default=25.0, show_default=True, help="Ambient °C.")
@click.option("--people", default="34.2,34.6,34.0,35.5*2,34.3", show_default=True, callback=_people,
              help="Object °C of each person in turn; *2 presents twice (a re-measure).")
@click.option("--every", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="A new person every S seconds.")
@click.option("--stay", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Each person stays S seconds.")
@click.option("--faults", default=None, callback=_faults,
              help="e.g. garbage=0.1,bad_checksum=0.05,split=0.2,drop=0.01,silence=10+3,unplug=20+2,"
                   "reset=30,fever=40+5,cold=50+10")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for noise and faults.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after S seconds (default: until SIGINT/SIGTERM).")
@click.option("--address", type=click.IntRange(1, 247), default=1, show_default=True, help="Modbus address.")
@click.option("--format", "ascii_format", type=click.Choice(["labels", "bare"]), default="labels",
              show_default=True, help="ASCII line format.")
@click.option("--request", default=None, help="ASCII: answer only after receiving this line (e.g. T).")
@click.option("--reset-on-open", is_flag=True, help="Restart like an Arduino whenever the host opens the port.")
@click.option("--no-auto-output", is_flag=True, help="GY: stay silent after power-up until A5 45 EA.")
def thermometer_sim(protocol: str, link: str | None, period: float | None, ambient: float, people: Any,
                    every: float, stay: float, faults: Any, seed: int, duration: float | None, address: int,
                    ascii_format: str, request: str | None, reset_on_open: bool, no_auto_output: bool) -> None:
    """Simulate a serial thermometer on a pty, with injectable faults."""
    from firmware_bridge.simulator import SimError, ThermometerSim, default_link

    if every <= stay:
        raise click.BadParameter("--every must be longer than --stay", param_hint="--every")
    stop = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sim = ThermometerSim(
                protocol, seed=seed, period_s=period, ambient_c=ambient, people=people, every_s=every,
                stay_s=stay, faults=faults, link=link or default_link(protocol), address=address,
                ascii_format=ascii_format, request=request, reset_on_open=reset_on_open,
                auto_output=not no_auto_output,
            )
        except SimError as exc:
            raise click.UsageError(str(exc)) from exc
        with sim:
            click.echo(json.dumps({"port": sim.pty_path, "link": sim.port, "protocol": protocol}))
            stop.wait(duration)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
