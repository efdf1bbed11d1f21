"""Where predictions go: the terminal, JSON lines (journal, pipes), a small OLED, a preview window.

Each is a :class:`~teachcam.edge.ports.Port`: ``update(view, frame)`` (classified frames),
``event(event)`` (a typed :mod:`~teachcam.edge.messages` event: enrollments, undo, clear, camera
trouble …) and ``close()``. The daemon puts each behind a mailbox; with none configured the list
is empty (no ``if sink:`` checks anywhere).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

from teachcam.edge.messages import PredictionChanged
from teachcam.edge.ports import Port

log = logging.getLogger(__name__)


@dataclass
class View:
    """What a person should see about the current frame."""

    label: str  # smoothed: what the LEDs show
    raw_label: str
    score: float
    confidence: float
    confidences: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    fps: float = 0.0
    latency_ms: float = 0.0
    frame: int = 0
    mode: str = "knn"


class JsonLinesSink(Port):
    """One JSON object per line: a prediction when the shown label changes, and every event."""

    name = "json"

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._last: str | None = None

    def _write(self, record: dict) -> None:
        try:
            self.stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass

    def update(self, view: View, frame=None) -> None:
        if view.label == self._last:
            return
        self._last = view.label
        record = {"event": "prediction", "time": round(time.time(), 3), **asdict(view)}
        record["confidences"] = {k: round(v, 3) for k, v in view.confidences.items()}
        for key in ("score", "confidence", "fps", "latency_ms"):
            record[key] = round(record[key], 3)
        self._write(record)

    def event(self, event) -> None:
        # predictions are written from the views, above; a notice may hold a secret (the pairing link) meant for
        # the device's own display, not for the journal
        if not isinstance(event, PredictionChanged) and event.kind != "notice":
            self._write(event.as_json())


class TerminalSink(Port):
    """A live view: current class, confidence bars per class, examples per class, FPS, latency."""

    name = "terminal"

    def __init__(self, classes: list[str], mode: str, controls_hint: str, console=None):
        from rich.console import Console
        from rich.live import Live

        self.console = console or Console()
        self.classes = classes
        self.mode = mode
        self.hint = controls_hint
        self.messages: list[str] = []
        self.live = Live(console=self.console, refresh_per_second=8, transient=False)
        self.live.start()
        self._last_draw = 0.0

    def _render(self, view: View):
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        head = Text(f"teachcam · {self.mode}", style="bold")
        head.append(f"   {view.fps:5.1f} fps   {view.latency_ms:5.1f} ms/frame", style="dim")
        table.add_row(head)
        shown = Text("  now: ", style="bold")
        shown.append(view.label, style="bold green" if view.label != "unknown" else "bold yellow")
        shown.append(f"   (similarity {view.score:.2f})" if view.mode == "knn" else f"   ({view.confidence:.0%})",
                     style="dim")
        table.add_row(shown)
        names = list(dict.fromkeys([*self.classes, *view.confidences]))[:12]
        for name in names:
            p = view.confidences.get(name, 0.0)
            bar = "█" * int(round(p * 30))
            count = view.counts.get(name)
            count_text = f"{count:4d} ex" if count is not None else "      "
            table.add_row(Text(f"  {name[:18]:<18} {bar:<30} {p:4.0%}  {count_text}"))
        for message in self.messages[-3:]:
            table.add_row(Text(f"  {message}", style="cyan"))
        table.add_row(Text(f"  {self.hint}", style="dim"))
        return table

    def update(self, view: View, frame=None) -> None:
        now = time.monotonic()
        if now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self.live.update(self._render(view))

    def event(self, event) -> None:
        text = {"enrolled": "enrolled an example of {label} ({count} now)", "undone": "undid the last example of {label}",
                "cleared": "cleared {count} examples", "camera_trouble": "camera: {message}",
                "camera_back": "camera is back", "removed": "removed class {label}",
                "renamed": "renamed {old} to {new}", "class_added": "added class {label}", "error": "error: {message}",
                "paused": "paused: {paused}", "notice": "{text}"}.get(event.kind)
        if text is not None:
            self.messages.append(text.format(**event.as_json()))

    def close(self) -> None:
        self.live.stop()


class OledSink(Port):
    """A small I2C OLED (SSD1306 128×64 by default) through luma.oled: class, confidence, examples.

    A full redraw of an SSD1306 over I2C at the Pi's default 100 kHz takes about 90 ms, so it never
    happens in the main loop: ``update`` only hands the newest view over, and a thread draws it
    when what is shown changed, at most ``max_fps`` times a second. I2C errors (a loose wire:
    ``OSError: [Errno 121] Remote I/O error``) are logged once per kind and retried.
    """

    name = "oled"

    def __init__(self, device=None, *, port: int = 1, address: int = 0x3C, max_fps: float = 4.0):
        from teachcam.edge.errors import ConfigError, first_line

        if device is None:
            try:
                from luma.core.interface.serial import i2c
                from luma.oled.device import ssd1306
            except ImportError:
                raise ConfigError("output.oled needs luma.oled: rerun scripts/install-pi with oled = true in the config "
                                  "(or pip install luma.oled)") from None
            try:
                device = ssd1306(i2c(port=port, address=address))
            except Exception as exc:  # luma's DeviceNotFoundError, DevicePermissionError, DeviceAddressError, OSError
                raise ConfigError(f"the OLED on /dev/i2c-{port} at address {address:#04x} did not start "
                                  f"({first_line(exc)}); check "
                                  f"the wiring and `i2cdetect -y {port}`, and that I2C is on "
                                  "(sudo raspi-config nonint do_i2c 0)") from None
        self.device = device
        self.interval = 1.0 / max_fps
        self.draws = self.errors = 0
        self._queued: tuple | None = None
        self._pending: View | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._last_error: str | None = None
        self._notice: tuple[list[str], float] | None = None  # (lines, until): shown instead of the class
        self._last_view: View | None = None
        self._thread = threading.Thread(target=self._run, name="teachcam-oled", daemon=True)
        self._thread.start()

    def update(self, view: View, frame=None) -> None:
        self._last_view = view
        if self._notice is not None:
            if time.monotonic() < self._notice[1]:
                return  # the notice stays up
            self._notice, self._queued = None, None  # expired: the class again
        shown = (view.label, round(view.confidence, 1), sum(view.counts.values()))
        if shown == self._queued:
            return
        self._queued = shown
        with self._lock:
            self._pending = view
            self._idle.clear()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                view, self._pending = self._pending, None
            if view is None or self._stop.is_set():
                self._idle.set()
                continue
            try:
                self._draw(view)
                self.draws += 1
                self._last_error = None
            except Exception as exc:  # the display must never take the daemon down
                self.errors += 1
                message = f"{type(exc).__name__}: {exc}"
                if message != self._last_error:
                    log.error("OLED: %s; retrying", message)
                    self._last_error = message
                with self._lock:
                    self._pending = self._pending or view  # draw it again after a pause, unless a newer one came
                self._stop.wait(1.0)
                self._wake.set()
                continue
            with self._lock:
                if self._pending is None:
                    self._idle.set()
            self._stop.wait(self.interval)

    def event(self, event) -> None:
        if event.kind == "notice":
            import textwrap

            lines = [part for line in event.text.splitlines() for part in (textwrap.wrap(line, 21) or [""])]
            self._notice = (lines[:6], time.monotonic() + event.seconds)
            with self._lock:
                self._pending = self._last_view or View("", "", 0.0, 0.0)
                self._idle.clear()
            self._wake.set()

    def _draw(self, view: View) -> None:
        from luma.core.render import canvas

        notice = self._notice
        if notice is not None and time.monotonic() < notice[1]:
            with canvas(self.device) as draw:
                for i, line in enumerate(notice[0]):
                    draw.text((0, i * 10), line, fill="white")
            return
        with canvas(self.device) as draw:
            draw.text((0, 0), view.label[:21], fill="white")
            draw.rectangle((0, 20, int(view.confidence * (self.device.width - 1)), 30), outline="white", fill="white")
            draw.text((0, 40), f"{sum(view.counts.values())} examples  {view.fps:.0f} fps", fill="white")

    def wait_drawn(self, timeout: float = 5.0) -> bool:
        """True once every handed-over view has been drawn (or given up on); for tests and shutdown."""
        return self._idle.wait(timeout)

    def close(self) -> None:
        self.wait_drawn(1.0)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
        try:
            self.device.cleanup()
        except Exception as exc:  # luma devices may fail to clear on shutdown; not worth dying for
            log.debug("OLED cleanup failed: %s", exc)


class PreviewSink(Port):
    """An OpenCV window with the label drawn on the frame (only where OpenCV has a GUI)."""

    name = "preview"

    def __init__(self):
        from teachcam.edge.errors import ConfigError

        try:
            import cv2
        except ImportError:
            raise ConfigError("output.preview needs OpenCV with a GUI: pip install opencv-python") from None
        self.cv2 = cv2
        try:
            cv2.namedWindow("teachcam", cv2.WINDOW_NORMAL)
        except cv2.error:
            from teachcam.edge.errors import ConfigError

            raise ConfigError("output.preview needs OpenCV with a GUI (opencv-python, not -headless) and a display") \
                from None

    def update(self, view: View, frame=None) -> None:
        if frame is None:
            return
        image = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2BGR)
        self.cv2.putText(image, f"{view.label} {view.confidence:.0%}", (10, 30), self.cv2.FONT_HERSHEY_SIMPLEX, 1,
                         (0, 255, 0), 2)
        self.cv2.imshow("teachcam", image)
        self.cv2.waitKey(1)

    def close(self) -> None:
        self.cv2.destroyAllWindows()
