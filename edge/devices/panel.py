"""Buttons and LEDs through gpiozero, and terminal keys as the fallback on a desktop.

Buttons and keys never run inference: they post commands (:mod:`teachcam.edge.messages`) through
the ``post`` callable the daemon gives them, and the daemon applies them to the frame it has
just embedded (no second inference). The LEDs are a port (:mod:`teachcam.edge.ports`): they
follow the shown class and blink on an enrollment, whoever asked for it. Semantics:

* class button: a press enrolls one example; held, it keeps enrolling ``hold_rate``
  examples per second until released;
* clear button: a short press undoes the last enrollment; held for ``clear_hold_time``
  seconds, it clears every class.

Debounce, twice: ``bounce_time`` goes to gpiozero (lgpio then filters edges in the kernel on a
Pi), and in software a press counts only when the button has been still — no press and no
release — for ``bounce_time``. A contact that bounces when it is pressed, or when it is let
go 200 ms later (a 2 ms glitch low on release), is one press: one example.
"""

from __future__ import annotations

import logging
import select
import sys
import threading
import time
from collections.abc import Callable

from teachcam.edge.messages import Clear, Enroll, Enrolled, Quit, Undo
from teachcam.edge.ports import Port

log = logging.getLogger(__name__)


class ButtonPanel:
    """One gpiozero Button per class plus an optional clear button."""

    def __init__(self, pins, clear_pin, post: Callable, *, pull_up=True, bounce_time=0.05, hold_time=0.5,
                 clear_hold_time=3.0, pin_factory=None):
        from gpiozero import Button

        self.post = post
        self.bounce_time = bounce_time
        self._last_edge: dict[int, float] = {}  # the last press or release of each button (-1: clear)
        self._clear_press_counts = False
        self._clear_was_held = False
        # a press and the enrollments of its hold share one group (one action for undo), unique across restarts
        self._presses, self._session = 0, f"{time.time():.3f}"
        # While a class button is held, gpiozero calls when_held every hold_time (hold_repeat).
        bounce = bounce_time or None
        self.buttons = [Button(pin, pull_up=pull_up, bounce_time=bounce, hold_time=hold_time, hold_repeat=True,
                               pin_factory=pin_factory) for pin in pins]
        for index, button in enumerate(self.buttons):
            button.when_pressed = lambda _b=None, i=index: self._pressed(i)
            button.when_released = lambda _b=None, i=index: self._edge(i)
            button.when_held = lambda _b=None, i=index: self.post(Enroll(index=i, via="hold", group=self._group(i)))
        self.clear_button = None
        if clear_pin is not None:
            self.clear_button = Button(clear_pin, pull_up=pull_up, bounce_time=bounce, hold_time=clear_hold_time,
                                       pin_factory=pin_factory)
            self.clear_button.when_pressed = lambda _b=None: self._clear_pressed()
            self.clear_button.when_held = lambda _b=None: self._clear_held()
            self.clear_button.when_released = lambda _b=None: self._clear_released()

    @property
    def is_held(self) -> bool:
        """True while any class button is down (the change gate then lets every frame through)."""
        return any(button.is_pressed for button in self.buttons)

    def _edge(self, key: int) -> bool:
        """Record an edge of button ``key``; True when the button had been still for ``bounce_time`` before it."""
        now = time.monotonic()
        still = now - self._last_edge.get(key, -1e9) >= self.bounce_time
        self._last_edge[key] = now
        return still

    def _group(self, index: int) -> str:
        return f"button-{self._session}-{index}-{self._presses}"

    def _pressed(self, index: int) -> None:
        if self._edge(index):
            self._presses += 1
            self.post(Enroll(index=index, via="button", group=self._group(index)))

    def _clear_pressed(self) -> None:
        self._clear_press_counts = self._edge(-1)
        self._clear_was_held = False

    def _clear_held(self) -> None:
        self._clear_was_held = True
        self.post(Clear(via="button"))

    def _clear_released(self) -> None:
        self._edge(-1)
        if self._clear_press_counts and not self._clear_was_held:
            self.post(Undo(via="button"))
        self._clear_press_counts = False

    def close(self) -> None:
        for button in [*self.buttons, self.clear_button]:
            if button is not None:
                button.close()


def _level(confidence: float) -> float:
    """An LED's brightness for a confidence: never below 15 % (a lit LED must look lit), in steps of 1 %."""
    return round(max(0.15, min(1.0, confidence)), 2)


def _shown_confidence(view) -> float:
    """The confidence the LED shows: the view's, or full while smoothing holds a class the frame did not say."""
    return view.confidence if view.label == view.raw_label else 1.0


class LedPanel(Port):
    """One LED per class: the shown class lit (PWM brightness = confidence when the pin can), all
    dark for unknown; a class LED blinks once to acknowledge an enrollment (from any source)."""

    name = "leds"

    def __init__(self, pins, classes=(), *, pwm=True, pin_factory=None):
        from gpiozero import LED, PWMLED
        from gpiozero.exc import PinPWMUnsupported

        self.leds = []
        for pin in pins:
            led = None
            if pwm:
                try:
                    led = PWMLED(pin, pin_factory=pin_factory)
                except PinPWMUnsupported:
                    led = None
            self.leds.append(led or LED(pin, pin_factory=pin_factory))
        self._pwm_class = PWMLED
        self.classes = list(classes)
        self._shown: tuple[int, float] | None = None
        self._blinking: dict[int, float] = {}
        self._blink_until = 0.0

    def _index(self, label: str) -> int | None:
        return self.classes.index(label) if label in self.classes else None

    def view_key(self, view) -> object:
        # what the LEDs show; and whether a blink is on, so that the view after it lights the LED again
        return view.label, _level(_shown_confidence(view)), time.monotonic() < self._blink_until

    def update(self, view, frame=None) -> None:
        self.show(self._index(view.label), _shown_confidence(view))

    def event(self, event) -> None:
        if isinstance(event, Enrolled) and self._index(event.label) is not None:
            self.blink(self._index(event.label))

    def show(self, index: int | None, confidence: float = 1.0) -> None:
        """Light the LED of class ``index`` (None: all dark)."""
        now = time.monotonic()
        level = _level(confidence)
        state = (index, level) if index is not None else None
        if state == self._shown and not self._blinking:
            return
        for i, led in enumerate(self.leds):
            if self._blinking.get(i, 0) > now:
                continue
            self._blinking.pop(i, None)
            target = level if i == index else 0.0
            if isinstance(led, self._pwm_class):
                if led.value != target:
                    led.value = target
            elif led.is_lit != (target > 0):
                led.on() if target > 0 else led.off()
        self._shown = state

    def blink(self, index: int) -> None:
        """Acknowledge an enrollment on the class LED (one short blink, non-blocking)."""
        if 0 <= index < len(self.leds):
            self._blinking[index] = self._blink_until = time.monotonic() + 0.25
            self.leds[index].blink(on_time=0.12, off_time=0.12, n=1, background=True)

    def close(self) -> None:
        for led in self.leds:
            led.close()


class KeyboardControls:
    """Keys on the terminal do what the buttons do: 1-9 enroll, u undo, c clear all, q quit."""

    def __init__(self, post: Callable, classes: int, stream=None):
        self.post = post
        self.classes = classes
        self.stream = stream or sys.stdin
        self._stop = threading.Event()
        self._saved = None
        self._thread = threading.Thread(target=self._run, name="teachcam-keys", daemon=True)

    def start(self) -> KeyboardControls:
        try:
            import termios
            import tty

            fd = self.stream.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (ImportError, OSError, ValueError, AttributeError):
            self._saved = None
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.stream], [], [], 0.2)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            key = self.stream.read(1)
            if not key:
                return
            self.handle(key)

    def handle(self, key: str) -> None:
        if key.isdigit() and 1 <= int(key) <= self.classes:
            self.post(Enroll(index=int(key) - 1, via="key"))
        elif key.lower() == "u":
            self.post(Undo(via="key"))
        elif key.lower() == "c":
            self.post(Clear(via="key"))
        elif key.lower() == "q":
            self.post(Quit(via="key"))

    def close(self) -> None:
        self._stop.set()
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)


def gpio_available() -> bool:
    """True when gpiozero finds a working pin factory (a Raspberry Pi's GPIO chip, or GPIOZERO_PIN_FACTORY)."""
    return pin_factory_problem() is None


def pin_factory_problem() -> str | None:
    """None when gpiozero builds a pin factory, else what went wrong (one line)."""
    import warnings

    from gpiozero import Device

    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # gpiozero warns once per factory it falls back from: keep what they say
        try:
            Device.ensure_pin_factory()
        except Exception as exc:  # BadPinFactory off a Pi, or a driver error on a broken one
            problems = [str(w.message) for w in caught if "Falling back" in str(w.message)]
            return "; ".join(problems[:1] + [str(exc) or type(exc).__name__])
    return None


def read_board_revision(proc: str = "/proc") -> tuple[int | None, str]:
    """The Raspberry Pi board revision the way gpiozero finds it, and where it came from.

    Returns ``(revision, "device-tree" | "cpuinfo")`` on a Pi, ``(None, "not a pi")`` where
    /proc/cpuinfo has no Revision line, and ``(None, "hidden")`` when neither
    /proc/device-tree nor /proc/cpuinfo can be read — what systemd's ``ProcSubset=pid`` does,
    and why gpiozero then builds no pin factory at all.
    """
    import struct

    try:
        with open(f"{proc}/device-tree/system/linux,revision", "rb") as handle:
            return struct.unpack(">L", handle.read(4))[0], "device-tree"
    except OSError:
        pass
    try:
        with open(f"{proc}/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Revision"):
                    value = line.split(":", 1)[1].strip().lower()
                    return int(value[-4:] if value.startswith("100") else value, 16), "cpuinfo"
    except OSError:
        return None, "hidden"
    except ValueError:
        pass
    return None, "not a pi"
