"""Serving the console from a thread of the gate process (uvicorn), console.md §3.

Listen rules: a loopback address (the kiosk on the gate's own screen) is served
over plain HTTP. Any other address needs ``tls_cert_file`` and ``tls_key_file``
so that PINs do not cross the LAN in clear, unless ``allow_plain_http`` (tests,
demo). The accepted ``Host`` names follow the address (``web.create_app``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from edge.console.accounts import PinGate
from edge.console.web import ConsoleBackend, create_app
from sync.errors import ConfigError

if TYPE_CHECKING:
    from edge.config import ConsoleConfig

__all__ = ["ConsoleServer", "allowed_hosts_for", "split_listen"]

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_for(host: str, *, tls: bool) -> frozenset[str] | None:
    """Host names a browser may use to reach this console; None = any (TLS on a LAN address)."""
    local = {"localhost", "127.0.0.1", "::1"}
    if _is_loopback(host):
        return frozenset(local | {host})
    if tls:
        return None
    name = socket.gethostname().lower()
    names = local | {host, name, f"{name}.local"}
    if host in ("0.0.0.0", "::"):
        with contextlib.suppress(OSError):
            names |= {str(a[4][0]) for a in socket.getaddrinfo(name, None)}
        # The address a phone on the LAN uses: the source address of the default route
        # (a UDP connect sends nothing).
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            names.add(probe.getsockname()[0])
    return frozenset(names)


class ConsoleServer:
    """uvicorn on ``[console] listen`` in a daemon thread named ``console:http``."""

    def __init__(self, cfg: ConsoleConfig, backend: ConsoleBackend, *, pin_gate: PinGate | None = None) -> None:
        host, port = split_listen(cfg.listen)
        tls = bool(cfg.tls_cert_file and cfg.tls_key_file)
        if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
            raise ConfigError("[console] tls_cert_file and tls_key_file go together")
        if tls:
            for f in (cfg.tls_cert_file, cfg.tls_key_file):
                if not Path(f).is_file():
                    raise ConfigError(f"[console] TLS file {f} does not exist")
        if not _is_loopback(host) and not tls and not cfg.allow_plain_http:
            raise ConfigError(
                f"[console] listen = {cfg.listen!r} is not a loopback address: set tls_cert_file and "
                "tls_key_file (PINs must not cross the LAN in clear), or allow_plain_http = true"
            )
        self.host, self.tls = host, tls
        self.backend = backend
        self.app = create_app(
            backend, pin_gate=pin_gate, allowed_hosts=allowed_hosts_for(host, tls=tls), secure_cookie=tls
        )
        self._config = uvicorn.Config(
            self.app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=cfg.tls_cert_file or None, ssl_keyfile=cfg.tls_key_file or None,
            timeout_graceful_shutdown=1, proxy_headers=False, server_header=False,
        )
        self._server = uvicorn.Server(self._config)
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> None:
        """Bind and serve; returns once listening (``port`` is then the bound one).

        Raises:
            OSError: the address cannot be bound (in use, not ours).
        """
        self._config.load()
        sock = self._config.bind_socket()
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name="console:http", daemon=True
        )
        self._thread.start()
        end = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"console could not start on {self._config.host}:{self.port}")
            if time.monotonic() > end:
                raise OSError(f"console did not start within {timeout_s} s")
            time.sleep(0.01)
        log.info("console listening url=%s", self.url)

    def _serve(self, sock: socket.socket) -> None:
        try:
            self._server.run(sockets=[sock])
        except Exception:
            log.exception("console server stopped with an error")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Idempotent."""
        self.backend.broadcaster.close()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
