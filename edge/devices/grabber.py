"""A grabber thread that reads a camera source and keeps only the newest frame."""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from teachcam.edge.devices.source import Source
from teachcam.edge.errors import CameraError, first_line

log = logging.getLogger(__name__)


@dataclass
class Frame:
    """A captured frame with its sequence number, capture time (time.monotonic()) and, when the
    grabber was given a ``prepare`` function, the model-ready pixels made in the capture thread."""

    image: np.ndarray
    number: int
    captured: float
    pixels: np.ndarray | None = None
    signature: np.ndarray | None = None  # a small luma thumbnail, for change gating (teachcam.edge.daemon.gate)
    embedding: np.ndarray | None = None  # the AI Camera's: the sensor embedded this frame (no model to invoke)


class FrameGrabber:
    """Reads a source in its own thread and keeps only the newest frame.

    The interpreter never waits on the camera and latency never builds up: a slow consumer
    skips frames instead of queueing them. Errors are logged, the source is reopened with
    exponential backoff (0.5 s doubling to 10 s), and the daemon keeps its state.
    """

    def __init__(self, source: Source, *, fps: float | None = None, max_backoff: float = 10.0, prepare=None,
                 summarize=None):
        self.source = source
        self.prepare = prepare  # e.g. the bundle's preprocessing: runs here, overlapping the previous invoke
        self.prepare_view = None  # for a source's model_view (its ISP's crop of the focus region)
        self.summarize = summarize  # e.g. teachcam.edge.daemon.gate.signature: runs here too
        self.interval = (1.0 / fps) if fps and not source.paced else 0.0
        self._taken = threading.Event()  # unpaced sources: read the next frame only once this one is taken
        self._taken.set()
        self.max_backoff = max_backoff
        self._lock = threading.Condition()
        self._woken = False
        self._frame: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_captured = 0
        self.timings: dict[str, list[float]] = {"capture": [], "preprocess": []}  # seconds, the last 2,000
        self.errors = 0
        self.last_error: str | None = None
        self.last_exception: CameraError | None = None
        self.last_error_time = 0.0  # time.monotonic() of the last camera error
        self.last_frame_time = 0.0  # ... and of the last frame
        self._recent = collections.deque(maxlen=61)  # the last frames' capture times: the camera's own rate
        self.ended = False

    def delivered_fps(self) -> float:
        """Frames the camera delivered per second, over its last 60 frames (0 when it has delivered none for 2 s):
        what the camera does, not what the model could (``fps`` in the daemon's stats)."""
        times = list(self._recent)
        if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def start(self) -> FrameGrabber:
        self._thread = threading.Thread(target=self._run, name="teachcam-capture", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        opened = False
        empty_reads = 0
        next_due = time.monotonic()
        while not self._stop.is_set():
            try:
                if not opened:
                    self.source.open()
                    opened = True
                    if self.errors:
                        log.warning("camera %s is back", self.source.name)
                read_started = time.perf_counter()
                image = self.source.read()
                read_seconds = time.perf_counter() - read_started
            except Exception as exc:  # CameraError, or whatever a driver raises: never a dead capture thread
                if not isinstance(exc, CameraError):
                    exc = CameraError(f"{type(exc).__name__}: {first_line(exc)}")
                self.errors += 1
                self.last_error, self.last_exception = str(exc), exc
                self.last_error_time = time.monotonic()
                log.error("camera %s: %s; retrying in %.1f s", self.source.name, exc, backoff)
                if opened:
                    self._close_quietly()
                    opened = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if image is None:
                empty_reads += 1
                if self.source.finite:
                    self.ended = True
                    with self._lock:
                        self._lock.notify_all()
                    break
                self._stop.wait(min(0.05 * empty_reads, 1.0))
                continue
            empty_reads, backoff = 0, 0.5
            captured = self.last_frame_time = time.monotonic()
            self._recent.append(captured)
            prepare = self.prepare
            prepare_started = time.perf_counter()
            # a source whose ISP crops the focus region hands it over beside the whole picture: that is what the
            # model reads, through prepare_view (the region is already applied)
            view = getattr(self.source, "model_view", None)
            if view is not None and self.prepare_view is not None:
                pixels = self.prepare_view(view)
            else:
                pixels = prepare(image) if prepare is not None else None
            summary = self.summarize(image) if self.summarize is not None else None
            embedding = getattr(self.source, "embedding", None)
            self._record("capture", read_seconds)
            self._record("preprocess", time.perf_counter() - prepare_started)
            self.frames_captured += 1
            with self._lock:
                self._frame = Frame(image, self.frames_captured, captured, pixels, summary, embedding)
                self._taken.clear()
                self._lock.notify_all()
            if not self.source.paced and not self.interval:
                # A file or an in-memory source can produce frames faster than anyone uses them:
                # stay exactly one frame ahead instead of spinning (and holding the GIL).
                while not self._taken.wait(0.1) and not self._stop.is_set():
                    pass
            elif self.interval:
                next_due = max(next_due + self.interval, time.monotonic() - self.interval)
                self._stop.wait(max(0.0, next_due - time.monotonic()))
        if opened:
            self._close_quietly()

    def _record(self, stage: str, seconds: float) -> None:
        values = self.timings[stage]
        values.append(seconds)
        if len(values) > 4000:
            del values[:2000]

    def _close_quietly(self) -> None:
        try:
            self.source.close()
        except Exception as exc:  # a dying camera may fail to close; that must not kill capture
            log.debug("closing %s failed: %s", self.source.name, exc)

    def latest(self, after: int = 0, timeout: float = 1.0) -> Frame | None:
        """The newest frame with a number greater than ``after``, waiting up to ``timeout`` seconds
        (or until :meth:`wake`: then None)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while (self._frame is None or self._frame.number <= after) and not self.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._woken:
                    self._woken = False
                    return None
                self._lock.wait(remaining)
            frame = self._frame
            if frame is not None and frame.number > after:
                self._taken.set()
                return frame
            return None

    def wake(self) -> None:
        """Make a waiting :meth:`latest` return now (the main loop has a command to apply)."""
        with self._lock:
            self._woken = True
            self._lock.notify_all()

    def wait_for_first(self, timeout: float) -> bool:
        """True once a frame has been captured (or the source ended); False after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.frames_captured == 0 and not self.ended and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.frames_captured > 0 or self.ended

    def stop(self) -> None:
        self._stop.set()
        self._taken.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
