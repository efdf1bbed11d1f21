"""The live demo on any machine: a synthetic camera, scripted button presses, real everything else.

The camera is :class:`teachcam.edge.devices.scenes.DemoSource` (sample photos filmed the way a
hand-held camera would). ``run_demo`` starts the real daemon on it with gpiozero's mock pins, presses the class
buttons while each object is in view (teaching three objects), then shows them again in
another order, with an untaught scene in between, and reports the accuracy and frame rate
it achieved.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from teachcam.edge.config import DEFAULT_STORE
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.scenes import OBJECTS, DemoSource
from teachcam.edge.errors import TeachcamError
from teachcam.edge.link.protocol import MAX_SOCKET_PATH
from teachcam.edge.ports import Port

log = logging.getLogger(__name__)

class Presser(threading.Thread):
    """Presses the class buttons (mock pins, driven low as a finger would) during teaching scenes."""

    def __init__(self, source: DemoSource, pin_factory, pins: dict[str, int], presses: int = 5, on_end=None):
        super().__init__(name="teachcam-demo-presser", daemon=True)
        self.source, self.factory, self.pins, self.presses = source, pin_factory, pins, presses
        self.done: dict[int, int] = {}
        self.on_end = on_end
        self.stop_event = threading.Event()

    def run(self) -> None:
        spacing = max(1, int(self.source.fps * 0.35))
        while not self.stop_event.wait(0.02):
            number = self.source.index
            if number == 0:
                continue
            if number >= self.source.total_frames and self.on_end is not None:
                self.on_end()
                return
            scene_index, scene, offset = self.source.scene_at(number)
            if not scene.teach or number > self.source.total_frames:
                continue
            done = self.done.get(scene_index, 0)
            if done < self.presses and offset >= int(self.source.fps * 0.5) + done * spacing:
                pin = self.factory.pin(self.pins[scene.label])
                pin.drive_low()
                time.sleep(0.06)
                pin.drive_high()
                self.done[scene_index] = done + 1


class Narrator(Port):
    """Prints what a person at the Pi would notice: enrollments, and each change of the shown class."""

    name = "narrator"

    def __init__(self, source: DemoSource, classes: list[str], stream=None):
        self.source, self.leds, self.classes = source, None, classes  # leds: set once the daemon has them
        self.stream = stream or sys.stdout
        self.shown: str | None = None
        self.scored = self.correct = 0
        self.started = time.monotonic()

    def _leds(self) -> str:
        if self.leds is None:
            return ""
        return " LEDs " + "".join("●" if led.value else "○" for led in self.leds.leds)

    def _print(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.1f}s] {text}", file=self.stream, flush=True)

    def update(self, view, frame=None) -> None:
        _, scene, offset = self.source.scene_at(view.frame)
        if not scene.teach and offset >= self.source.fps * 1.0:
            self.scored += 1
            self.correct += view.label == scene.label
        if view.label != self.shown:
            self.shown = view.label
            where = "teaching" if scene.teach else f"showing {scene.label}"
            self._print(f"camera sees {scene.photo:<14} ({where:<17}) → shows {view.label:<8} "
                        f"similarity {view.score:.2f}{self._leds()}")

    def event(self, event) -> None:
        if event.kind == "enrolled":
            self._print(f"button '{event.label}' pressed → enrolled ({event.count} example(s) of it now)")
        elif event.kind in ("error", "camera_trouble"):
            self._print(f"{event.kind}: {event.message}")


def run_demo(config, *, stream=None) -> dict:
    """Run the scripted demo with ``config`` (bundle, precision); return its figures."""
    from gpiozero.pins.mock import MockFactory, MockPWMPin

    stream = stream or sys.stdout
    classes = list(OBJECTS)
    with tempfile.TemporaryDirectory(prefix="teachcam-demo-") as tmp:
        # The demo teaches a store of its own, never the user's default one (unless --store names one).
        store = config.store if config.store != DEFAULT_STORE else str(Path(tmp) / "store")
        config = replace(config, classes=tuple(classes), store=store, mode="knn",
                         buttons=replace(config.buttons, enabled=True, pins=(5, 6, 13)),
                         leds=replace(config.leds, enabled=True, pins=(12, 16, 20)),
                         output=replace(config.output, terminal="off", json="off"))
        source = DemoSource(fps=config.camera.fps)
        factory = MockFactory(pin_class=MockPWMPin)
        narrator = Narrator(source, classes, stream)
        daemon = Daemon(config.validate(), pin_factory=factory, source=source, keyboard=False, stdout=stream,
                        ports=[narrator])
        started = time.monotonic()
        daemon.start()
        narrator.leds = daemon.leds
        presser = Presser(source, factory, dict(zip(classes, config.buttons.pins, strict=True)), on_end=daemon.stop)
        presser.start()
        print(f"demo: {len(classes)} objects to teach ({', '.join(classes)}), buttons on mock GPIO "
              f"{list(config.buttons.pins)}, LEDs on {list(config.leds.pins)}, {daemon.embedder.variant} embedder",
              file=stream, flush=True)
        try:
            daemon.run()
        finally:
            presser.stop_event.set()
            elapsed = time.monotonic() - started
            invoke = daemon.stats.stages.get("invoke", [0])
            figures = {
                "accuracy": narrator.correct / max(1, narrator.scored),
                "scored_frames": narrator.scored,
                "frames": daemon.stats.frames,
                "fps": daemon.stats.frames / max(1e-6, elapsed),
                "invoke_ms": float(np.median(invoke)) * 1e3,
                "enrolled": daemon.stats.enrolled,
                "seconds": elapsed,
                "embedder": daemon.embedder.variant,
                "gate": daemon.gate.counts(),
            }
            daemon.close()
    print(f"\ndemo done in {figures['seconds']:.0f} s: taught {figures['enrolled']} examples by button; "
          f"recognition accuracy {figures['accuracy'] * 100:.1f}% over {figures['scored_frames']} frames "
          f"(untaught scene counted as correct only when shown as unknown); {figures['fps']:.1f} frames/s "
          f"classified (camera runs at {config.camera.fps:.0f}), embedder {figures['invoke_ms']:.1f} ms/frame "
          f"({figures['embedder']}); the model ran on {figures['gate']['embedded']} frames, "
          f"{figures['gate']['gated']} showed an unchanged scene", file=stream, flush=True)
    return figures


def run_web_demo(config, *, port: int = 8080, stream=None) -> int:
    """The daemon on the demo camera (mock pins, a store of its own) and `teachcam web` on 127.0.0.1, until Ctrl-C.

    Raises:
        TeachcamError: the page cannot start (aiohttp missing, the port taken).
    """
    import os
    import signal
    import subprocess

    from gpiozero.pins.mock import MockFactory, MockPWMPin

    stream = stream or sys.stdout
    classes = list(OBJECTS)
    with tempfile.TemporaryDirectory(prefix="teachcam-web-demo-") as tmp:
        socket_path = Path(tmp) / "control.sock"
        if len(os.fsencode(socket_path)) > MAX_SOCKET_PATH:  # a long $TMPDIR
            socket_path = Path("/tmp") / f"teachcam-web-demo-{os.getpid()}.sock"  # the daemon removes it
        store = config.store if config.store != DEFAULT_STORE else str(Path(tmp) / "store")
        config = replace(config, classes=tuple(classes), store=store, mode="knn",
                         buttons=replace(config.buttons, enabled=True, pins=(5, 6, 13)),
                         leds=replace(config.leds, enabled=True, pins=(12, 16, 20)),
                         output=replace(config.output, terminal="off", json="off"),
                         control=replace(config.control, socket=str(socket_path)))
        daemon = Daemon(config.validate(), pin_factory=MockFactory(pin_class=MockPWMPin),
                        source=DemoSource(fps=config.camera.fps), keyboard=False, stdout=stream)
        daemon.start()
        if daemon.control is None:  # the page reaches the daemon only through its socket
            daemon.close()
            raise TeachcamError(f"the demo's control socket {socket_path} did not open (see above)")
        web = subprocess.Popen([sys.executable, "-m", "teachcam.edge.cli", "web", "--host", "127.0.0.1", "--port",
                                str(port), "--token-file", str(Path(tmp) / "web-token"), "--socket", str(socket_path),
                                "--store", store], stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = web.stdout.readline()
        if web.poll() is not None or "serving on" not in line:
            daemon.close()
            raise TeachcamError("the page did not start (see above); is port "
                                f"{port} taken? try `teachcam demo --web --port 8081`")
        url = line.split("open ", 1)[1].strip()
        print(f"demo: the demo camera films {', '.join(classes)} in turn. Open {url}\n"
              "      add a class, hold its button while that object is in view, then watch the label. Ctrl-C stops.",
              file=stream, flush=True)
        previous = {signum: signal.signal(signum, lambda *_: daemon.stop()) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            daemon.run()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            web.send_signal(signal.SIGTERM)
            try:
                web.wait(timeout=10)
            except subprocess.TimeoutExpired:
                web.kill()
            daemon.close()
    return 0
