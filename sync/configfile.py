"""Load a TOML configuration file into a pydantic model, with one-line errors.

Every model is strict about its keys (``extra="forbid"``): a typo fails loudly
instead of silently running with a default. Every error names the file and the
key path as it is written in TOML (``[store] max_db_mb``), so the CLI can print
it as one line and exit 78 (configuration error; systemd does not restart).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sync.errors import ConfigError

__all__ = ["ConfigModel", "load_model", "resolve_config_path"]

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys are errors; values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _key_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) == 1:
        return parts[0]
    return "[" + ".".join(parts[:-1]) + "] " + parts[-1]


def describe(exc: ValidationError, source: str) -> str:
    """One line for the first validation error: file, key, problem and the offending value."""
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if not isinstance(p, int) or True)
    key = _key_path(loc)
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key {key}"
    if err["type"] == "missing":
        return f"{source}: missing key {key}"
    value = err.get("input")
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {key}: {err['msg']} (got {shown}){more}"


def resolve_config_path(path: str | os.PathLike[str] | None, env: str = "CHECKPOINT_CONFIG") -> Path | None:
    """``--config`` wins, then ``$CHECKPOINT_CONFIG``; None means built-in defaults."""
    if path:
        return Path(path)
    value = os.environ.get(env)
    return Path(value) if value else None


def load_model(model: type[M], path: Path | None) -> M:
    """Read ``path`` (or nothing: defaults) into ``model``.

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key or wrong type, in one line.
    """
    data: dict[str, Any] = {}
    source = str(path) if path else "built-in defaults"
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe(exc, source)) from exc
