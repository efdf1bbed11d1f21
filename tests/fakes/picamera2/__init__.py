"""Test double for picamera2 (Raspberry Pi OS's python3-picamera2; it cannot be installed here).

As strict as the real one where teachcam could go wrong (rules copied from picamera2's
``picamera2.py``, ``request.py`` and ``job.py`` and from libcamera's Raspberry Pi pipelines):

* importing it imports ``simplejpeg`` (as the real package does): a numpy-1-built simplejpeg
  under numpy 2 raises ``ValueError`` here, exactly as on a Pi with a pip-filled venv;
* configurations accept only ``format`` and ``size`` per stream (``ValueError: Bad key``);
  ``configure`` refuses a lores stream larger than main and, on a Pi 4 (VC4), a lores stream
  that is not YUV; unknown controls are refused (``RuntimeError``);
* after ``configure``, ``camera_config[stream]`` holds the size and the **stride**, rows
  aligned to 64 bytes (342-pixel YUV420 rows: stride 384), and ``colour_space`` (sYCC, full
  range, for preview configurations);
* ``capture_array("lores")`` returns ``(height * 3 / 2, stride)`` uint8 with the padding
  columns full of noise; frames come at the configured ``FrameRate`` or else at the sensor
  mode's 120 fps; without ``wait=`` a stalled camera blocks forever, with ``wait=seconds`` it
  raises ``TimeoutError``;
* crops: ``camera_controls["ScalerCrop"]`` is (min, max, default) rectangles in sensor pixels, its max the
  sensor mode's whole field of view (``SENSOR_CROP``, which ``SCENE`` shows); ``ScalerCrop`` crops every stream
  alike; ``ScalerCrops`` (a list of rectangles, one per output stream in order — main, then lores) is advertised
  on a Pi 5 (PiSP) only — on a Pi 4 setting it is "not advertised by libcamera" (``RuntimeError``), as any unknown
  control in ``set_controls``; rectangles are clamped to the field of view; ``configure`` resets every crop to the
  whole field of view (picamera2 sets ``ScalerCrops`` there itself);
* ``RGB888`` arrays are B, G, R in memory (``BGR888``: R, G, B), as libcamera names them;
* ``capture_arrays(names)`` returns ``(arrays, metadata)`` of one and the same frame;
* ``Picamera2.global_camera_info()`` lists ``CAMERAS``; ``Picamera2(n)`` with no camera ``n`` raises ``IndexError``;
  an AI Camera (``Model`` imx500) adds the sensor's network output to each frame's metadata through the
  ``picamera2.devices.IMX500`` double (:mod:`.devices.imx500.imx500`).

Knobs for tests (module attributes): ``SCENE`` (a list of RGB frames, or a callable giving
the frame for a frame number), ``PLATFORM`` ("vc4" or "pisp"), ``STALLED`` (a
``threading.Event``: set it to stall the camera), ``INSTANCES`` (every camera made), ``CAMERAS`` (what is
connected: the Raspberry Pi camera module v2 — set ``CAMERAS = [AI_CAMERA]`` for the AI Camera).
"""

from __future__ import annotations

import threading
import time

import numpy as np

try:
    import simplejpeg  # noqa: F401  (the real picamera2 needs it for JPEG; its numpy ABI must match)
except ImportError:
    simplejpeg = None

SCENE: list | object = [np.full((480, 640, 3), 128, np.uint8)]
PLATFORM = "vc4"
STALLED = threading.Event()
INSTANCES: list = []
CAMERA_V2 = {"Model": "imx219", "Location": 2, "Rotation": 180, "Id": "/base/soc/i2c0mux/i2c@1/imx219@10", "Num": 0}
AI_CAMERA = {"Model": "imx500", "Location": 2, "Rotation": 0,
             "Id": "/base/axi/pcie@120000/rp1/i2c@88000/imx500@1a", "Num": 0}
CAMERAS: list = [CAMERA_V2]
SENSORS: dict = {}  # camera number → the IMX500 double that holds that camera's network (devices.imx500)
SENSOR_MAX_FPS = 120.0
SENSOR_CROP = (0, 0, 3280, 2464)  # the sensor mode's whole field of view (an IMX219's), what SCENE shows
KNOWN_CONTROLS = {"FrameRate", "FrameDurationLimits", "NoiseReductionMode", "ExposureTime", "AnalogueGain", "AeEnable",
                  "AwbEnable", "AwbMode", "Brightness", "Contrast", "Saturation", "Sharpness", "ScalerCrop"}
YUV_FORMATS = {"YUV420", "YVU420", "NV12", "NV21", "YUYV", "UYVY"}
BYTES_PER_PIXEL = {"RGB888": 3, "BGR888": 3, "XRGB8888": 4, "XBGR8888": 4, "YUV420": 1, "YVU420": 1}


class Preview:
    """picamera2.Preview, as far as teachcam uses it."""

    NULL, DRM, QT, QTGL = "null", "drm", "qt", "qtgl"


class ColorSpace:
    """libcamera.ColorSpace, as far as teachcam reads it."""

    def __init__(self, name: str, range_: str):
        self.name, self.range = name, f"Range.{range_}"

    def __str__(self) -> str:
        return self.name


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _stream(updates: dict | None, default: dict) -> dict | None:
    if updates is None:
        return None
    config = dict(default)
    for key, value in updates.items():
        if key not in ("format", "size"):
            raise ValueError("Bad key '" + key + "': valid stream configuration keys are ('format', 'size')")
        config[key] = tuple(value) if key == "size" else value
    return config


class Picamera2:
    platform = None  # set per instance from PLATFORM

    @staticmethod
    def global_camera_info() -> list[dict]:
        return [dict(camera) for camera in CAMERAS]

    def __init__(self, camera_num: int = 0):
        self.camera_num = camera_num
        self.model = CAMERAS[camera_num]["Model"]  # IndexError, as picamera2's, when there is no such camera
        self.platform = PLATFORM
        self.camera_config: dict | None = None
        self.started = False
        self.closed = False
        self.frames = 0
        self.captures = 0
        self.frame_rate = SENSOR_MAX_FPS
        self._next_frame = 0.0
        self.preview = None
        self.calls: list = []
        self.crops: dict = {}  # stream → (x, y, w, h) in sensor pixels
        INSTANCES.append(self)

    @property
    def camera_controls(self) -> dict:
        controls = {name: (None, None, None) for name in KNOWN_CONTROLS}
        controls["ScalerCrop"] = ((0, 0, 64, 64), SENSOR_CROP, SENSOR_CROP)
        if self.platform == "pisp":
            controls["ScalerCrops"] = ((0, 0, 64, 64), SENSOR_CROP, SENSOR_CROP)
        return controls

    def set_controls(self, controls) -> None:
        if not isinstance(controls, dict):
            raise RuntimeError(f"Cannot update controls with {type(controls)} type")
        for name, value in controls.items():
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
            if name == "ScalerCrop":
                self.crops = {stream: _clamp(value) for stream in ("main", "lores")}
            elif name == "ScalerCrops":
                rects = list(value)
                for stream, rect in zip(("main", "lores"), rects, strict=False):
                    self.crops[stream] = _clamp(rect)
        self.calls.append(("set_controls", dict(controls)))

    def create_preview_configuration(self, main=None, lores=None, raw=None, transform=None, colour_space=None,
                                     buffer_count=4, controls=None, display="main", encode="main", queue=True,
                                     sensor=None, use_case="preview"):
        config = {"use_case": use_case, "buffer_count": buffer_count, "queue": queue, "display": display,
                  "encode": encode, "transform": transform, "raw": raw, "sensor": sensor or {},
                  "colour_space": colour_space or ColorSpace("sYCC", "Full"),
                  "main": _stream(main or {}, {"format": "XBGR8888", "size": (640, 480)}),
                  "lores": _stream(lores, {"format": "YUV420", "size": (640, 480)}),
                  "controls": {"NoiseReductionMode": 1, "FrameDurationLimits": (100, 83333), **(controls or {})}}
        return config

    def configure(self, camera_config) -> None:
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        main, lores = camera_config["main"], camera_config["lores"]
        if lores is not None:
            main_w, main_h = main["size"]
            lores_w, lores_h = lores["size"]
            if lores_w > main_w or lores_h > main_h:
                raise RuntimeError("lores stream dimensions may not exceed main stream")
            if self.platform == "vc4" and lores["format"] not in YUV_FORMATS:
                raise RuntimeError("lores stream must be YUV")
        for name in camera_config["controls"]:
            if name not in self.camera_controls:
                raise RuntimeError(f"Control {name} is not advertised by libcamera")
        self.crops = {"main": SENSOR_CROP, "lores": SENSOR_CROP}
        config = {**camera_config}
        for name in ("main", "lores"):
            stream = config[name]
            if stream is None:
                continue
            width, height = stream["size"]
            if stream["format"] in YUV_FORMATS:
                width, height = width - width % 2, height - height % 2  # 4:2:0 needs even sizes
            stride = _align(width * BYTES_PER_PIXEL.get(stream["format"], 4), 64)
            rows = height * 3 // 2 if stream["format"] in YUV_FORMATS else height
            config[name] = {**stream, "size": (width, height), "stride": stride, "framesize": stride * rows}
        self.camera_config = config
        if "FrameRate" in config["controls"]:
            self.frame_rate = min(SENSOR_MAX_FPS, float(config["controls"]["FrameRate"]))

    def start_preview(self, preview=None, **kwargs) -> None:
        if self.preview is not None:
            raise RuntimeError("An event loop is already running")
        self.preview = (preview, kwargs)
        self.calls.append(("start_preview", preview, kwargs))

    def set_overlay(self, overlay) -> None:
        """Like DrmPreview.set_overlay: a started, configured preview with at least 2 buffers; RGBA (h, w, 4)."""
        if self.preview is None:
            raise RuntimeError("Preview must be started before setting an overlay")
        if self.camera_config is None:
            raise RuntimeError("Preview must be configured before setting an overlay")
        if self.camera_config["buffer_count"] < 2:
            raise RuntimeError("Need at least buffer_count=2 to set overlay")
        if overlay is not None:
            h, w, channels = overlay.shape  # a ValueError for anything but a 3-D array, as in picamera2
            if channels != 4 or overlay.dtype != np.uint8:
                raise ValueError("the overlay is RGBA uint8 (AB24)")
        self.calls.append(("set_overlay", None if overlay is None else overlay.copy()))

    def stream_configuration(self, name="main") -> dict:
        return self.camera_config[name]

    def start(self, config=None, show_preview=False) -> None:
        if config is not None:
            self.configure(config)
        if self.camera_config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True
        self.calls.append(("start",))
        self._next_frame = time.monotonic()

    def _wait_for_frame(self, wait) -> None:
        timeout = None if wait in (None, True) else float(wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        while STALLED.is_set() or not self.started:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError()
            time.sleep(0.01)
        delay = self._next_frame - time.monotonic()
        if delay > 0:
            if deadline is not None and time.monotonic() + delay > deadline:
                time.sleep(max(0.0, deadline - time.monotonic()))
                raise TimeoutError()
            time.sleep(delay)
        self._next_frame = max(self._next_frame + 1.0 / self.frame_rate, time.monotonic())

    def capture_array(self, name="main", wait=None, signal_function=None):
        return self.capture_arrays([name], wait=wait)[0][0]

    def capture_arrays(self, names=("main",), wait=None, signal_function=None):
        if self.closed:
            raise RuntimeError("Camera is closed")
        self._wait_for_frame(wait)
        self.frames += 1
        self.captures += 1
        scene = SCENE(self.frames) if callable(SCENE) else SCENE[(self.frames - 1) % len(SCENE)]
        metadata = {"ScalerCrops": [self.crops.get(n) for n in names], "ScalerCrop": self.crops.get("main")}
        sensor = SENSORS.get(self.camera_num) if self.model == "imx500" else None
        if sensor is not None:
            metadata.update(sensor.frame_metadata(scene, self.frames))
        return [self._make_array(name, scene) for name in names], metadata

    def _make_array(self, name: str, scene) -> np.ndarray:
        from PIL import Image

        stream = self.camera_config[name]
        width, height = stream["size"]
        x, y, w, h = self.crops.get(name, SENSOR_CROP)
        sx, sy = scene.shape[1] / SENSOR_CROP[2], scene.shape[0] / SENSOR_CROP[3]
        box = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(scene)).resize((width, height), Image.Resampling.BILINEAR,
                                                                              box=box))
        noise = np.random.default_rng(self.frames).integers(0, 256, height * 3 // 2 * stream["stride"], dtype=np.uint8)
        if stream["format"] == "YUV420":
            return rgb_to_yuv420(rgb, stream["stride"], noise)
        if stream["format"] == "RGB888":  # libcamera's RGB888: B, G, R bytes in memory
            rgb = rgb[:, :, ::-1]
        array = noise.reshape(-1)[: height * stream["stride"]].reshape(height, stream["stride"])
        array[:, : width * 3] = np.ascontiguousarray(rgb).reshape(height, width * 3)
        return np.asarray(array[:, : width * 3]).reshape(height, width, 3)

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.started = False
        self.closed = True


def _clamp(rect) -> tuple[int, int, int, int]:
    """A rectangle inside the sensor's field of view, as libcamera makes it."""
    x, y, w, h = (int(v) for v in rect)
    fx, fy, fw, fh = SENSOR_CROP
    x, y = min(max(x, fx), fx + fw - 64), min(max(y, fy), fy + fh - 64)
    return (x, y, max(64, min(w, fx + fw - x)), max(64, min(h, fy + fh - y)))


def rgb_to_yuv420(rgb: np.ndarray, stride: int, padding: np.ndarray) -> np.ndarray:
    """What the ISP writes for a YUV420 stream: full-range (sYCC) I420 planes, rows padded to ``stride``
    bytes, luma rows then U rows then V rows (chroma rows ``stride / 2`` bytes), shaped as picamera2's
    ``request.make_array`` shapes it: ``(height * 3 / 2, stride)``."""
    from PIL import Image

    height, width = rgb.shape[:2]
    ycc = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("YCbCr"), np.float32)
    chroma = ycc[:, :, 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    chroma = np.clip(np.rint(chroma), 0, 255).astype(np.uint8)
    flat = np.array(padding, np.uint8).reshape(-1)[: height * 3 // 2 * stride]
    luma_bytes, chroma_bytes = height * stride, (height // 2) * (stride // 2)
    flat[:luma_bytes].reshape(height, stride)[:, :width] = ycc[:, :, 0].astype(np.uint8)
    for plane, offset in ((0, luma_bytes), (1, luma_bytes + chroma_bytes)):
        rows = flat[offset:offset + chroma_bytes].reshape(height // 2, stride // 2)
        rows[:, : width // 2] = chroma[..., plane]
    return flat.reshape(height * 3 // 2, stride)
