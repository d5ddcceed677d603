"""``checkpoint``: the one command-line entry point of the project.

Exit codes: 0 success; 1 a runtime failure (one line on stderr, no traceback for
expected failures); 2 a usage error (click); 78 a configuration error (systemd
units use ``RestartPreventExitStatus=78``); 130 interrupted. Each package keeps
its own commands; this table only says where they live.
"""

from __future__ import annotations

import logging
import sys

import click

from edge import __version__
from edge.cli.lazy import LazyGroup

__all__ = ["cli", "main"]

EXIT_CONFIG = 78

COMMANDS: dict[str, tuple[str, str]] = {
    "gate": ("edge.cli.gate:gate", "Run and look after this gate: init, run, status, clock, log check."),
    "sync": ("sync.cli.agent:sync", "Sync agent: enrol with the server, upload events, fetch bundles."),
    "server": ("sync.server.cli:server", "Upstream server: run it, create tokens."),
    "admin": ("edge.cli.admin:admin", "Admin tools: keys, bundles, credentials, rules, PINs."),
    "decode": ("edge.cli.decode:decode", "Read QR codes from images and video files."),
    "verify": ("edge.credentials.cli:verify", "Verify a scanned code offline (CK1, HC1, opaque)."),
    "thermometer": ("firmware_bridge.cli:thermometer", "Read a serial thermometer and print readings."),
    "thermometer-sim": ("firmware_bridge.cli:thermometer_sim", "Simulate a serial thermometer on a pty."),
    "demo": ("edge.demo:demo", "Run the whole system on embedded defaults."),
    "doctor": ("edge.doctor:doctor", "Check camera, thermometer, pins, storage, clock, bundle, server."),
    "install": ("edge.install:install", "Install a gate or server on a Raspberry Pi (systemd units, users)."),
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="checkpoint")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Log level for this command (default: from the config, else WARNING for one-shot commands).",
)
@click.pass_context
def cli(ctx: click.Context, log_level: str | None) -> None:
    """checkpoint: offline-first gate units for health-code, pass and temperature checks."""
    from sync.logformat import setup_logging

    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    setup_logging(log_level or "WARNING")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and turn expected failures into one line and an exit code."""
    from edge.errors import EdgeError
    from firmware_bridge.errors import BridgeError
    from sync.errors import ConfigError, SyncError

    try:
        rv = cli.main(args=argv, prog_name="checkpoint", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("checkpoint: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:
        click.echo(f"checkpoint: configuration error: {exc}", err=True)
        return EXIT_CONFIG
    except (EdgeError, SyncError, BridgeError) as exc:
        click.echo(f"checkpoint: error: {exc}", err=True)
        return 1
    except BrokenPipeError:
        return 1
    except Exception:
        logging.getLogger("checkpoint").exception("unexpected error (a bug; please report it)")
        return 70
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
