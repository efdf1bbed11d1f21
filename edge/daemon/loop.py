"""The device daemon: camera → embedder → KNN/head → smoothing → ports (LEDs, display, stdout, control socket).

One embedder invocation per frame feeds everything: the prediction, and any enrollment a
button asked for since the previous frame (no second inference). Every input — buttons, keys,
the control socket — posts typed commands (:mod:`teachcam.edge.messages`) with ``post``; the main
loop is the only code that applies them, and answers each one through its ``reply`` callable.
Every output is a port behind a bounded mailbox (:mod:`teachcam.edge.ports`): none can stall the loop. SIGTERM/SIGINT stop
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from teachcam.edge import messages as m
from teachcam.edge.config import DaemonConfig, load_config
from teachcam.edge.daemon.gate import ChangeGate, signature
from teachcam.edge.daemon.smoothing import Smoother
from teachcam.edge.devices.camera import FrameGrabber, make_source
from teachcam.edge.devices.health import health_fields
from teachcam.edge.devices.panel import ButtonPanel, KeyboardControls, LedPanel, gpio_available
from teachcam.edge.devices.sinks import JsonLinesSink, OledSink, PreviewSink, TerminalSink, View
from teachcam.edge.errors import BundleError, ConfigError, StoreError, TeachcamError
from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Classifier, Embedder, Head, LogitsHead
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.ports import Mailbox, Port
from teachcam.edge.teaching import insight
from teachcam.edge.teaching.knn import KNNConfig
from teachcam.edge.teaching.teacher import Teacher

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


STATS_INTERVAL = 10.0  # seconds between Stats events


class Daemon:
    """Everything the device runs, wired from one :class:`DaemonConfig`."""

    def __init__(self, config: DaemonConfig, *, config_path: str | Path | None = None, pin_factory=None,
                 ports: list[Port] | None = None, source=None, notifier=None, keyboard: bool | None = None,
                 stdout=None):
        self.config = config
        self.config_path = config_path
        self.pin_factory = pin_factory
        self.extra_ports = list(ports or [])
        self.source_override = source
        self.notifier = notifier or Notifier()
        self.keyboard_wanted = keyboard
        self.stdout = stdout or sys.stdout
        self.commands: queue.Queue[tuple[m.Command, object]] = queue.Queue()
        self.stats = Stats()
        self.smoother = Smoother(config.smoothing)
        self._stop = False
        self._reload = False
        self.ready = False
        self.paused = False
        self.mailboxes: list[Mailbox] = []
        self._kept: list[Mailbox] = []  # the mailboxes a reload keeps (control socket, ports handed in)
        self.buttons = self.leds = self.keys = self.grabber = self.teacher = self.head = self.control = None
        self.last_embedding = None
        self._insight: insight.StoreInsight | None = None
        self.source = None
        self.control_mode = "none"
        self.last_frame: np.ndarray | None = None
        self._view: View | None = None  # the last view made: a gated frame shows it again
        self._shown: str | None = None
        self._camera_errors = 0
        self._camera_trouble = False
        self._next_stats = time.monotonic() + STATS_INTERVAL

    def post(self, command: m.Command, reply=None) -> None:
        """Ask the main loop to apply ``command`` (any thread). ``reply(result)`` is called from the main loop
        with a dict, or with the :class:`TeachcamError` that refused the command."""
        self.commands.put((command, reply))
        if not isinstance(command, m.Enroll) and self.grabber is not None:
            # Applied now rather than at the next frame (a slow or gated camera would delay every socket
            # reply by a frame period); an enrollment waits for the next frame, which it uses.
            self.grabber.wake()

    # -- building ------------------------------------------------------------------------------------
    def start(self) -> Daemon:
        """Load the bundle and store, open the camera, buttons, LEDs and outputs.

        Raises:
            TeachcamError: a bad bundle, store, config or missing hardware the config asks for.
        """
        self._load_models()
        self._open_controls()
        self.source = self._make_source()  # before the outputs: the screen draws on the camera's own preview
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
            self.buttons = ButtonPanel(config.buttons.pins, config.buttons.clear_pin, self.post,
                                       pull_up=config.buttons.pull_up, bounce_time=config.buttons.bounce_time,
                                       hold_time=config.buttons.hold_time,
                                       clear_hold_time=config.buttons.clear_hold_time, pin_factory=self.pin_factory)
            self.control_mode = "gpio"
        if has_gpio and config.leds.enabled and config.leds.pins:
            self.leds = LedPanel(config.leds.pins, list(config.classes), pwm=config.leds.pwm,
                                 pin_factory=self.pin_factory)
        keyboard = self.keyboard_wanted
        if keyboard is None:
            keyboard = self.buttons is None and sys.stdin.isatty()
        if keyboard:
            self.keys = KeyboardControls(self.post, len(config.classes)).start()
            self.control_mode = "gpio+keys" if self.buttons else "keys"
        hint = {"gpio": "buttons: one per class (hold to keep adding); clear: press = undo, hold 3 s = clear all",
                "keys": f"keys: 1-{len(config.classes)} add an example · u undo · c clear all · q quit",
                "none": "no buttons and no terminal: enroll with `teachcam enroll` (through the control socket)"}
        self.controls_hint = hint.get(self.control_mode, hint["gpio"] + " · " + hint["keys"])
        wanted = config.buttons.enabled and self.control_mode == "none"  # asked for buttons, got nothing
        (log.warning if wanted else log.info)("controls: %s", self.controls_hint)

    def _open_outputs(self) -> None:
        """The ports, from the config, each behind its own mailbox (the LEDs too, and the control socket)."""
        output, control = self.config.output, self.config.control
        tty = self.stdout.isatty()
        ports: list[Port] = []
        if output.terminal == "on" or (output.terminal == "auto" and tty):
            ports.append(TerminalSink(list(self.config.classes), self.config.mode, self.controls_hint))
        if output.json == "on" or (output.json == "auto" and not tty):
            ports.append(JsonLinesSink(self.stdout))
        if output.oled:
            ports.append(OledSink(port=output.oled_i2c_port, address=output.oled_i2c_address))
        if output.preview:
            ports.append(PreviewSink())
        if output.screen:
            from teachcam.edge.devices.screen import ScreenError, ScreenPort, open_backend

            try:
                backend = open_backend(self.source, output.screen_device, output.screen_max_fps)
                runs_on = {"edgetpu": "Edge TPU", "xnnpack": "CPU"}.get(self.embedder.kernels, "CPU (no XNNPACK)")
                ports.append(ScreenPort(backend, list(self.config.classes), f"{self.embedder.variant} · {runs_on}"))
                log.info("screen: %s", backend.name)
            except ScreenError as exc:  # no screen: one line, and the daemon runs on without it
                log.error("screen: %s; running without it", exc)
        if self.leds is not None:
            ports.append(self.leds)
        if not self._kept:  # the control socket and ports handed in stay open across a reload
            if control.enabled:
                from teachcam.edge.link.server import ControlServer

                try:
                    self.control = ControlServer(control.socket or None, self.post, preprocess=lambda: self.preprocess,
                                                 group=control.group, preview_size=control.preview_max_size,
                                                 preview_fps=control.preview_max_fps).start()
                except TeachcamError as exc:  # the camera, buttons and LEDs work without it
                    log.error("control socket: %s; running without it (teachcam enroll/status cannot reach "
                              "this daemon)", exc)
            self._kept = [Mailbox(port) for port in [*([self.control] if self.control else []), *self.extra_ports]]
        # A screen needs no more than ~20 views a second: it is not even woken for the others.
        self.mailboxes = [Mailbox(port, view_interval=0.05 if port.name == "screen" else 0.0)
                          for port in ports] + self._kept

    def _make_source(self):
        camera = self.config.camera
        # The low-resolution camera stream is asked for at the size the bundle resizes to (shorter side),
        # but not below 64 rows (a small CNN's 28 px: the ISP scales to 64, the CPU does the rest — cheap).
        shorter = max(self.preprocess.shorter_side, 64)
        lores = (2 * round(shorter * camera.width / camera.height / 2), shorter)
        return self.source_override or make_source(camera.source, width=camera.width, height=camera.height,
                                                   loop=camera.loop, fps=camera.fps, inference_size=lores)

    def _open_camera(self) -> None:
        camera = self.config.camera
        source = self.source
        self.gate = ChangeGate(camera.gate, camera.gate_max_interval, camera.max_inference_fps)
        summarize = signature if self.gate.enabled else None
        self.grabber = FrameGrabber(source, fps=camera.fps, prepare=self.preprocess, summarize=summarize).start()

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
            self._watch_camera()
            if time.monotonic() >= self._next_stats:
                self._next_stats = time.monotonic() + STATS_INTERVAL
                self._event(m.Stats(**self._stats_fields()))
            frame = self.grabber.latest(after=last, timeout=0.2 if self.paused else 1.0)
            if frame is None or self.paused:
                if frame is not None:
                    last, self.last_frame = frame.number, frame.image
                    self.notifier.ping()  # paused on purpose, camera alive
                self._apply_commands(None)
                if self.grabber.ended:
                    log.info("the camera source has no more frames")
                    break
                continue
            last = frame.number
            now = time.monotonic()
            if self._view is not None and not self.gate.should_embed(frame.signature, now, must=self._frame_needed()):
                self._reshow(frame)  # the scene has not changed since the last embedded frame: no invoke
            else:
                self.step(frame.image, frame.captured, frame.number, frame.pixels)
                self.gate.did_embed(frame.signature, now)
            # The watchdog is fed only while frames advance: a camera that stalls (or a capture thread that
            # hangs in the driver) stops the pings, and systemd restarts the service after WatchdogSec.
            self.notifier.ping()
            if self.config.frames is not None and self.stats.frames >= self.config.frames:
                break
        return 0

    def _reshow(self, frame) -> None:
        """A frame the gate spared: the last prediction stands, pending commands apply, and the ports still
        get the frame (a live view goes on; the LEDs and the shown class stay)."""
        self.last_frame = frame.image
        self._apply_commands(None)
        self.stats.frames += 1
        self._show(replace(self._view, frame=frame.number, latency_ms=(time.monotonic() - frame.captured) * 1e3),
                   frame.image)

    def _show(self, view: View, image: np.ndarray) -> None:
        self._view = view
        for mailbox in self.mailboxes:
            mailbox.offer_view(view, image)

    def _frame_needed(self) -> bool:
        """An enrollment waits for this frame, or a class button is held: the gate must let it through."""
        if self.buttons is not None and self.buttons.is_held:
            return True
        with self.commands.mutex:  # button and socket threads append meanwhile: never iterate it unlocked
            return any(isinstance(command, m.Enroll) for command, _ in self.commands.queue)

    def _watch_camera(self) -> None:
        """Camera trouble (and its end) becomes an event every port receives, not only a log line."""
        errors = self.grabber.errors
        if errors > self._camera_errors and not self._camera_trouble:
            self._camera_trouble = True
            self._event(m.CameraTrouble(message=self.grabber.last_error or "camera error"))
        elif self._camera_trouble and self.grabber.last_frame_time > self.grabber.last_error_time:
            self._camera_trouble = False
            self._event(m.CameraBack(source=self.config.camera.source))
        self._camera_errors = errors

    def step(self, image: np.ndarray, captured: float | None = None, number: int | None = None,
             pixels: np.ndarray | None = None) -> View:
        """Embed one frame, apply pending commands to it, predict, and show the result on every port.

        ``pixels``: the frame already preprocessed (the capture thread does it when it can).
        """
        t0 = time.perf_counter()
        pre = self.preprocess
        if pixels is None or pixels.shape != (pre.crop_height, pre.crop_width, pre.channels):
            pixels = self.preprocess(image)
        t1 = time.perf_counter()
        embedding = self.embedder.embed(pixels)
        t2 = time.perf_counter()
        self.last_frame, self.last_embedding = image, embedding
        self._apply_commands((embedding, pixels))
        label, score, confidence, confidences = self._predict(embedding)
        t3 = time.perf_counter()
        shown = self.smoother.update(label)
        counts = self.teacher.counts() if self.teacher is not None else {}
        view = View(shown, label, score, confidence, confidences, counts, self._fps(),
                    (time.monotonic() - captured) * 1e3 if captured else (t3 - t0) * 1e3,
                    number if number is not None else self.stats.frames + 1, self.config.mode)
        if shown != self._shown:
            self._shown = shown
            self._event(m.PredictionChanged(label=shown, raw_label=label, score=round(score, 4),
                                            confidence=round(confidence, 4),
                                            confidences={k: round(v, 4) for k, v in confidences.items()},
                                            counts=counts), log_it=False)
        self._show(view, image)
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

    def _predict(self, embedding: np.ndarray):
        if self.head is not None:
            probabilities = self.head.probabilities(embedding)
            best = int(np.argmax(probabilities))
            order = np.argsort(-probabilities)[:5]
            confidences = {self.head.labels[i]: float(probabilities[i]) for i in order}
            return self.head.labels[best], float(probabilities[best]), float(probabilities[best]), confidences
        prediction = self.teacher.predict(embedding)
        return prediction.label, prediction.score, prediction.confidence, prediction.confidences

    # -- commands: the one place they are applied -----------------------------------------------------
    def _apply_commands(self, current: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Apply the commands queued so far. ``current``: this frame's (embedding, pixels), or None (paused, or no
        new frame): an enrollment then embeds the last frame itself. A command posted meanwhile — a client that
        sends its next enrollment as soon as it has this one's reply — waits for the next call: were it taken now,
        it would share this frame and be skipped as "same frame"."""
        enrolled_this_frame: set[str] = set()
        for _ in range(self.commands.qsize()):
            try:
                command, reply = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                result = self._apply(command, current, enrolled_this_frame)
            except TeachcamError as exc:  # a full disk or a bad name must not stop the camera
                log.error("%s failed: %s", command.op, exc)
                self._event(m.Error(message=str(exc), op=command.op), log_it=False)
                result = exc
            except Exception as exc:  # a bug in one command must not stop the camera either
                log.error("%s failed: internal error %s: %s (please report it)", command.op, type(exc).__name__, exc)
                log.debug("internal error applying %r", command, exc_info=True)
                result = TeachcamError(f"{command.op}: internal error ({type(exc).__name__}); the daemon carries on")
            if reply is not None:
                try:
                    reply(result)
                except Exception as exc:  # a client that went away must not stop the camera
                    log.debug("reply to %s failed: %s", command.op, exc)

    def _frame_for_enrollment(self, current):
        if current is not None:
            return current
        if self.last_frame is None:
            raise StoreError("no camera frame yet: nothing to enroll (is the camera working?)")
        pixels = self.preprocess(self.last_frame)
        return self.embedder.embed(pixels), pixels

    def _teacher(self, command: m.Command):
        if self.teacher is None:
            raise BundleError(f"{command.op}: the bundle is a standalone classifier and cannot be taught by example")
        return self.teacher

    def _apply(self, command: m.Command, current, enrolled_this_frame: set[str]) -> dict | None:
        """Apply one command; returns what its reply carries. The router: one case per command type."""
        via = command.via
        match command:
            case m.Quit():
                self.stop()
            case m.Status():
                return self.status()
            case m.Pause() | m.Resume():
                self.paused = isinstance(command, m.Pause)
                self._event(m.Paused(paused=self.paused, via=via))
            case m.Reload():
                self.request_reload()
            case m.Snapshot(max_size=max_size):
                if self.last_frame is None:
                    raise TeachcamError("no camera frame yet")
                return {"frame": self.last_frame, "max_size": max_size}
            case m.ListClasses():
                return self._classes()
            case m.Thumbnail(thumb=thumb):
                return {"png": self._teacher(command).store.thumbnail_bytes(thumb)}
            case m.Enroll(label=label, index=index, skip_similar=skip_similar):
                if label is None:
                    if index is None or not 0 <= index < len(self.config.classes):
                        raise TeachcamError(f"enroll: no class button {index}")
                    label = self.config.classes[index]
                teacher = self._teacher(command)
                label = teacher.resolve_name(label, create=True)
                if label in enrolled_this_frame:
                    return {"label": label, "count": teacher.counts().get(label, 0), "skipped": m.SKIPPED_SAME_FRAME}
                embedding, pixels = self._frame_for_enrollment(current)
                if skip_similar > 0:
                    view = self._insight_of(teacher)
                    rows = view.rows(label)
                    sims = view.similarities(embedding, rows)
                    if len(sims) and float(sims.max()) >= skip_similar:
                        return {"label": label, "count": len(rows), "skipped": m.SKIPPED_SIMILAR,
                                "similarity": round(float(sims.max()), 4)}
                enrolled_this_frame.add(label)
                return self._enrolled(teacher.add(label, embedding, pixels, source=via), via)
            case m.EnrollImage(label=label, pixels=pixels, name=name):
                teacher = self._teacher(command)
                label = teacher.resolve_name(label, create=True)
                if command.unique:
                    from teachcam.edge.teaching.store import thumbnail_digest

                    digest = thumbnail_digest(pixels)
                    if any(e.label == label and e.thumb == digest for e in teacher.snapshot.examples):
                        return {"label": label, "skipped": m.SKIPPED_DUPLICATE}
                return self._enrolled(teacher.add(label, self.embedder.embed(pixels), pixels, source=name or via), via)
            case m.PredictImage(pixels=pixels):
                embedding = self.embedder.embed(pixels)
                label, score, confidence, confidences = self._predict(embedding)
                return {"label": label, "score": round(score, 4), "confidence": round(confidence, 4),
                        "confidences": {k: round(v, 4) for k, v in confidences.items()}}
            case m.AddClass(label=label):
                label = self._teacher(command).add_class(label)
                self._event(m.ClassAdded(label=label, via=via))
                return {"label": label}
            case m.RenameClass(old=old, new=new):
                teacher = self._teacher(command)
                old, new = teacher.resolve_name(old, create=False), teacher.rename_class(old, new)
                self._event(m.Renamed(old=old, new=new, via=via))
                return {"old": old, "new": new}
            case m.RemoveClass(label=label):
                teacher = self._teacher(command)
                label = teacher.resolve_name(label, create=False)
                count = teacher.remove_class(label)
                self.smoother.reset()
                self._event(m.Removed(label=label, count=count, via=via))
                return {"label": label, "count": count}
            case m.Undo():
                example = self._teacher(command).undo_last()
                if example is None:
                    return {"undone": None}
                count = self.teacher.counts().get(example.label, 0)
                self._event(m.Undone(label=example.label, count=count, example=example.id, source=example.source,
                                     via=via))
                return {"undone": example.label, "count": count}
            case m.Clear():
                count = self._teacher(command).clear()
                self.smoother.reset()
                self._event(m.Cleared(count=count, via=via))
                return {"count": count}
            case m.ExampleData(example=example_id):
                teacher = self._teacher(command)
                example, embedding = teacher.example(example_id)
                return {"id": example.id, "label": example.label, "thumb": example.thumb, "source": example.source,
                        "added": round(example.added, 3), "fingerprint": teacher.store.fingerprint,
                        "embedding": embedding, "png": teacher.store.thumbnail_bytes(example.thumb)}
            case m.EnrollEmbedding():
                return self._enroll_embedding(command)
            case m.Explain(nearest=count):
                return self._explain(count)
            case m.Notice(text=text, seconds=seconds, link=link):
                self._event(m.NoticeShown(text=text, seconds=seconds, link=link, via=via), log_it=False)  # a secret
                return {"shown": True}
            case m.RemoveExamples(examples=ids, sources=sources):
                ids, sources = set(ids), set(sources)
                gone = self._teacher(command).remove_examples(lambda e: e.id in ids or (e.source in sources))
                if gone:
                    self._event(m.ExamplesRemoved(count=len(gone), labels=tuple(sorted({e.label for e in gone})),
                                                  sources=tuple(sorted({e.source for e in gone if e.source})),
                                                  via=via))
                return {"count": len(gone)}
            case _:
                raise TeachcamError(f"unknown command {command!r}")
        return {}

    def _enroll_embedding(self, command: m.EnrollEmbedding) -> dict:
        """An example taught elsewhere: its embedding as is when it came from our embedder, else re-embedded."""
        teacher = self._teacher(command)
        label = teacher.resolve_name(command.label, create=True)
        if not command.source:
            raise TeachcamError("enroll_embedding: source (who taught it) is required")
        known = [e for e in teacher.snapshot.examples if e.source == command.source]
        if known and all(e.label == label for e in known):
            return {"label": label, "skipped": m.SKIPPED_KNOWN, "example": known[0].id}
        if known:  # relabelled where it was taught: move it
            teacher.remove_examples(lambda e: e.source == command.source)
        vector = command.embedding
        size = teacher.snapshot.embedding_size or int(np.prod(self.embedder.model.output.shape[1:]))
        reuse = vector is not None and command.fingerprint == self.embedder.fingerprint and vector.size == size
        if not reuse:
            vector = self.embedder.embed(command.pixels)
        result = self._enrolled(teacher.add(label, vector, command.pixels, source=command.source), command.via)
        return {**result, "reembedded": not reuse}

    def _enrolled(self, example, via: str) -> dict:
        """The acknowledgement of an enrollment (durable when this runs): the event, and the reply."""
        count = self.teacher.counts().get(example.label, 0)
        self.stats.enrolled += 1
        self._event(m.Enrolled(label=example.label, count=count, example=example.id, thumb=example.thumb, via=via))
        return {"label": example.label, "count": count, "example": example.id, "thumb": example.thumb}

    def _classes(self) -> dict:
        teacher = self._teacher(m.ListClasses())
        view = self._insight_of(teacher)
        examples: dict[str, list] = {label: [] for label in teacher.classes}
        for example in teacher.snapshot.examples:
            examples.setdefault(example.label, []).append({"id": example.id, "thumb": example.thumb,
                                                           "source": example.source, "added": round(example.added, 3)})
        return {"classes": [{"label": label, "count": len(items), "examples": items, "variety": view.variety(label)}
                            for label, items in examples.items()]}

    def _insight_of(self, teacher) -> insight.StoreInsight:
        """What the current store generation says (nearest examples, varieties, confusion), derived once."""
        if self._insight is None or self._insight.snapshot is not teacher.snapshot:
            self._insight = insight.StoreInsight(teacher.snapshot, teacher.config.power)
        return self._insight

    def _explain(self, count: int) -> dict:
        """The examples nearest to the current frame; the examples a leave-one-out vote puts in another class."""
        view = self._insight_of(self._teacher(m.Explain()))
        snap = view.snapshot
        nearest = []
        if self.last_embedding is not None and snap.examples:
            sims = view.similarities(self.last_embedding)
            for i in np.argsort(-sims)[: max(1, min(count, 24))]:
                e = snap.examples[int(i)]
                nearest.append({"id": e.id, "label": e.label, "thumb": e.thumb, "similarity": round(float(sims[i]), 4)})
        confused = view.confused()

        def brief(i: int) -> dict:
            e = snap.examples[i]
            return {"id": e.id, "label": e.label, "thumb": e.thumb}

        return {"shown": self._shown, "nearest": nearest, "pairs": insight.confused_pairs(confused),
                "confused": [{**brief(c["index"]), "looks_like": c["looks_like"], "neighbor": brief(c["neighbor"]),
                              "similarity": c["similarity"]} for c in confused[:50]],
                "examples": len(snap.examples)}

    def _stats_fields(self) -> dict:
        invoke = self.stats.stages.get("invoke") or [0.0]
        return {"fps": round(self._fps(), 1), "inference_ms": round(1e3 * sum(invoke[-30:]) / len(invoke[-30:]), 2),
                "frames": self.stats.frames, "uptime_s": round(time.monotonic() - self.stats.started, 1),
                "examples": len(self.teacher) if self.teacher is not None else 0, "paused": self.paused,
                **({"gated": self.gate.gated, "capped": self.gate.capped, "embedded": self.gate.embedded}
                   if self.grabber is not None else {}), **health_fields()}

    def status(self) -> dict:
        """One screen of facts for ``teachcam status`` (and the web page, and MQTT)."""
        from teachcam.edge.model.runtime import interpreter_module

        runtime = interpreter_module()
        return {**self._stats_fields(), "camera": self.config.camera.source,
                "camera_ok": not self._camera_trouble,
                "camera_error": self.grabber.last_error if self._camera_trouble else None,
                "mode": self.config.mode, "bundle": str(self.bundle.path), "model": self.embedder.variant,
                "kernels": self.embedder.kernels, "runtime": f"{runtime.name} {runtime.version}",
                "store": self.config.store if self.teacher is not None else None,
                "classes": self.teacher.counts() if self.teacher is not None else {},
                "shown": self._shown, "controls": self.control_mode,
                "dropped_views": {b.port.name: b.dropped_views for b in self.mailboxes if b.dropped_views},
                "fingerprint": self.embedder.fingerprint}

    def _event(self, event: m.Event, *, log_it: bool = True) -> None:
        if log_it and not isinstance(event, m.Stats):
            log.info("%s", event.as_json())
        for mailbox in self.mailboxes:
            mailbox.offer_event(event)

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
            self.source = self._make_source()
            self._open_camera()
        else:
            self.grabber.prepare = self.preprocess
        self.smoother = Smoother(new.smoothing)
        if (new.buttons, new.leds, new.classes, new.output, new.mode) != (old.buttons, old.leds, old.classes,
                                                                          old.output, old.mode):
            self._close_outputs(keep=True)
            self._close_controls()
            self._open_controls()
            self._open_outputs()
        restart = tuple(name for name in ("control",) if getattr(new, name) != getattr(old, name))
        for name in restart:
            log.warning("reload: [%s] changed; it takes effect at the next restart (systemctl restart teachcam)", name)
        examples = len(self.teacher) if self.teacher is not None else 0
        log.warning("reloaded the configuration and the bundle (%d examples kept)", examples)
        self._event(m.Reloaded(examples=examples, restart_needed=restart))

    def _close_controls(self) -> None:
        for part in (self.keys, self.buttons):
            if part is not None:
                part.close()
        self.keys = self.buttons = None
        self.control_mode = "none"

    def _close_outputs(self, *, keep: bool = False) -> None:
        """Close the ports (the LEDs with them); ``keep``: not the control socket nor ports handed in (a reload)."""
        for mailbox in self.mailboxes:
            if keep and mailbox in self._kept:
                continue
            try:
                mailbox.close()
            except Exception as exc:  # closing hardware on the way out must not hide the exit status
                log.debug("closing %s failed: %s", mailbox.port.name, exc)
        self.mailboxes = []
        self.leds = None
        if not keep:
            self._kept, self.control = [], None

    def close(self) -> None:
        self.notifier.notify("STOPPING=1")
        if self.grabber is not None:
            self.grabber.stop()
        self._close_controls()
        self._close_outputs()
        if self.teacher is not None:
            self.teacher.close()
