"""A real gate process in a test: real store, bundle, clock, decoder and console; mock pins,
pictures pushed through the camera's PushSource, the thermometer simulator on a pty."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from edge.app import GateApp
from edge.camera import Camera, PushSource
from edge.config import GateConfig
from edge.demo import DemoWorld, qr_image
from edge.store.schema import connect
from sync.identity import Identity, Venue, write_identity

PID_KEY = bytes(range(32))
RELAY, RED, AMBER, GREEN, BUZZER, BUTTON, BEAM = 17, 22, 23, 24, 25, 27, 5


def gate_config(data_dir: Path, *, lane: str = "person", thermometer: bool = False, console: bool = False,
                gpio: dict[str, Any] | None = None, **sections: Any) -> GateConfig:
    doc: dict[str, Any] = {
        "gate": {"device_id": "gate-test-01" if lane == "person" else "gate-test-truck", "data_dir": str(data_dir),
                 "lane": lane},
        "decode": {"hold_s": 1.0, "deep_interval_s": 0},
        "thermometer": {"enabled": thermometer, "port": "sim", "wait_s": 1.0, "fault_alert_after_s": 1.0},
        "gpio": {"pin_factory": "mock", "pulse_s": 0.2, "show_s": 0.1, **(gpio or {})},
        "console": {"enabled": console, "listen": "127.0.0.1:0"},
    }
    for k, v in sections.items():
        doc.setdefault(k, {}).update(v)
    return GateConfig.model_validate(doc)


class Harness:
    def __init__(self, world: DemoWorld, template: Path | None, data_dir: Path, pins: Any, *,
                 env: dict[str, str] | None = None, enrolled: bool = False, pin_gate: Any = None,
                 **cfg_kw: Any) -> None:
        """``template``: a data directory with the bundle installed (copied, so each gate starts fresh)."""
        if template is not None:
            shutil.copytree(template, data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = gate_config(data_dir, **cfg_kw)
        if enrolled:
            write_identity(self.cfg.identity_dir, Identity(
                device_id=self.cfg.gate.device_id, server_url="https://checkpoint.invalid", server_key="11" * 32,
                keyid="22" * 8, pid_key=PID_KEY.hex(), pid_kid=1, site_id="site-test",
                venue=Venue(venue_id="V0012-01", zone="production", door="south-1"), firm_id="F0012"))
        self.world = world
        self.pins = pins
        self.push = PushSource(fps=30, size=(640, 480))
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self.cond = threading.Condition()
        self.lines: list[str] = []
        self.app = GateApp(
            self.cfg, pin_factory=pins, camera=Camera(self.push, no_frames_after_s=2.0),
            on_decision=lambda view, line: self.lines.append(line), create_data_dir=False,
            thermometer_options={"sim": {"people": None}}, env=env if env is not None else {}, pin_gate=pin_gate,
        )
        self.app.broadcaster.add_listener(self._on)
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="test:gate", daemon=True)

    def _run(self) -> None:
        self.exit_code = self.app.run()

    def _on(self, msg: Any) -> None:
        with self.cond:
            self.messages.append((msg.event, msg.data))
            self.cond.notify_all()

    def start(self) -> Harness:
        self.thread.start()
        if not self.app.ready.wait(30):
            raise AssertionError(f"gate did not start (exit {self.exit_code})")
        return self

    def stop(self) -> int | None:
        self.app.request_stop("shutdown")
        self.thread.join(20)
        return self.exit_code

    # -- driving --------------------------------------------------------------------------------

    @property
    def sim(self) -> Any:
        return self.app.thermometer_obj.simulator

    def mark(self) -> int:
        with self.cond:
            return len(self.messages)

    def show(self, text: str, hold_s: float = 1.0) -> int:
        mark = self.mark()
        self.push.push(qr_image(text), hold_s=hold_s)
        return mark

    def wait(self, event: str, mark: int = 0, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev, data in self.messages[mark:]:
                    if ev == event and all(data.get(k) == v for k, v in match.items()):
                        return data
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {event} {match} within {timeout} s; got {self.messages[mark:]}")
                self.cond.wait(left)

    def decide(self, text: str, timeout: float = 10.0) -> dict[str, Any]:
        """Show a code and return the decision view it produced."""
        mark = self.show(text)
        view = self.wait("decision", mark, timeout)
        self.push.clear()
        return view

    # -- reading the log --------------------------------------------------------------------------

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Committed events, read like the agent reads them (another connection, read-only)."""
        conn = connect(Path(self.cfg.data_dir) / "events.db", "reader")
        try:
            rows = conn.execute("SELECT body FROM events ORDER BY seq").fetchall()
        finally:
            conn.close()
        out = [json.loads(r[0]) for r in rows]
        return [e for e in out if kind is None or e["kind"] == kind]

    def pin(self, n: int) -> Any:
        return self.pins.pin(n)


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.01)
