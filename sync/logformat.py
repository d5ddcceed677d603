"""Structured log lines for every checkpoint process (JSON lines or logfmt) and the redaction filter.

Log calls use %-style ``key=value`` arguments; the formatter adds time (UTC,
the project's time format), level and logger name, and writes one line.
journald keeps these lines as they are.

Personal data never belongs in a log line; code logs only pids, masked names,
seqs and hashes. ``Redact`` is a second line of defence on the root handler: it
rewrites anything that looks like raw credential text (``CK1:…``, ``HC1:…``),
an 18-character resident id number or a mainland mobile number, so a slip in
one log call does not leak a person.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, Literal

from sync.timefmt import format_ms

__all__ = ["JsonFormatter", "LogfmtFormatter", "Redact", "redact", "setup_logging"]

_PATTERNS = [
    (re.compile(r"\b(CK1|HC1):[0-9A-Z $%*+\-./:]{8,}"), r"\1:[redacted]"),
    (re.compile(r"(?<![0-9a-fA-F])\d{17}[\dXx](?![0-9a-fA-F])"), "[id redacted]"),
    (re.compile(r"(?<!\d)1[3-9]\d{9}(?!\d)"), "[phone redacted]"),
]


def redact(text: str) -> str:
    """Replace raw credential text, id numbers and phone numbers in ``text``."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class Redact(logging.Filter):
    """Rewrite a record's message (after %-formatting) through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


def _stamp(record: logging.LogRecord) -> str:
    return format_ms(int(record.created * 1000))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"t": _stamp(record), "level": record.levelname.lower(), "logger": record.name,
               "msg": record.getMessage()}
        if record.threadName and record.threadName != "MainThread":
            doc["thread"] = record.threadName
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', '\\"')
        line = f't={_stamp(record)} level={record.levelname.lower()} logger={record.name} msg="{msg}"'
        if record.exc_info:
            line += " exc=" + json.dumps(redact(self.formatException(record.exc_info)))
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (as logging's last resort
    does), not the stream of the day it was installed: a command run in-process (tests, the demo)
    may swap and close its stderr, and a later record must not hit a closed file."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.setStream; the current stderr always wins
        pass


def setup_logging(level: str = "INFO", fmt: Literal["json", "logfmt"] = "json") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_checkpoint", False):
            root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    handler.addFilter(Redact())
    handler._checkpoint = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
