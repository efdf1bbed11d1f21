"""Camera sources by spec string (the grabber thread that reads them is :mod:`.grabber`).

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
from pathlib import Path

import numpy as np

from teachcam.edge.devices.scenes import DemoSource
from teachcam.edge.devices.source import Source
from teachcam.edge.devices.yuv import yuv420_to_rgb
from teachcam.edge.errors import CameraError, ImageError, first_line
from teachcam.edge.model.images import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # before cv2 is imported: failures are reported by teachcam


class Picamera2Source(Source):
    """The Raspberry Pi camera through picamera2 (from Raspberry Pi OS: apt install python3-picamera2).

    The main stream is configured for preview at ``width``×``height``; inference reads the
    low-resolution YUV420 stream (scaled on the ISP at no CPU cost), converted to RGB with the
    row padding sliced off and in the colour range the stream reports (:mod:`edge.yuv`). The
    sensor is asked for ``fps`` frames per second (without it, it runs at its mode's maximum,
    100-120 on the usual sensors). A capture that takes longer than ``timeout`` seconds is a
    camera error (picamera2 itself would wait forever), so the grabber reopens the camera.

    A focus region (:meth:`set_region`) is asked of the ISP where it can crop each stream on its own (a Pi 5's
    ``ScalerCrops``): the lores stream the model reads then holds only the region, at the stream's full
    resolution, and the frame this source returns for the screen and the live view is the main stream's whole
    picture (``model_view`` is the lores region). Where it cannot (a Pi 4: one crop for every stream), the region
    is cut from the 640×480 main stream instead — about twice the lores stream's detail — while the lores
    stream's whole picture is what is shown.
    """

    name = "picamera2"
    paced = True

    def __init__(self, width: int = 640, height: int = 480, lores: tuple[int, int] | None = None, *,
                 fps: float = 30.0, timeout: float = 5.0, camera_num: int = 0):
        # By default the ISP scales the low-resolution stream to 256 pixels on the shorter side, which is
        # what the default bundle resizes to: preprocessing is then a centre crop with no arithmetic.
        self.size = (width, height)
        lores = lores or (2 * round(256 * width / height / 2), 256)
        # picamera2 refuses a lores stream larger than main ("lores stream dimensions may not exceed main
        # stream"): with a small main stream, lores is main's size and the CPU does the rest of the resize.
        self.lores = (min(lores[0], width - width % 2), min(lores[1], height - height % 2))
        self.fps, self.timeout, self.camera_num = fps, timeout, camera_num
        self.camera = None
        self.metadata: dict = {}  # the last frame's metadata (the AI Camera's network output rides in it)
        self.stream: dict = {}
        self.preview = False  # True: picamera2's DRM preview shows the main stream on the attached screen
        self.region = None  # the focus region, fractions (x0, y0, x1, y1) of the picture
        self.isp_crop = False  # the ISP crops the lores stream to the region (model_view is the region)
        self.main_crop = False  # no per-stream crop (a Pi 4): model_view is the region cut from the main stream
        self.model_view: np.ndarray | None = None  # with isp_crop: the lores region of the last frame read

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
            camera = Picamera2(self.camera_num)
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
            self.camera = camera
            self._crop()  # a reopened camera is asked for the region again
            camera.start()
        except Exception as exc:  # RuntimeError, IndexError (no camera), OSError, ValueError from libcamera
            self.camera = None
            if camera is not None:
                _close_camera(camera)
            raise CameraError(f"the Raspberry Pi camera did not start ({first_line(exc)}); is it connected and "
                              "enabled? (`rpicam-hello --list-cameras`)") from None
        self.camera = camera

    def set_region(self, region) -> bool:
        """Look at ``region`` (None: the whole picture): True when ``model_view`` will hold it (the caller must not
        crop again) — from the ISP's lores crop (a Pi 5) or cut from the main stream (a Pi 4)."""
        self.region = tuple(region) if region else None
        if self.camera is not None:
            self._crop()
        return self.region is not None

    def _crop(self) -> None:
        camera, region = self.camera, self.region
        controls = camera.camera_controls
        if "ScalerCrops" not in controls:
            self.isp_crop = False  # one crop for every stream (a Pi 4): cut the region from main, in read()
            self.main_crop = region is not None
            return
        x, y, w, h = controls["ScalerCrop"][1]  # the sensor mode's whole field of view
        lores = (x, y, w, h)
        if region is not None:
            x0, y0, x1, y1 = region
            lores = (x + round(x0 * w), y + round(y0 * h), max(64, round((x1 - x0) * w)), max(64, round((y1 - y0) * h)))
        camera.set_controls({"ScalerCrops": [(x, y, w, h), lores]})  # main: all of it; lores: the region
        self.isp_crop = region is not None

    def read(self) -> np.ndarray | None:
        if self.camera is None:
            raise CameraError("picamera2 source read before open")
        try:
            if self.isp_crop or self.main_crop:  # one frame, both streams
                (main, yuv), self.metadata = self.camera.capture_arrays(["main", "lores"], wait=self.timeout)
            else:
                (yuv,), self.metadata = self.camera.capture_arrays(["lores"], wait=self.timeout)
                main = None
        except TimeoutError:
            raise CameraError(f"the camera delivered no frame in {self.timeout:g} s (stalled)") from None
        except Exception as exc:
            raise CameraError(f"picamera2 capture failed ({first_line(exc)})") from None
        width, height = self.stream["size"]
        rgb = yuv420_to_rgb(yuv, width, height, self.stream.get("stride") or width, full_range=self.stream["full_range"])
        if main is None:
            self.model_view = None
            return rgb
        if self.isp_crop:  # the whole picture (main) to show, the region (lores) to look at
            self.model_view = rgb
            return np.ascontiguousarray(main[:, :, ::-1])  # libcamera's RGB888 is B, G, R in memory
        height, width = main.shape[:2]  # a Pi 4: the region cut from main, the lores picture to show
        x0, y0, x1, y1 = self.region
        box = main[round(y0 * height):round(y1 * height), round(x0 * width):round(x1 * width)]
        self.model_view = np.ascontiguousarray(box[:, :, ::-1])
        return rgb

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
