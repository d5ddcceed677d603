"""``checkpoint gate run`` and ``checkpoint gate safe-state`` (hardware.md §3.3, §4)."""

from __future__ import annotations

import logging

import click

from edge.cli.common import config_option, load_config_from

__all__ = ["run", "safe_state"]

log = logging.getLogger("edge.gate")


@click.command()
@config_option
@click.option("--print-decisions", is_flag=True, help="Print one line per decision on stdout.")
@click.pass_context
def run(ctx: click.Context, config_path: str | None, print_decisions: bool) -> None:
    """Run the gate process: camera, decisions, relay, console (until SIGTERM).

    Exit codes: 0 clean stop; 78 configuration error; 70 the decision loop failed
    (the relay was left de-energised; systemd restarts the gate).
    """
    from edge.app import GateApp
    from sync.logformat import setup_logging

    cfg = load_config_from(config_path)
    cli_level = (ctx.find_root().obj or {}).get("log_level")
    setup_logging(cli_level or cfg.log.level, cfg.log.format)
    on_decision = (lambda _view, line: click.echo(line)) if print_decisions else None
    app = GateApp(cfg, on_decision=on_decision)
    restore = app.install_signal_handlers()
    try:
        code = app.run()
    finally:
        restore()
    if code:
        raise click.exceptions.Exit(code)


@click.command("safe-state")
@config_option
def safe_state(config_path: str | None) -> None:
    """Drive the relay de-energised and lights and buzzer off (ExecStopPost of the gate unit).

    Runs after the gate process ended for any reason, SIGKILL and watchdog aborts
    included (hardware.md §3.3 step 2). In fail_secure the lock stays locked; in
    fail_safe it opens, by design.
    """
    from edge.gate import Turnstile, make_pin_factory

    cfg = load_config_from(config_path)
    factory = make_pin_factory(cfg.gpio.pin_factory)
    try:
        with Turnstile.from_config(cfg.gpio, pin_factory=factory) as gate:
            gate.safe()
            energised = gate.relay.energised
    finally:
        factory.close()
    click.echo(f"gate safe state: relay {'ENERGISED' if energised else 'de-energised'} "
               f"({cfg.gpio.lock_mode}), lights and buzzer off")
    if energised:
        raise click.exceptions.Exit(1)
