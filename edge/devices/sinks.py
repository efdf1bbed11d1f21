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
import textwrap
import time
from dataclasses import asdict

from teachcam.edge.errors import ConfigError, first_line
from teachcam.edge.messages import PredictionChanged
from teachcam.edge.ports import Port, View

log = logging.getLogger(__name__)


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

    def view_key(self, view: View) -> object:
        return view.label

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

    def _render(self, view: View):
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 1))
        head = Text(f"teachcam · {self.mode}", style="bold")
        head.append(f"   model {view.fps:5.1f} fps   {view.latency_ms:5.1f} ms/frame", style="dim")
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

    view_interval = 0.1  # ten redraws a second are plenty for a terminal

    def update(self, view: View, frame=None) -> None:
        self.live.update(self._render(view))

    def event(self, event) -> None:
        text = {"enrolled": "enrolled an example of {label} ({count} now)", "undone": "undid: {text}",
                "region": "focus region: {region}",
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

    A full redraw of an SSD1306 over I2C at the Pi's default 100 kHz takes about 90 ms, so it never happens in the
    main loop: its :class:`~teachcam.edge.ports.Mailbox` thread draws, at most ``max_fps`` times a second and only
    when what is shown changed (:meth:`view_key`). I2C errors (a loose wire: ``OSError: [Errno 121] Remote I/O
    error``) are the mailbox's to handle: logged once per kind, counted, and the next view is drawn after a rest.
    """

    name = "oled"

    def __init__(self, device=None, *, port: int = 1, address: int = 0x3C, max_fps: float = 4.0):
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
        self.view_interval = 1.0 / max_fps
        self.draws = 0
        self._notice_until = 0.0  # time.monotonic() until which a notice stays up instead of the class

    def view_key(self, view: View) -> object:
        return (view.label, round(view.confidence, 1), sum(view.counts.values()),
                time.monotonic() < self._notice_until)

    def update(self, view: View, frame=None) -> None:
        if time.monotonic() < self._notice_until:
            return  # the notice stays up
        from luma.core.render import canvas

        with canvas(self.device) as draw:
            draw.text((0, 0), view.label[:21], fill="white")
            draw.rectangle((0, 20, int(view.confidence * (self.device.width - 1)), 30), outline="white", fill="white")
            draw.text((0, 40), f"{sum(view.counts.values())} examples  {view.fps:.0f} fps", fill="white")
        self.draws += 1

    def event(self, event) -> None:
        if event.kind != "notice":
            return
        from luma.core.render import canvas

        lines = [part for line in event.text.splitlines() for part in (textwrap.wrap(line, 21) or [""])]
        self._notice_until = time.monotonic() + event.seconds
        with canvas(self.device) as draw:
            for i, line in enumerate(lines[:6]):
                draw.text((0, i * 10), line, fill="white")
        self.draws += 1

    def close(self) -> None:
        try:
            self.device.cleanup()
        except Exception as exc:  # luma devices may fail to clear on shutdown; not worth dying for
            log.debug("OLED cleanup failed: %s", exc)


class PreviewSink(Port):
    """An OpenCV window with the label drawn on the frame (only where OpenCV has a GUI)."""

    name = "preview"

    def __init__(self):
        try:
            import cv2
        except ImportError:
            raise ConfigError("output.preview needs OpenCV with a GUI: pip install opencv-python") from None
        self.cv2 = cv2
        try:
            cv2.namedWindow("teachcam", cv2.WINDOW_NORMAL)
        except cv2.error:
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
