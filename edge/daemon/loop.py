"""The device daemon's loop: camera → embedder → KNN/head → smoothing → ports (LEDs, display, stdout, control socket).

It only wires: :mod:`.assembly` builds the parts from the config (and again on SIGHUP), :mod:`.commands` applies
every command, :mod:`.systemd` speaks to systemd; this module runs frames through them.

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
import queue
import signal
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from teachcam.edge import messages as m
from teachcam.edge.config import DaemonConfig
from teachcam.edge.daemon import assembly, sensor
from teachcam.edge.daemon.commands import Router
from teachcam.edge.daemon.smoothing import Smoother
from teachcam.edge.daemon.systemd import Notifier
from teachcam.edge.devices.health import health_fields
from teachcam.edge.model.runtime import interpreter_module
from teachcam.edge.ports import Mailbox, Port, View

log = logging.getLogger(__name__)


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
        self.kept: list[Mailbox] = []  # the mailboxes a reload keeps (control socket, ports handed in)
        self.buttons = self.leds = self.keys = self.grabber = self.teacher = self.head = self.control = None
        self.review = None  # the review inbox (teachcam.edge.daemon.review), when on
        self.sensor_refused: str | None = None  # why the AI Camera did not take the network (then: the CPU)
        self.upload = sensor.UploadWatch(self)
        self.last_embedding = None
        self.source = None
        self.control_mode = "none"
        self.last_frame: np.ndarray | None = None
        self._view: View | None = None  # the last view made: a gated frame shows it again
        self.region = config.camera.region  # the focus region (assembly reads the one kept in the store's folder)
        self._framed: tuple | None = None
        self.shown: str | None = None
        self._camera_errors = 0
        self._camera_trouble = False
        self._next_stats = time.monotonic() + STATS_INTERVAL
        self.router = Router(self)

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
        assembly.assemble(self)
        return self

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
                self.event(m.Stats(**self._stats_fields()))
            frame = self.grabber.latest(after=last, timeout=0.2 if self.paused else 1.0)
            if frame is None or self.paused:
                if frame is not None:
                    last, self.last_frame = frame.number, frame.image
                    if frame.embedding is not None:  # the AI Camera's: an enrollment while paused pairs them
                        self.last_embedding = frame.embedding
                    self.notifier.ping()  # paused on purpose, camera alive
                else:
                    self.upload.tick()  # the AI Camera's network is being uploaded: say so, extend the start
                self._apply_commands(None)
                if self.grabber.ended:
                    log.info("the camera source has no more frames")
                    break
                continue
            last = frame.number
            now = time.monotonic()
            if (frame.embedding is None and self._view is not None
                    and not self.gate.should_embed(frame.signature, now, must=self._frame_needed())):
                self._reshow(frame)  # the scene has not changed since the last embedded frame: no invoke
            else:  # (the AI Camera's frames come embedded: nothing to spare)
                self.step(frame.image, frame.captured, frame.number, frame.pixels, frame.embedding)
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
        view = self._view
        # The scene is the one the model last saw, so its prediction is this frame's too: it votes. (Without the
        # vote, an object put down and left still got one vote per gate.max_interval, and the shown class
        # changed seconds late — or never, with a view that changed every few frames.)
        shown = self.smoother.update(view.raw_label)
        if shown != self.shown:
            self.shown = shown
            self.event(m.PredictionChanged(label=shown, raw_label=view.raw_label, score=round(view.score, 4),
                                            confidence=round(view.confidence, 4),
                                            confidences={k: round(v, 4) for k, v in view.confidences.items()},
                                            counts=view.counts), log_it=False)
        self._show(replace(view, label=shown, frame=frame.number,
                           latency_ms=(time.monotonic() - frame.captured) * 1e3), frame.image)

    def _show(self, view: View, image: np.ndarray) -> None:
        self._view = view
        for mailbox in self.mailboxes:
            mailbox.offer_view(view, image)

    @property
    def frame_preprocess(self):
        """The bundle's preprocessing with the focus region: what camera frames go through (uploads do not)."""
        pre = self.preprocess
        if self.region is None or pre is None:
            return pre
        if self._framed is None or self._framed[0] is not pre or self._framed[1] != self.region:
            self._framed = (pre, self.region, replace(pre, region=self.region))
        return self._framed[2]

    def set_region(self, region) -> None:
        """Look at ``region`` from the next frame on (the capture thread prepares frames with it)."""
        self.region = tuple(region) if region else None
        if self.grabber is not None:
            set_source_region = getattr(self.grabber.source, "set_region", None)
            if set_source_region is not None:
                set_source_region(self.region)  # the Pi camera's ISP crops it where it can
            self.grabber.prepare, self.grabber.prepare_view = self.frame_preprocess, self.preprocess
        self._view = None  # the next frame is embedded whatever the change gate says: the picture changed
        self.smoother.reset()

    def _frame_needed(self) -> bool:
        """An enrollment waits for this frame, or a class button is held: the gate must let it through."""
        if self.buttons is not None and self.buttons.is_held:
            return True
        with self.commands.mutex:  # button and socket threads append meanwhile: never iterate it unlocked
            return any(isinstance(command, m.Enroll) for command, _ in self.commands.queue)

    def _watch_camera(self) -> None:
        """Camera trouble (and its end) becomes an event every port receives, not only a log line."""
        errors = self.grabber.errors
        if errors > self._camera_errors and sensor.refused(self):
            assembly.without_sensor(self)
            self._camera_errors = 0
            return
        if errors > self._camera_errors and not self._camera_trouble:
            self._camera_trouble = True
            self.event(m.CameraTrouble(message=self.grabber.last_error or "camera error"))
        elif self._camera_trouble and self.grabber.last_frame_time > self.grabber.last_error_time:
            self._camera_trouble = False
            self.event(m.CameraBack(source=self.config.camera.source))
        self._camera_errors = errors

    def step(self, image: np.ndarray, captured: float | None = None, number: int | None = None,
             pixels: np.ndarray | None = None, embedding: np.ndarray | None = None) -> View:
        """Embed one frame, apply pending commands to it, predict, and show the result on every port.

        ``pixels``: the frame already preprocessed (the capture thread does it when it can); ``embedding``: the
        AI Camera's (the sensor embedded the frame: nothing to invoke).
        """
        t0 = time.perf_counter()
        pre = self.frame_preprocess
        if pixels is None or pixels.shape != (pre.crop_height, pre.crop_width, pre.channels):
            pixels = pre(image)
        t1 = time.perf_counter()
        if embedding is None:
            embedding = self.embedder.embed(pixels)
        t2 = time.perf_counter()
        self.last_frame, self.last_embedding = image, embedding
        self._apply_commands((embedding, pixels))
        label, score, confidence, confidences = self.predict(embedding)
        if self.review is not None:
            self.review.observe(embedding, pixels, label, score, confidences)
        t3 = time.perf_counter()
        shown = self.smoother.update(label)
        counts = self.teacher.counts() if self.teacher is not None else {}
        view = View(shown, label, score, confidence, confidences, counts, self.model_fps(),
                    (time.monotonic() - captured) * 1e3 if captured else (t3 - t0) * 1e3,
                    number if number is not None else self.stats.frames + 1, self.config.mode, self.region)
        if shown != self.shown:
            self.shown = shown
            self.event(m.PredictionChanged(label=shown, raw_label=label, score=round(score, 4),
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

    def model_fps(self) -> float:
        invoke = self.stats.stages.get("invoke")
        if not invoke:
            return 0.0
        recent = [sum(v[-30:]) / len(v[-30:]) for v in self.stats.stages.values() if v]
        return 1.0 / max(sum(recent), 1e-6)

    def predict(self, embedding: np.ndarray):
        if self.head is not None:
            probabilities = self.head.probabilities(embedding)
            best = int(np.argmax(probabilities))
            order = np.argsort(-probabilities)[:5]
            confidences = {self.head.labels[i]: float(probabilities[i]) for i in order}
            return self.head.labels[best], float(probabilities[best]), float(probabilities[best]), confidences
        prediction = self.teacher.predict(embedding)
        return prediction.label, prediction.score, prediction.confidence, prediction.confidences

    # -- commands: applied by the router, on this thread ----------------------------------------------
    def _apply_commands(self, current: tuple[np.ndarray, np.ndarray] | None) -> None:
        self.router.apply_pending(self.commands, current)

    def _stats_fields(self) -> dict:
        invoke = self.stats.stages.get("invoke") or [0.0]
        model_fps = round(self.model_fps(), 1)
        # model_fps: what the model could classify (1 / the time one frame takes); camera_fps: what the camera
        # delivers. "fps" is model_fps under its old name (scripts read it).
        return {"model_fps": model_fps, "fps": model_fps,
                "camera_fps": round(self.grabber.delivered_fps(), 1) if self.grabber is not None else 0.0,
                "inference_ms": round(1e3 * sum(invoke[-30:]) / len(invoke[-30:]), 2),
                "frames": self.stats.frames, "uptime_s": round(time.monotonic() - self.stats.started, 1),
                "examples": len(self.teacher) if self.teacher is not None else 0, "paused": self.paused,
                **({"gated": self.gate.gated, "capped": self.gate.capped, "embedded": self.gate.embedded}
                   if self.grabber is not None else {}), **health_fields()}

    def status(self) -> dict:
        """One screen of facts for ``teachcam status`` (and the web page, and MQTT)."""
        runtime = interpreter_module()
        hint = getattr(self.grabber.source, "hint", None) if self.grabber is not None else None
        return {**self._stats_fields(), "camera": self.config.camera.source,
                "region": list(self.region) if self.region else None,
                "scene": hint() if hint is not None else None,
                "camera_ok": not self._camera_trouble,
                "camera_error": self.grabber.last_error if self._camera_trouble else None,
                "mode": self.config.mode, "bundle": str(self.bundle.path), "model": self.embedder.variant,
                "kernels": self.embedder.kernels, "runtime": f"{runtime.name} {runtime.version}",
                "store": self.config.store if self.teacher is not None else None,
                "classes": self.teacher.counts() if self.teacher is not None else {},
                "undo": self.teacher.next_undo() if self.teacher is not None else None,
                "inbox": len(self.review.inbox) if self.review is not None else None,
                "stand_ins": sum(1 for e in self.teacher.snapshot.examples if e.space) if self.teacher is not None else 0,
                **sensor.status(self),
                "shown": self.shown, "controls": self.control_mode,
                "dropped_views": {b.port.name: b.dropped_views for b in self.mailboxes if b.dropped_views},
                "fingerprint": self.embedder.fingerprint}

    def event(self, event: m.Event, *, log_it: bool = True) -> None:
        if log_it and not isinstance(event, m.Stats):
            log.info("%s", event.as_json())
        for mailbox in self.mailboxes:
            mailbox.offer_event(event)

    def reload(self) -> None:
        """SIGHUP: re-read the config and the bundle; on any error keep running as before."""
        assembly.reload(self)

    def close(self) -> None:
        self.notifier.notify("STOPPING=1")
        if self.grabber is not None:
            self.grabber.stop()
        assembly.close_controls(self)
        assembly.close_outputs(self)
        if self.review is not None:
            self.review.close()
        if self.teacher is not None:
            self.teacher.close()
