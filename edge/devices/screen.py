"""The attached screen (HDMI or DSI): the camera's picture full-screen, the prediction drawn over it.

No desktop needed. One function, :func:`render_overlay`, draws what a person across the room
reads — the shown class, large, in its LED's colour; the confidence; a bar per class with its
example count; "unknown"; a short banner when an example is enrolled; camera trouble; a small
status line; a notice (the web page's pairing link, with a QR code a phone can scan) — and the
same image serves every backend:

* :class:`DrmOverlay` — with the Pi camera: picamera2's own DRM preview shows the camera stream
  (the GPU scales it; no CPU) and the overlay is set with ``Picamera2.set_overlay`` (an RGBA
  array), only when what it shows changes — never per frame.
* :class:`Framebuffer` — with any other source (USB webcam, file, demo): each frame, scaled to
  fit, with the overlay composited, written to the Linux framebuffer (``/dev/fb0``; geometry and
  pixel format from ``/sys/class/graphics/fb0``), at most ``max_fps`` times a second.

:class:`ScreenPort` is the port: it runs behind a mailbox like every port, so a slow screen
drops frames, never the camera loop's time. With no screen at all it is one line at start; a
screen that vanishes mid-run is one line, and it is looked for again every 10 s.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from teachcam.edge.devices.camera import Picamera2Source
from teachcam.edge.errors import ScreenError
from teachcam.edge.ports import Port

log = logging.getLogger(__name__)
# Class i's colour — the order of the config's classes, which is the LEDs' order.
PALETTE = [(230, 57, 70), (42, 157, 143), (244, 162, 97), (69, 123, 157), (131, 56, 236), (6, 214, 160),
           (255, 0, 110), (58, 134, 255), (233, 196, 106)]
UNKNOWN = (200, 200, 200)
REGION = (255, 210, 122)  # the focus region's outline (the page's colour)
BANNER_SECONDS = 2.0
STEADY_POINTS = 10  # a shown percentage moves only when the value moved this much: no redraw for jitter
OVERLAY_MAX_FPS = 4.0  # a person reads a label, not a flicker: the overlay is redrawn at most this often


@dataclass(frozen=True)
class Shown:
    """Everything the overlay shows; it is redrawn only when this changes."""

    label: str
    confidence: int  # percent
    bars: tuple = ()  # (class, percent, examples)
    banner: str = ""
    banner_index: int = -1
    trouble: str = ""
    status: str = ""
    notice: tuple = ()  # lines of text
    qr: tuple = ()  # the notice's link as QR modules: rows of 0/1, quiet zone included
    region: tuple | None = None  # the focus region, outlined on the picture


def qr_modules(link: str) -> tuple:
    """``link`` as a QR code's modules (with a 2-module quiet zone), or () without the optional ``segno`` package
    (installed with the web extra, which is what sends a link)."""
    try:
        import segno
    except ImportError:
        return ()
    try:
        return tuple(tuple(row) for row in segno.make(link, error="l").matrix_iter(scale=1, border=2))
    except Exception as exc:  # segno refuses what no QR code can hold (a very long text): the text still shows
        log.warning("screen: no QR code for the notice's link (%s)", exc)
        return ()


def _draw_notice(draw: ImageDraw.ImageDraw, shown: Shown, size: tuple[int, int], unit: int) -> None:
    """The notice in a dark panel across the middle: the QR code (black on white, whole modules) left of the
    text."""
    width, height = size
    top, bottom = height // 6, height - height // 6
    draw.rectangle((0, top, width, bottom), fill=(0, 0, 0, 225))
    left = unit
    if shown.qr:
        modules = len(shown.qr)
        scale = max(1, (bottom - top - 2 * unit) // modules)
        y0 = top + (bottom - top - modules * scale) // 2
        for y, row in enumerate(shown.qr):
            for x, dark in enumerate(row):
                draw.rectangle((left + x * scale, y0 + y * scale, left + (x + 1) * scale - 1, y0 + (y + 1) * scale - 1),
                               fill=(0, 0, 0, 255) if dark else (255, 255, 255, 255))
        left += modules * scale + unit
    lines = shown.notice[:8]
    font = _font(max(8, min(unit * 3 // 2, (bottom - top - unit) // max(1, len(lines)) * 3 // 4)))
    y, line_height, room = top + unit // 2, draw.textbbox((0, 0), "Ag", font=font)[3] + unit // 4, width - left - unit // 2
    for line in lines:
        # a long line (the token) is cut where the screen ends, in pieces: nothing of it is hidden
        while line:
            cut = len(line)
            while cut > 1 and draw.textlength(line[:cut], font=font) > room:
                cut -= 1
            draw.text((left, y), line[:cut], font=font, fill=(255, 255, 255, 255))
            y += line_height
            line = line[cut:]


def class_colour(index: int | None) -> tuple[int, int, int]:
    return UNKNOWN if index is None or index < 0 else PALETTE[index % len(PALETTE)]


def _font(size: int):
    return ImageFont.load_default(size=max(8, size))  # Pillow's own scalable font: nothing to install


def render_overlay(shown: Shown, size: tuple[int, int], classes: list[str]) -> Image.Image:
    """The overlay for ``size`` (the picture's size), RGBA, transparent where the picture shows through."""
    width, height = size
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    unit = max(8, height // 24)
    index = classes.index(shown.label) if shown.label in classes else None
    big = _font(unit * 3)
    text = shown.label if shown.label != "unknown" else "unknown"
    box = draw.textbbox((0, 0), text, font=big)
    draw.rounded_rectangle((unit // 2, unit // 2, unit + box[2] + unit * 7, unit * 4 + unit // 2), radius=unit // 2,
                           fill=(0, 0, 0, 150))
    draw.text((unit, unit // 2), text, font=big, fill=class_colour(index) + (255,))
    if shown.label != "unknown":
        draw.text((unit * 2 + box[2], unit * 2), f"{shown.confidence}%", font=_font(unit * 3 // 2),
                  fill=(255, 255, 255, 230))
    bar_font, row = _font(unit), unit + unit // 2
    top = height - row * len(shown.bars) - row - unit // 2
    if shown.bars:
        draw.rectangle((0, top - unit // 2, width // 2, height), fill=(0, 0, 0, 130))
    for i, (name, percent, count) in enumerate(shown.bars):
        y = top + i * row
        colour = class_colour(classes.index(name) if name in classes else None)
        draw.text((unit // 2, y), f"{name[:14]}", font=bar_font, fill=(255, 255, 255, 240))
        left, right = unit * 8, width // 2 - unit * 3
        draw.rectangle((left, y + 2, right, y + unit), outline=colour + (200,))
        draw.rectangle((left, y + 2, left + int((right - left) * percent / 100), y + unit), fill=colour + (220,))
        draw.text((right + unit // 3, y), f"{count}", font=bar_font, fill=(255, 255, 255, 240))
    if shown.status:
        draw.text((unit // 2, height - row), shown.status, font=_font(unit * 3 // 4), fill=(255, 255, 255, 200))
    if shown.banner:
        colour = class_colour(shown.banner_index)
        banner_font = _font(unit * 2)
        box = draw.textbbox((0, 0), shown.banner, font=banner_font)
        x = (width - box[2]) // 2
        draw.rounded_rectangle((x - unit, height // 3, x + box[2] + unit, height // 3 + unit * 3), radius=unit // 2,
                               fill=colour + (210,))
        draw.text((x, height // 3 + unit // 2), shown.banner, font=banner_font, fill=(255, 255, 255, 255))
    if shown.region:  # where the model looks: outlined, the rest of the picture left as it is
        x0, y0, x1, y1 = (round(v * s) for v, s in zip(shown.region, (width, height, width, height), strict=True))
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=REGION + (255,), width=max(2, unit // 4))
        draw.text((x0 + unit // 3, max(0, y0 - unit - 2)), "focus", font=_font(unit), fill=REGION + (255,))
    if shown.trouble:
        draw.rectangle((0, height // 2 - unit, width, height // 2 + unit * 2), fill=(180, 0, 0, 220))
        draw.text((unit, height // 2 - unit // 2), f"camera: {shown.trouble}"[:80], font=_font(unit * 3 // 2),
                  fill=(255, 255, 255, 255))
    if shown.notice:
        _draw_notice(draw, shown, size, unit)
    return image


# -- backends -----------------------------------------------------------------------------------------

class DrmOverlay:
    """picamera2's DRM preview shows the camera; only the overlay is ours (``set_overlay``)."""

    name = "picamera2 DRM preview"

    def __init__(self, camera_of, size: tuple[int, int]):
        self.camera_of = camera_of  # the source's current Picamera2 (it is replaced when the camera is reopened)
        self.size = size  # the preview shows the main stream: the overlay is drawn at its size and scaled with it

    def overlay(self, image: Image.Image) -> bool:
        camera = self.camera_of()
        if camera is None:
            return False
        camera.set_overlay(np.asarray(image))
        return True

    def frame(self, frame: np.ndarray, overlay: Image.Image | None) -> None:
        pass  # the GPU shows the camera stream

    def close(self) -> None:
        pass


@dataclass
class Geometry:
    width: int
    height: int
    bits_per_pixel: int
    stride: int


def framebuffer_geometry(sysfs: str | Path) -> Geometry:
    """Size, pixel depth and line stride of a framebuffer, from its sysfs folder (e.g. /sys/class/graphics/fb0).

    Raises:
        ScreenError: no such framebuffer, or a pixel format teachcam cannot write (16 and 32 bits can be).
    """
    folder = Path(sysfs)
    try:
        width, height = (int(v) for v in (folder / "virtual_size").read_text().strip().split(","))
        bits = int((folder / "bits_per_pixel").read_text().strip())
        stride = int((folder / "stride").read_text().strip()) if (folder / "stride").exists() else width * bits // 8
    except (OSError, ValueError) as exc:
        raise ScreenError(f"no framebuffer described at {folder} ({exc})") from None
    if bits not in (16, 32):
        raise ScreenError(f"{folder}: {bits} bits per pixel; teachcam draws 16 (RGB565) or 32 (XRGB8888)")
    return Geometry(width, height, bits, stride)


def to_pixels(image: Image.Image, bits: int) -> np.ndarray:
    """RGB → the framebuffer's little-endian pixels: RGB565 (16 bits) or XRGB8888 (32 bits: bytes B, G, R, X)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if bits == 32:  # Pillow's packer, in C
        return np.frombuffer(image.tobytes("raw", "BGRX"), np.uint8).reshape(image.height, image.width, 4)
    rgb = np.asarray(image)
    r, g, b = (rgb[..., i].astype(np.uint16) for i in range(3))
    return ((r >> 3) << 11 | (g >> 2) << 5 | (b >> 3)).astype("<u2")


def _boxes(overlay: Image.Image, bands: int = 8) -> list[tuple[int, int, int, int]]:
    """The parts of an RGBA overlay that are not fully transparent, as the boxes of horizontal bands."""
    alpha = overlay.getchannel("A")
    boxes = []
    for i in range(bands):
        top, bottom = overlay.height * i // bands, overlay.height * (i + 1) // bands
        found = alpha.crop((0, top, overlay.width, bottom)).getbbox()
        if found:
            boxes.append((found[0], top + found[1], found[2], top + found[3]))
    return boxes


class Framebuffer:
    """Frames and the overlay written to a Linux framebuffer, scaled to fit, at most ``max_fps`` a second."""

    def __init__(self, device: str = "/dev/fb0", sysfs: str | None = None, max_fps: float = 5.0):
        self.device = device
        self.sysfs = sysfs or f"/sys/class/graphics/{Path(device).name}"
        self.geometry = framebuffer_geometry(self.sysfs)
        self.name = f"framebuffer {device} ({self.geometry.width}x{self.geometry.height}, "\
                    f"{self.geometry.bits_per_pixel} bits)"
        self.interval = 1.0 / max_fps
        self._fd = self._open()
        self._last = 0.0
        self._box: tuple | None = None
        self._rows: np.ndarray | None = None
        self._overlay_scaled: tuple | None = None
        self.frames_written = 0

    def _open(self) -> int:
        try:
            return os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise ScreenError(f"cannot open {self.device} ({exc.strerror}); is the user in group video?") from None

    def overlay(self, image: Image.Image) -> bool:
        self._overlay_scaled = None  # rescaled at the next frame
        return True

    def frame(self, frame: np.ndarray, overlay: Image.Image | None) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        g = self.geometry
        picture = Image.fromarray(np.ascontiguousarray(frame)).convert("RGB")
        scale = min(g.width / picture.width, g.height / picture.height)
        w, h = max(1, int(picture.width * scale)), max(1, int(picture.height * scale))
        x, y = (g.width - w) // 2, (g.height - h) // 2
        picture = picture.resize((w, h), Image.Resampling.BILINEAR)
        if overlay is not None:
            if self._overlay_scaled is None or self._overlay_scaled[0] is not overlay or \
                    self._overlay_scaled[1][0].size != (w, h):
                scaled = overlay.resize((w, h), Image.Resampling.BILINEAR)
                # Composite only where the overlay draws (label, bars, banner): most of the picture is untouched.
                self._overlay_scaled = (overlay, (scaled, _boxes(scaled)))
            scaled, boxes = self._overlay_scaled[1]
            for box in boxes:
                piece = scaled.crop(box)
                picture.paste(piece, box[:2], piece)
        pixels = to_pixels(picture, g.bits_per_pixel)
        bytes_per_pixel = g.bits_per_pixel // 8
        if self._box != (x, y, w, h):  # the picture moved or first frame: clear the screen once
            os.pwrite(self._fd, bytes(g.stride * g.height), 0)
            self._box, self._rows = (x, y, w, h), np.zeros((h, g.stride), np.uint8)
        # The picture's lines, full stride wide (borders stay black), in ONE write: a write per line would
        # hand the GIL back and forth with the camera loop a thousand times a frame.
        self._rows[:, x * bytes_per_pixel:(x + w) * bytes_per_pixel] = \
            np.ascontiguousarray(pixels).view(np.uint8).reshape(h, w * bytes_per_pixel)
        os.pwrite(self._fd, self._rows.data, y * g.stride)
        self.frames_written += 1

    def reopen(self) -> None:
        self.close()
        self.geometry = framebuffer_geometry(self.sysfs)
        self._fd, self._box = self._open(), None

    def close(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass


def open_backend(source, device: str, max_fps: float):
    """The backend for this camera source: picamera2's DRM preview for the Pi camera, else the framebuffer.

    Raises:
        ScreenError: no screen (no framebuffer, or one that cannot be opened).
    """
    if isinstance(source, Picamera2Source):
        source.preview = True  # started with the camera (and again whenever the camera is reopened)
        return DrmOverlay(lambda: source.camera, source.size)
    return Framebuffer(device, max_fps=max_fps)


@dataclass
class _State:
    fps: float = 0.0
    runs_on: str = ""
    banner: str = ""
    banner_index: int = -1
    banner_until: float = 0.0
    trouble: str = ""
    counts: dict = field(default_factory=dict)
    notice: tuple = ()
    qr: tuple = ()
    notice_until: float = 0.0


class ScreenPort(Port):
    """The attached screen as a port (see the module docstring)."""

    name = "screen"
    view_interval = 0.05  # a screen needs no more than ~20 views a second: it is not even woken for the others

    def __init__(self, backend, classes: list[str], runs_on: str = ""):
        self.backend, self.classes = backend, list(classes)
        self.state = _State(runs_on=runs_on)
        self.redraws = 0
        self._shown: Shown | None = None
        self._overlay: Image.Image | None = None
        self._failed_at = 0.0
        self._size: tuple[int, int] | None = None
        self._view = None
        self._percents: dict[str, int] = {}
        self._last_draw = -1e9

    def _steady(self, key: str, value: float) -> int:
        """``value`` (0..1) as a percentage that only moves by STEADY_POINTS or more."""
        percent, shown = round(100 * value), self._percents.get(key)
        if shown is None or abs(percent - shown) >= STEADY_POINTS or percent in (0, 100) and percent != shown:
            self._percents[key] = shown = percent
        return shown

    def _what(self, view) -> Shown:
        now = time.monotonic()
        bars = tuple((name, self._steady(name, view.confidences.get(name, 0.0)), view.counts.get(name, 0))
                     for name in list(dict.fromkeys([*self.classes, *view.counts]))[:6])
        state = self.state
        status = " · ".join(part for part in (state.runs_on, f"camera {state.fps:.0f} fps" if state.fps else "") if part)
        notice = now < state.notice_until
        return Shown(view.label, self._steady("", view.confidence), bars,
                     state.banner if now < state.banner_until else "", state.banner_index, state.trouble, status,
                     state.notice if notice else (), state.qr if notice else (), getattr(view, "region", None))

    def update(self, view, frame=None) -> None:
        self._view = view
        if self._failed_at:
            if time.monotonic() - self._failed_at < 10.0:
                return  # the screen went away: look for it again every 10 s
            if hasattr(self.backend, "reopen"):
                try:
                    self.backend.reopen()
                except ScreenError:
                    self._failed_at = time.monotonic()
                    return
        try:
            if frame is not None:
                self._size = getattr(self.backend, "size", None) or (frame.shape[1], frame.shape[0])
            shown = self._what(view)
            now = time.monotonic()
            due = (now - self._last_draw >= 1.0 / OVERLAY_MAX_FPS or shown.trouble != getattr(self._shown, "trouble", "")
                   or shown.notice != getattr(self._shown, "notice", ()))
            if shown != self._shown and self._size is not None and due:
                self._last_draw = now
                self._overlay = render_overlay(shown, self._size, self.classes)
                if self.backend.overlay(self._overlay):
                    self._shown = shown
                    self.redraws += 1
            if frame is not None:
                self.backend.frame(frame, self._overlay)
            if self._failed_at:
                self._failed_at = 0.0
                log.warning("screen: %s is back", self.backend.name)
        except (OSError, RuntimeError) as exc:
            if not self._failed_at:
                log.error("screen: %s failed (%s); the daemon carries on, looking for it every 10 s",
                          self.backend.name, exc)
            self._failed_at = time.monotonic()
            self._shown = None

    def event(self, event) -> None:
        state = self.state
        if event.kind == "enrolled":
            state.banner = f"+1 {event.label}  ({event.count})"
            state.banner_index = self.classes.index(event.label) if event.label in self.classes else -1
            state.banner_until = time.monotonic() + BANNER_SECONDS
        elif event.kind == "camera_trouble":
            state.trouble = event.message
        elif event.kind == "camera_back":
            state.trouble = ""
        elif event.kind == "stats":
            state.fps = event.camera_fps  # what the camera delivers (the model's capacity is in `teachcam status`)
        elif event.kind == "notice":
            state.notice = tuple(event.text.splitlines())
            state.qr = qr_modules(event.link) if event.link else ()
            state.notice_until = time.monotonic() + event.seconds
        else:
            return
        if self._view is not None:  # show it now: no frame may come (camera trouble)
            self.update(self._view)

    def close(self) -> None:
        self.backend.close()
