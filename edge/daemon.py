"""The device daemon: camera → embedder → KNN/head → smoothing → LEDs, display, stdout. It only wires.

One embedder invocation per frame feeds everything: the prediction, and any enrollment a
button asked for since the previous frame (no second inference). SIGTERM/SIGINT stop
cleanly (every enrollment is already durable when its LED blinks); SIGHUP reloads the
config and the bundle without losing enrollments. Under systemd (``Type=notify``) it says
READY=1 once the first frame is classified and pings the watchdog each time a frame is classified
(and while a changed embedder re-embeds the store) — never while the camera delivers nothing.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from teachcam.edge.bundle import load_bundle
from teachcam.edge.camera import FrameGrabber, make_source
from teachcam.edge.config import DaemonConfig, load_config
from teachcam.edge.controls import ButtonPanel, Command, KeyboardControls, LedPanel, gpio_available
from teachcam.edge.display import JsonLinesSink, OledSink, PreviewSink, Sink, TerminalSink, View
from teachcam.edge.errors import BundleError, ConfigError, TeachcamError
from teachcam.edge.knn import KNNConfig
from teachcam.edge.models import Classifier, Embedder, Head, LogitsHead
from teachcam.edge.preprocess import Preprocessor
from teachcam.edge.smoothing import Smoother
from teachcam.edge.teach import Teacher

log = logging.getLogger(__name__)


def keep_last_good(bundle: Path, target: Path) -> None:
    """Copy a bundle that just loaded and verified to ``target`` (atomically), unless it is already there."""
    import shutil

    manifest = (bundle / "manifest.json").read_bytes()
    if (target / "manifest.json").is_file() and (target / "manifest.json").read_bytes() == manifest:
        return
    staging = target.with_name(f".{target.name}.partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(bundle, staging)
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        log.info("kept a copy of bundle %s as the last good bundle (%s)", bundle, target)
    except OSError as exc:
        log.warning("could not keep a copy of the bundle at %s (%s); a bad bundle later would stop the daemon",
                    target, exc)


class Notifier:
    """systemd's sd_notify (through sdnotify); silent when not run by systemd."""

    def __init__(self):
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        self._last_ping = 0.0

    def notify(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ping(self) -> None:
        now = time.monotonic()
        if now - self._last_ping >= 1.0:
            self._last_ping = now
            self.notify("WATCHDOG=1")


@dataclass
class Stats:
    """Per-stage timings (seconds) of the last frames, and frame counts."""

    frames: int = 0
    enrolled: int = 0
    started: float = field(default_factory=time.monotonic)
    first_prediction: float | None = None
    stages: dict[str, list[float]] = field(default_factory=dict)
    keep: int = 2000

    def add(self, stage: str, seconds: float) -> None:
        values = self.stages.setdefault(stage, [])
        values.append(seconds)
        if len(values) > self.keep:
            del values[: len(values) - self.keep]


class Daemon:
    """Everything the device runs, wired from one :class:`DaemonConfig`."""

    def __init__(self, config: DaemonConfig, *, config_path: str | Path | None = None, pin_factory=None,
                 sinks: list[Sink] | None = None, source=None, notifier=None, keyboard: bool | None = None,
                 stdout=None):
        self.config = config
        self.config_path = config_path
        self.pin_factory = pin_factory
        self.extra_sinks = list(sinks or [])
        self.source_override = source
        self.notifier = notifier or Notifier()
        self.keyboard_wanted = keyboard
        self.stdout = stdout or sys.stdout
        self.commands: queue.Queue[Command] = queue.Queue()
        self.stats = Stats()
        self.smoother = Smoother(config.smoothing)
        self._stop = False
        self._reload = False
        self.ready = False
        self.sinks: list[Sink] = []
        self.buttons = self.leds = self.keys = self.grabber = self.teacher = self.head = None
        self.control_mode = "none"

    # -- building ------------------------------------------------------------------------------------
    def start(self) -> Daemon:
        """Load the bundle and store, open the camera, buttons, LEDs and outputs.

        Raises:
            TeachcamError: a bad bundle, store, config or missing hardware the config asks for.
        """
        self._load_models()
        self._open_controls()
        self._open_outputs()
        self._open_camera()
        return self

    def _load_bundle(self):
        """The configured bundle, or the kept last good one when the configured one is refused."""
        config = self.config
        try:
            bundle = load_bundle(config.bundle)
        except TeachcamError as exc:
            fallback = Path(config.last_good_bundle) if config.last_good_bundle else None
            if fallback is None or not (fallback / "manifest.json").is_file():
                raise
            bundle = load_bundle(fallback)  # raises too if the kept copy is also bad
            log.error("bundle %s refused: %s — running on the last good bundle (%s, built %s)", config.bundle, exc,
                      fallback, bundle.manifest.get("created", "?"))
            return bundle
        if config.last_good_bundle:
            keep_last_good(bundle.path, Path(config.last_good_bundle))
        return bundle

    def _load_models(self) -> None:
        config = self.config
        bundle = self._load_bundle()
        preprocess = Preprocessor.from_manifest(bundle.preprocessing)  # set only once everything has loaded
        if bundle.standalone:
            self._load_standalone(bundle, preprocess)
            return
        embedder = Embedder.create(bundle, config.precision, num_threads=config.threads)
        knn = KNNConfig(k=config.knn.k) if config.knn.threshold is None else KNNConfig(k=config.knn.k,
                                                                                       threshold=config.knn.threshold)
        head = None
        if config.mode in ("head", "imagenet"):
            name = "imagenet" if config.mode == "imagenet" else config.head
            head = Head.create(bundle, name, embedder)
        # Only one holder of the store lock at a time: a reload hands the store over to the new models
        # (re-embedding if the embedder changed) and takes it back for the old ones if that fails.
        previous = self.teacher
        if previous is not None:
            previous.close()
        options = {"config": knn, "cap": config.knn.cap, "cap_policy": config.knn.cap_policy}
        try:
            # Re-embedding a large store after a bundle change can outlast WatchdogSec on a Pi: it pings as it goes.
            teacher = Teacher.open(config.store, embedder, progress=self.notifier.ping, **options)
        except TeachcamError:
            if previous is not None:
                self.teacher = Teacher.open(previous.store.path, self.embedder, config=previous.config,
                                            cap=previous.cap, cap_policy=previous.cap_policy)
            raise
        self.bundle, self.embedder, self.teacher, self.head = bundle, embedder, teacher, head
        self.preprocess = preprocess
        log.info("bundle %s: %s embedder, mode %s, store %s (%d examples)", config.bundle, embedder.variant,
                 config.mode, config.store, len(teacher))

    def _load_standalone(self, bundle, preprocess: Preprocessor) -> None:
        """A standalone classifier (the small CNN) takes the embedder's place; there is nothing to teach."""
        config = self.config
        if config.mode != "head":
            raise BundleError(f"{config.bundle} is a standalone classifier (small CNN) with no embedder: run it with "
                              f"mode = \"head\" in the config or --mode head (mode {config.mode} needs an embedder)")
        classifier = Classifier.create(bundle, config.precision, num_threads=config.threads)
        if self.teacher is not None:  # a reload from an embedder bundle: the store stays on disk, untouched
            self.teacher.close()
        self.bundle, self.embedder, self.teacher = bundle, classifier, None
        self.head = LogitsHead(classifier.name, classifier.labels)
        self.preprocess = preprocess
        log.info("bundle %s: standalone %s classifier %r (%d classes), mode head; the store is not used",
                 config.bundle, classifier.variant, classifier.name, len(classifier.labels))

    def _open_controls(self) -> None:
        config = self.config
        wants_gpio = config.buttons.enabled or config.leds.enabled
        has_gpio = self.pin_factory is not None or (wants_gpio and gpio_available())
        if has_gpio and config.buttons.enabled:
            self.buttons = ButtonPanel(config.buttons.pins, config.buttons.clear_pin, self.commands,
                                       pull_up=config.buttons.pull_up, bounce_time=config.buttons.bounce_time,
                                       hold_time=config.buttons.hold_time,
                                       clear_hold_time=config.buttons.clear_hold_time, pin_factory=self.pin_factory)
            self.control_mode = "gpio"
        if has_gpio and config.leds.enabled and config.leds.pins:
            self.leds = LedPanel(config.leds.pins, pwm=config.leds.pwm, pin_factory=self.pin_factory)
        keyboard = self.keyboard_wanted
        if keyboard is None:
            keyboard = self.buttons is None and sys.stdin.isatty()
        if keyboard:
            self.keys = KeyboardControls(self.commands, len(config.classes)).start()
            self.control_mode = "gpio+keys" if self.buttons else "keys"
        hint = {"gpio": "buttons: one per class (hold to keep adding); clear: press = undo, hold 3 s = clear all",
                "keys": f"keys: 1-{len(config.classes)} add an example · u undo · c clear all · q quit",
                "none": "no buttons and no terminal: enroll with `teachcam enroll`"}
        self.controls_hint = hint.get(self.control_mode, hint["gpio"] + " · " + hint["keys"])
        wanted = config.buttons.enabled and self.control_mode == "none"  # asked for buttons, got nothing
        (log.warning if wanted else log.info)("controls: %s", self.controls_hint)

    def _open_outputs(self) -> None:
        output = self.config.output
        tty = self.stdout.isatty()
        sinks: list[Sink] = []
        if output.terminal == "on" or (output.terminal == "auto" and tty):
            sinks.append(TerminalSink(list(self.config.classes), self.config.mode, self.controls_hint))
        if output.json == "on" or (output.json == "auto" and not tty):
            sinks.append(JsonLinesSink(self.stdout))
        if output.oled:
            sinks.append(OledSink(port=output.oled_i2c_port, address=output.oled_i2c_address))
        if output.preview:
            sinks.append(PreviewSink())
        self.sinks = sinks + self.extra_sinks

    def _open_camera(self) -> None:
        camera = self.config.camera
        # The low-resolution camera stream is asked for at the size the bundle resizes to (shorter side),
        # but not below 64 rows (a small CNN's 28 px: the ISP scales to 64, the CPU does the rest — cheap).
        shorter = max(self.preprocess.shorter_side, 64)
        lores = (2 * round(shorter * camera.width / camera.height / 2), shorter)
        source = self.source_override or make_source(camera.source, width=camera.width, height=camera.height,
                                                     loop=camera.loop, fps=camera.fps, inference_size=lores)
        self.grabber = FrameGrabber(source, fps=camera.fps, prepare=self.preprocess).start()

    # -- running -------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())

    def stop(self) -> None:
        self._stop = True

    def request_reload(self) -> None:
        self._reload = True

    def run(self) -> int:
        """Classify frames until stopped (or ``config.frames`` frames). Returns the exit code."""
        # The capture thread and the main loop hand frames over through the GIL; the default 5 ms switch
        # interval would let either wait that long for the other at every call into the interpreter.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(0.0005)
        try:
            return self._loop()
        finally:
            sys.setswitchinterval(switch_interval)

    def _loop(self) -> int:
        last = 0
        self.notifier.notify(f"STATUS=starting: {self.config.camera.source}")
        while not self._stop:
            if self._reload:
                self._reload = False
                self.reload()
            frame = self.grabber.latest(after=last, timeout=1.0)
            if frame is None:
                self._apply_commands(None, None)
                if self.grabber.ended:
                    log.info("the camera source has no more frames")
                    break
                continue
            last = frame.number
            self.step(frame.image, frame.captured, frame.number, frame.pixels)
            # The watchdog is fed only while frames advance: a camera that stalls (or a capture thread that
            # hangs in the driver) stops the pings, and systemd restarts the service after WatchdogSec.
            self.notifier.ping()
            if self.config.frames is not None and self.stats.frames >= self.config.frames:
                break
        return 0

    def step(self, image: np.ndarray, captured: float | None = None, number: int | None = None,
             pixels: np.ndarray | None = None) -> View:
        """Embed one frame, apply pending button commands to it, predict, and show the result.

        ``pixels``: the frame already preprocessed (the capture thread does it when it can).
        """
        t0 = time.perf_counter()
        pre = self.preprocess
        if pixels is None or pixels.shape != (pre.crop_height, pre.crop_width, pre.channels):
            pixels = self.preprocess(image)
        t1 = time.perf_counter()
        embedding = self.embedder.embed(pixels)
        t2 = time.perf_counter()
        self._apply_commands(embedding, pixels)
        label, score, confidence, confidences = self._predict(embedding)
        t3 = time.perf_counter()
        shown = self.smoother.update(label)
        counts = self.teacher.counts() if self.teacher is not None else {}
        view = View(shown, label, score, confidence, confidences, counts, self._fps(),
                    (time.monotonic() - captured) * 1e3 if captured else (t3 - t0) * 1e3,
                    number if number is not None else self.stats.frames + 1, self.config.mode)
        if self.leds is not None:
            index = self._class_index(shown)
            self.leds.show(index, confidence if shown == label else 1.0)
        for sink in self.sinks:
            sink.update(view, image)
        t4 = time.perf_counter()
        for stage, seconds in (("preprocess", t1 - t0), ("invoke", t2 - t1), ("classify", t3 - t2),
                               ("output", t4 - t3)):
            self.stats.add(stage, seconds)
        self.stats.frames += 1
        if not self.ready:
            self.ready = True
            self.stats.first_prediction = time.monotonic()
            self.notifier.notify("READY=1")
            self.notifier.notify(f"STATUS=classifying frames from {self.config.camera.source}")
        return view

    def _fps(self) -> float:
        invoke = self.stats.stages.get("invoke")
        if not invoke:
            return 0.0
        recent = [sum(v[-30:]) / len(v[-30:]) for v in self.stats.stages.values() if v]
        return 1.0 / max(sum(recent), 1e-6)

    def _class_index(self, label: str) -> int | None:
        try:
            return list(self.config.classes).index(label)
        except ValueError:
            return None

    def _predict(self, embedding: np.ndarray):
        if self.head is not None:
            probabilities = self.head.probabilities(embedding)
            best = int(np.argmax(probabilities))
            order = np.argsort(-probabilities)[:5]
            confidences = {self.head.labels[i]: float(probabilities[i]) for i in order}
            return self.head.labels[best], float(probabilities[best]), float(probabilities[best]), confidences
        prediction = self.teacher.predict(embedding)
        return prediction.label, prediction.score, prediction.confidence, prediction.confidences

    def _apply_commands(self, embedding: np.ndarray | None, pixels: np.ndarray | None) -> None:
        enrolled_this_frame: set[int] = set()
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._apply(command, embedding, pixels, enrolled_this_frame)
            except TeachcamError as exc:  # a full disk or a bad name must not stop the camera
                log.error("%s failed: %s", command.kind, exc)
                self._event("error", message=str(exc))

    def _apply(self, command: Command, embedding, pixels, enrolled_this_frame: set[int]) -> None:
        if command.kind == "quit":
            self.stop()
        elif self.teacher is None:
            raise BundleError(f"{command.kind}: the bundle is a standalone classifier and cannot be taught by example")
        elif command.kind == "enroll":
            if embedding is None:
                log.warning("no camera frame yet: nothing to enroll")
                return
            if command.index in enrolled_this_frame or not 0 <= command.index < len(self.config.classes):
                return
            label = self.config.classes[command.index]
            self.teacher.add(label, embedding, pixels, source=command.source)  # durable when it returns
            enrolled_this_frame.add(command.index)
            self.stats.enrolled += 1
            if self.leds is not None:
                self.leds.blink(command.index)  # the acknowledgement: the example is on disk
            self._event("enrolled", label=label, count=self.teacher.counts().get(label, 0), via=command.source)
        elif command.kind == "undo":
            example = self.teacher.undo_last()
            if example is not None:
                self._event("undo", label=example.label, count=self.teacher.counts().get(example.label, 0))
        elif command.kind == "clear":
            count = self.teacher.clear()
            self.smoother.reset()
            self._event("cleared", count=count)

    def _event(self, kind: str, **data) -> None:
        log.info("%s %s", kind, data)
        for sink in self.sinks:
            sink.event(kind, **data)

    def reload(self) -> None:
        """SIGHUP: re-read the config and the bundle; on any error keep running as before."""
        try:
            new = load_config(self.config_path) if self.config_path else self.config
        except ConfigError as exc:
            log.error("reload: %s; keeping the running configuration", exc)
            return
        old = self.config
        self.config = new
        try:
            self._load_models()
        except TeachcamError as exc:
            self.config = old
            log.error("reload: %s; keeping the running bundle", exc)
            return
        if new.camera != old.camera:
            self.grabber.stop()
            self._open_camera()
        else:
            self.grabber.prepare = self.preprocess
        self.smoother = Smoother(new.smoothing)
        examples = len(self.teacher) if self.teacher is not None else 0
        log.warning("reloaded the configuration and the bundle (%d examples kept)", examples)
        self._event("reloaded", examples=examples)

    def close(self) -> None:
        self.notifier.notify("STOPPING=1")
        for part in (self.grabber,):
            if part is not None:
                part.stop()
        for part in (self.keys, self.buttons, self.leds, *self.sinks):
            if part is not None:
                try:
                    part.close()
                except Exception as exc:  # closing hardware on the way out must not hide the exit status
                    log.debug("closing %s failed: %s", part, exc)
        if self.teacher is not None:
            self.teacher.close()
