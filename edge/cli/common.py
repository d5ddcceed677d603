"""Options and helpers shared by the gate's commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from edge.config import GateConfig, load_gate_config

__all__ = ["config_option", "device_id_for", "echo_json", "load_config_from"]

F = TypeVar("F", bound=Callable[..., Any])


def config_option(f: F) -> F:
    """``--config FILE`` (or ``$CHECKPOINT_CONFIG``); without either, built-in defaults."""
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="CHECKPOINT_CONFIG",
        default=None,
        help="gate.toml to use (default: $CHECKPOINT_CONFIG, else built-in defaults).",
    )(f)


def load_config_from(config_path: str | None) -> GateConfig:
    return load_gate_config(config_path)


def device_id_for(cfg: GateConfig) -> str:
    """The enrolled device id when enrolled, else ``[gate] device_id``."""
    from sync.identity import load_identity

    ident = load_identity(cfg.identity_dir)
    return ident.device_id if ident else cfg.gate.device_id


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, ensure_ascii=False, sort_keys=True))
