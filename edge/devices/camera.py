"""Camera sources by spec string, and a grabber thread that keeps only the newest frame.

Specs: ``picamera2`` (Raspberry Pi camera; the low-resolution stream feeds inference),
``opencv:N`` (USB webcam N), ``file:PATH`` (a video), ``images:DIR_OR_GLOB``, ``demo``
(scenes made from sample photos, with camera-like jitter, lighting and noise). Every
source delivers RGB uint8 frames. A source raises :class:`CameraError` or returns None
when it has nothing; the grabber logs that, backs off, reopens and carries on.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from teachcam.edge.errors import CameraError, first_line
from teachcam.edge.model.images import IMAGE_SUFFIXES, read_image
from teachcam.edge.samples import sample_photos

log = logging.getLogger(__name__)
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # before cv2 is imported: failures are reported by teachcam


class Source:
    """The camera protocol: open, read frames (RGB uint8, or None when none is ready), close."""

    name = "source"
    paced = False  # True: read() itself waits for the next frame (a real camera)
    finite = False  # True: None from read() means the end (a video or image list without --loop)

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Picamera2Source(Source):
    """The Raspberry Pi camera through picamera2 (from Raspberry Pi OS: apt install python3-picamera2).

    The main stream is configured for preview at ``width``×``height``; inference reads the
    low-resolution YUV420 stream (scaled on the ISP at no CPU cost), converted to RGB with the
    row padding sliced off and in the colour range the stream reports (:mod:`edge.yuv`). The
    sensor is asked for ``fps`` frames per second (without it, it runs at its mode's maximum,
    100-120 on the usual sensors). A capture that takes longer than ``timeout`` seconds is a
    camera error (picamera2 itself would wait forever), so the grabber reopens the camera.
    """

    name = "picamera2"
    paced = True

    def __init__(self, width: int = 640, height: int = 480, lores: tuple[int, int] | None = None, *,
                 fps: float = 30.0, timeout: float = 5.0):
        # By default the ISP scales the low-resolution stream to 256 pixels on the shorter side, which is
        # what the default bundle resizes to: preprocessing is then a centre crop with no arithmetic.
        self.size = (width, height)
        lores = lores or (2 * round(256 * width / height / 2), 256)
        # picamera2 refuses a lores stream larger than main ("lores stream dimensions may not exceed main
        # stream"): with a small main stream, lores is main's size and the CPU does the rest of the resize.
        self.lores = (min(lores[0], width - width % 2), min(lores[1], height - height % 2))
        self.fps, self.timeout = fps, timeout
        self.camera = None
        self.stream: dict = {}
        self.preview = False  # True: picamera2's DRM preview shows the main stream on the attached screen

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError("picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
                              "and create the venv with --system-site-packages") from None
        except Exception as exc:  # apt's picamera2 imports simplejpeg built for the OS's numpy: another raises ValueError
            raise CameraError(f"picamera2 is installed but cannot be imported ({first_line(exc)}); the venv must use "
                              "the OS's own numpy — rerun scripts/install-pi") from None
        camera = None
        try:
            camera = Picamera2()
            config = camera.create_preview_configuration(main={"size": self.size, "format": "RGB888"},
                                                         lores={"size": self.lores, "format": "YUV420"},
                                                         controls={"FrameRate": float(self.fps)})
            camera.configure(config)
            # libcamera may adjust the size and sets the stride (rows padded to 64 bytes): read them back.
            self.stream = dict(camera.camera_config["lores"])
            self.stream["full_range"] = is_full_range(camera.camera_config.get("colour_space"))
            if self.preview:
                from picamera2 import Preview

                width, height = display_size() or (640, 480)
                camera.start_preview(Preview.DRM, x=0, y=0, width=width, height=height)  # no desktop needed
            camera.start()
        except Exception as exc:  # RuntimeError, IndexError (no camera), OSError, ValueError from libcamera
            if camera is not None:
                _close_camera(camera)
            raise CameraError(f"the Raspberry Pi camera did not start ({first_line(exc)}); is it connected and "
                              "enabled? (`rpicam-hello --list-cameras`)") from None
        self.camera = camera

    def read(self) -> np.ndarray | None:
        from teachcam.edge.devices.yuv import yuv420_to_rgb

        if self.camera is None:
            raise CameraError("picamera2 source read before open")
        try:
            yuv = self.camera.capture_array("lores", wait=self.timeout)
        except TimeoutError:
            raise CameraError(f"the camera delivered no frame in {self.timeout:g} s (stalled)") from None
        except Exception as exc:
            raise CameraError(f"picamera2 capture failed ({first_line(exc)})") from None
        width, height = self.stream["size"]
        return yuv420_to_rgb(yuv, width, height, self.stream.get("stride") or width,
                             full_range=self.stream["full_range"])

    def close(self) -> None:
        if self.camera is not None:
            camera, self.camera = self.camera, None
            _close_camera(camera)


def _import_cv2(what: str):
    try:
        import cv2
    except ImportError:
        raise CameraError(f"{what} needs OpenCV, which the device install leaves out: pip install 'teachcam[video]' "
                          "(scripts/install-pi adds it when the config's camera source needs it)") from None
    return cv2


def display_size(drm: str = "/sys/class/drm") -> tuple[int, int] | None:
    """The first connected display's preferred mode (e.g. 1920x1080), from DRM's sysfs; None if none."""
    for connector in sorted(Path(drm).glob("card*-*")):
        try:
            if (connector / "status").read_text().strip() != "connected":
                continue
            mode = (connector / "modes").read_text().split()[0]
            width, height = (int(v) for v in mode.split("x")[:2])
            return width, height
        except (OSError, ValueError, IndexError):
            continue
    return None


def is_full_range(colour_space) -> bool:
    """Whether a libcamera colour space is full range (sYCC/JPEG: picamera2's preview default) or limited."""
    if colour_space is None:
        return True
    text = str(getattr(colour_space, "range", colour_space)).lower()
    if "limited" in text:
        return False
    if "full" in text or "sycc" in text or "jpeg" in text:
        return True
    return text not in ("smpte170m", "rec709", "rec2020")


def _close_camera(camera) -> None:
    try:
        camera.stop()
    finally:
        camera.close()


class OpenCVSource(Source):
    """A USB webcam (``opencv:0``) or a video file (``file:clip.mp4``) through OpenCV."""

    def __init__(self, target: int | str, *, loop: bool = False, width: int = 640, height: int = 480):
        self.target, self.loop, self.size = target, loop, (width, height)
        self.name = f"opencv:{target}" if isinstance(target, int) else f"file:{target}"
        self.paced = isinstance(target, int)
        self.finite = not self.paced and not loop
        self.capture = None

    def open(self) -> None:
        cv2 = _import_cv2(self.name)
        if isinstance(self.target, str) and not Path(self.target).is_file():
            raise CameraError(f"video file not found: {self.target}")
        capture = cv2.VideoCapture(self.target)
        if not capture.isOpened():
            raise CameraError(f"cannot open {self.name}" + (" (is the webcam plugged in?)" if self.paced else ""))
        if self.paced:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        self.capture = capture

    def read(self) -> np.ndarray | None:
        import cv2

        if self.capture is None:
            raise CameraError(f"{self.name} read before open")
        ok, frame = self.capture.read()
        if not ok and self.loop and not self.paced:
            self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.capture.read()
        if not ok:
            if self.paced:
                raise CameraError(f"{self.name} stopped delivering frames (unplugged?)")
            return None
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None


class ImagesSource(Source):
    """Still images from a folder or a glob, one per read, in name order (``images:DIR_OR_GLOB``)."""

    def __init__(self, pattern: str, *, loop: bool = True):
        self.pattern, self.loop = pattern, loop
        self.name = f"images:{pattern}"
        self.finite = not loop
        self.paths: list[Path] = []
        self.position = 0

    def open(self) -> None:
        base = Path(self.pattern)
        if base.is_dir():
            # Sub-folders too: a training folder (one sub-folder per class) plays as one sequence.
            paths = sorted(p for p in base.rglob("*")
                           if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        else:
            paths = sorted(Path(p) for p in glob.glob(self.pattern))
        if not paths:
            raise CameraError(f"no images match {self.pattern}")
        self.paths, self.position = paths, 0

    def read(self) -> np.ndarray | None:
        from teachcam.edge.errors import ImageError
        from teachcam.edge.model.images import read_image

        for _ in range(len(self.paths)):
            if self.position >= len(self.paths):
                if not self.loop:
                    return None
                self.position = 0
            path = self.paths[self.position]
            self.position += 1
            try:
                return read_image(path)
            except ImageError as exc:
                log.warning("skipping %s", exc)
        raise CameraError(f"none of the images matching {self.pattern} can be read")


class ArraySource(Source):
    """Frames already decoded in memory, in order (then None, or again from the start with ``loop``).

    Stands for a camera whose ISP delivers frames at no CPU cost (benchmarks), or for scripted
    scenes (tests).
    """

    name = "memory"

    def __init__(self, frames, *, loop: bool = False):
        self.frames, self.loop, self.finite, self.position = list(frames), loop, not loop, 0

    def read(self) -> np.ndarray | None:
        if self.position >= len(self.frames):
            if not self.loop or not self.frames:
                return None
            self.position = 0
        self.position += 1
        return self.frames[self.position - 1]


# -- the demo camera: sample photos filmed like a hand-held camera (`teachcam demo`, benchmarks, tests) --------
OBJECTS = {"cat": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg"}
BACKGROUND = ("nothing", "astronaut.png")  # a scene nobody taught: should read as unknown


@dataclass(frozen=True)
class Scene:
    label: str  # the truth: a class name, or "unknown"
    photo: str
    seconds: float
    teach: bool = False


def default_schedule() -> list[Scene]:
    teach = [Scene(label, photo, 2.5, teach=True) for label, photo in OBJECTS.items()]
    order = ["cat", "nothing", "coffee", "rocket", "cat", "nothing", "coffee", "rocket"]
    photos = {**OBJECTS, BACKGROUND[0]: BACKGROUND[1]}
    show = [Scene(label if label in OBJECTS else "unknown", photos[label], 3.0) for label in order]
    return teach + show


class DemoSource(Source):
    """Frames of a scripted scene sequence; frame ``n`` shows ``scene_at(n)``. Loops forever."""

    name = "demo"

    def __init__(self, fps: float = 30.0, schedule: list[Scene] | None = None, size=(640, 480), seed: int = 0):
        self.fps = fps
        self.schedule = schedule or default_schedule()
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.index = 0
        self.photos: dict[str, Image.Image] = {}
        self._bounds = np.cumsum([round(s.seconds * fps) for s in self.schedule])

    def open(self) -> None:
        for scene in self.schedule:
            if scene.photo not in self.photos:
                found = sample_photos((scene.photo,))
                if not found:
                    raise CameraError("the demo camera films sample photos from scikit-image: "
                                      "pip install 'teachcam[demo]'")
                self.photos[scene.photo] = Image.fromarray(read_image(found[0]))
        self._noise = [self.rng.normal(0, 5, (self.size[1], self.size[0], 3)).astype(np.int16) for _ in range(4)]

    @property
    def total_frames(self) -> int:
        return int(self._bounds[-1])

    def scene_at(self, number: int) -> tuple[int, Scene, int]:
        """(scene index, scene, frames since the scene started) for frame ``number`` (1-based)."""
        position = (number - 1) % self.total_frames
        i = int(np.searchsorted(self._bounds, position, side="right"))
        start = int(self._bounds[i - 1]) if i else 0
        return i, self.schedule[i], position - start

    def read(self) -> np.ndarray:
        self.index += 1
        _, scene, _ = self.scene_at(self.index)
        photo = self.photos[scene.photo]
        t = self.index / self.fps
        keep = 0.8 + 0.08 * np.sin(t * 0.9) + self.rng.uniform(-0.02, 0.02)
        w, h = photo.width * keep, photo.height * keep
        aspect = self.size[0] / self.size[1]
        w, h = (min(w, h * aspect), min(h, w / aspect))
        cx = photo.width / 2 + photo.width * (0.05 * np.sin(t * 1.3) + self.rng.uniform(-0.01, 0.01))
        cy = photo.height / 2 + photo.height * (0.05 * np.cos(t * 1.1) + self.rng.uniform(-0.01, 0.01))
        left, top = max(0.0, min(photo.width - w, cx - w / 2)), max(0.0, min(photo.height - h, cy - h / 2))
        frame = photo.resize(self.size, Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        frame = ImageEnhance.Brightness(frame).enhance(1.0 + 0.2 * np.sin(t * 0.7))
        noisy = np.asarray(frame, np.int16) + self._noise[self.index % len(self._noise)]
        return np.clip(noisy, 0, 255).astype(np.uint8)



def make_source(spec: str, *, width: int = 640, height: int = 480, loop: bool = True, fps: float = 30.0,
                inference_size: tuple[int, int] | None = None) -> Source:
    """Build the source a spec string names.

    Raises:
        CameraError: an unknown spec.
    """
    kind, _, arg = spec.partition(":")
    if spec == "picamera2":
        return Picamera2Source(width, height, inference_size, fps=fps)
    if kind == "opencv":
        try:
            return OpenCVSource(int(arg or 0), width=width, height=height)
        except ValueError:
            raise CameraError(f"opencv:{arg}: the webcam number must be an integer (opencv:0)") from None
    if kind == "file" and arg:
        return OpenCVSource(arg, loop=loop)
    if kind == "images" and arg:
        return ImagesSource(arg, loop=loop)
    if spec == "demo":
        return DemoSource(fps=fps)
    raise CameraError(f"unknown camera source {spec!r}: use picamera2, opencv:N, file:PATH, images:DIR_OR_GLOB or demo")


@dataclass
class Frame:
    """A captured frame with its sequence number, capture time (time.monotonic()) and, when the
    grabber was given a ``prepare`` function, the model-ready pixels made in the capture thread."""

    image: np.ndarray
    number: int
    captured: float
    pixels: np.ndarray | None = None
    signature: np.ndarray | None = None  # a small luma thumbnail, for change gating (teachcam.edge.daemon.gate)


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
        self.last_error_time = 0.0  # time.monotonic() of the last camera error
        self.last_frame_time = 0.0  # ... and of the last frame
        self.ended = False

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
                self.last_error = str(exc)
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
            prepare = self.prepare
            prepare_started = time.perf_counter()
            pixels = prepare(image) if prepare is not None else None
            summary = self.summarize(image) if self.summarize is not None else None
            self._record("capture", read_seconds)
            self._record("preprocess", time.perf_counter() - prepare_started)
            self.frames_captured += 1
            with self._lock:
                self._frame = Frame(image, self.frames_captured, captured, pixels, summary)
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
