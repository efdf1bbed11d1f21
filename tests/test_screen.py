"""The attached screen: picamera2's DRM preview with our overlay, or the Linux framebuffer — no display here,
so a picamera2 double (tests/fakes/picamera2) and a framebuffer that is a plain file with a sysfs folder."""

from __future__ import annotations

import importlib
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import ArraySource
from teachcam.edge.devices.screen import Framebuffer, ScreenPort, Shown, render_overlay, to_pixels
from teachcam.edge.messages import CameraTrouble, Enroll, Enrolled
from teachcam.edge.ports import View
from tests.helpers import augmented_views, wait_for

FAKES = Path(__file__).parent / "fakes"


def fake_framebuffer(folder: Path, width: int, height: int, bits: int, padding: int = 64) -> tuple[Path, Path]:
    """A framebuffer as the kernel describes one: the device (a file here) and its sysfs folder."""
    stride = width * bits // 8 + padding  # lines may be wider than the visible width
    sysfs = folder / "sysfs"
    sysfs.mkdir(parents=True)
    (sysfs / "virtual_size").write_text(f"{width},{height}\n")
    (sysfs / "bits_per_pixel").write_text(f"{bits}\n")
    (sysfs / "stride").write_text(f"{stride}\n")
    device = folder / "fb0"
    device.write_bytes(bytes(stride * height))
    return device, sysfs


def read_framebuffer(device: Path, width: int, height: int, bits: int, stride: int) -> np.ndarray:
    raw = np.frombuffer(device.read_bytes(), np.uint8).reshape(height, stride)[:, : width * bits // 8]
    if bits == 32:
        bgra = raw.reshape(height, width, 4)
        return np.stack([bgra[..., 2], bgra[..., 1], bgra[..., 0]], axis=-1)
    value = raw.reshape(height, width, 2).view("<u2")[..., 0].astype(np.uint32)
    return np.stack([(value >> 11) << 3, ((value >> 5) & 63) << 2, (value & 31) << 3], axis=-1).astype(np.uint8)


def test_the_overlay_is_drawn_once_by_one_function(tmp_path):
    shown = Shown("mug", 87, (("mug", 87, 12), ("pen", 9, 4), ("keys", 4, 7)), "+1 mug  (12)", 0, "", "int8 · CPU · 30 fps")
    overlay = render_overlay(shown, (640, 480), ["mug", "pen", "keys"])
    assert overlay.mode == "RGBA" and overlay.size == (640, 480)
    alpha = np.asarray(overlay)[..., 3]
    assert alpha[:40, :120].max() == 255 and alpha[200:260, 300:340].max() > 0  # the label; the banner
    assert alpha[70:150, 460:640].max() == 0  # the picture shows through elsewhere
    overlay.save(tmp_path / "overlay.png")  # for a person to look at


@pytest.mark.parametrize("bits", [16, 32])
def test_the_framebuffer_holds_the_picture_with_the_overlay(tmp_path, bits):
    device, sysfs = fake_framebuffer(tmp_path, 800, 480, bits)
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :320] = (0, 200, 0)  # green left half, blue right half: a garbled picture would mix them
    frame[:, 320:] = (0, 0, 200)
    port = ScreenPort(Framebuffer(str(device), str(sysfs), max_fps=100), ["mug", "pen"], "int8 · CPU")
    view = View("mug", "mug", 0.95, 0.9, {"mug": 0.9, "pen": 0.1}, {"mug": 3, "pen": 2})
    port.update(view, frame)
    stride = int((sysfs / "stride").read_text())
    screen = read_framebuffer(device, 800, 480, bits, stride)
    Image.fromarray(screen).save(tmp_path / f"screen{bits}.png")
    # 640x480 scaled to fit 800x480: 640 wide, centred, 80-pixel black borders left and right.
    assert screen[:, :70].max() == 0 and screen[:, -70:].max() == 0
    left, right = screen[240:300, 300:380].astype(int), screen[240:300, 420:500].astype(int)
    assert abs(left[..., 1].mean() - 200) < 10 and left[..., 2].mean() < 10  # green stays green
    assert abs(right[..., 2].mean() - 200) < 10 and right[..., 1].mean() < 10  # blue stays blue
    label = screen[5:60, 90:200]  # top-left of the picture: the class name in its colour, on a dark box
    assert (np.abs(label.astype(int) - (230, 57, 70)).sum(axis=-1) < 60).sum() > 50  # mug is class 0: its colour
    port.close()


def test_no_screen_is_one_line_and_the_daemon_classifies(bundle_path, tmp_path, caplog):
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "frames": 10, "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off", "screen": True,
                                           "screen_device": str(tmp_path / "no-fb")}})
    daemon = Daemon(config, source=ArraySource(augmented_views("chelsea.png", 2, seed=70), loop=True), keyboard=False,
                    stdout=io.StringIO()).start()
    try:
        assert daemon.run() == 0 and daemon.stats.frames == 10
    finally:
        daemon.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("screen:")]
    assert len(lines) == 1 and "running without it" in lines[0]


def test_a_screen_that_vanishes_mid_run_is_one_line_not_a_crash(tmp_path, caplog):
    device, sysfs = fake_framebuffer(tmp_path, 320, 240, 32)
    backend = Framebuffer(str(device), str(sysfs), max_fps=1000)
    port = ScreenPort(backend, ["mug"])
    frame = np.full((240, 320, 3), 90, np.uint8)
    view = View("mug", "mug", 0.9, 0.9, {"mug": 0.9}, {"mug": 1})
    port.update(view, frame)
    import os

    os.close(backend._fd)  # the display was unplugged: the device is gone
    with caplog.at_level(logging.ERROR):
        for _ in range(20):
            port.update(view, frame)
            time.sleep(0.002)
    assert sum("screen:" in r.getMessage() for r in caplog.records) == 1


@pytest.fixture
def fake_picamera2(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    module = importlib.import_module("picamera2")
    module.INSTANCES.clear()
    module.STALLED.clear()
    return module


def test_with_the_pi_camera_the_overlay_goes_to_picamera2s_drm_preview_only_when_it_changes(
        bundle_path, tmp_path, fake_picamera2):
    cat = augmented_views("chelsea.png", 1, seed=71)[0]
    fake_picamera2.SCENE = [cat]
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat", "cup"],
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "camera": {"source": "picamera2", "fps": 120.0, "gate": 0.0},
                                "output": {"terminal": "off", "json": "off", "screen": True}})
    daemon = Daemon(config, keyboard=False, stdout=io.StringIO()).start()
    import threading

    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        assert wait_for(lambda: daemon.stats.frames >= 5, timeout=20)
        camera = fake_picamera2.INSTANCES[-1]
        kinds = [c[0] for c in camera.calls]
        assert kinds.index("start_preview") < kinds.index("start")  # the DRM preview starts with the camera
        assert camera.calls[kinds.index("start_preview")][1] == fake_picamera2.Preview.DRM

        def overlays():
            return [c[1] for c in camera.calls if c[0] == "set_overlay"]

        assert wait_for(lambda: len(overlays()) >= 1)
        assert overlays()[0].shape == (480, 640, 4) and overlays()[0].dtype == np.uint8  # the main stream's size
        start = daemon.stats.frames
        assert wait_for(lambda: daemon.stats.frames >= start + 300, timeout=30)  # 300 frames of a steady "unknown"
        assert len(overlays()) == 1  # never re-sent while nothing changes
        daemon.post(Enroll(label="cat", via="test"))
        assert wait_for(lambda: len(overlays()) >= 2)  # the class and the banner changed
        assert wait_for(lambda: len(overlays()) >= 3, timeout=5)  # the banner went away after 2 s
    finally:
        daemon.stop()
        runner.join(10)
        daemon.close()


def recording_backend(drawn: list):
    """A screen backend that keeps every overlay it is given in ``drawn``."""

    class Backend:
        name = "recorder"

        def overlay(self, image):
            drawn.append(image)
            return True

        def frame(self, frame, overlay):
            pass

        def close(self):
            pass

    return Backend()


def test_camera_trouble_shows_on_the_screen_without_a_frame(tmp_path):
    drawn = []
    port = ScreenPort(recording_backend(drawn), ["cat"])
    port.update(View("cat", "cat", 0.9, 0.9, {"cat": 0.9}, {"cat": 1}), np.zeros((240, 320, 3), np.uint8))
    port.event(CameraTrouble(message="the camera delivered no frame in 5 s (stalled)"))
    assert len(drawn) == 2 and np.asarray(drawn[1])[110:140, :, 0].max() > 150  # a red strip across the middle
    time.sleep(0.3)  # the overlay is redrawn at most 4 times a second
    port.event(Enrolled(label="cat", count=2))
    assert len(drawn) == 3


def test_to_pixels_knows_the_two_formats():
    rgb = Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8))
    assert to_pixels(rgb, 16).tolist() == [[0xF800, 0x07E0, 0x001F]]
    assert to_pixels(rgb, 32)[0, 0].tolist()[:3] == [0, 0, 255]  # XRGB8888 little-endian: B, G, R, X


def test_the_pairing_notice_shows_as_a_qr_code_a_phone_can_scan_then_goes():
    """The web page's login link on the HDMI screen: the text, and a QR code that decodes to the link (OpenCV's
    detector standing in for the phone's camera), over the picture; after its seconds, the class again."""
    import cv2

    from teachcam.edge.messages import NoticeShown

    drawn = []
    link = "http://teachcam-pi:8080/login?token=" + "Ab3_" * 11
    port = ScreenPort(recording_backend(drawn), ["cat"])
    picture = np.asarray(Image.fromarray(augmented_views("chelsea.png", 1, seed=5)[0]).resize((640, 480)))
    port.update(View("cat", "cat", 0.9, 0.9, {"cat": 0.9}, {"cat": 1}), picture)
    port.event(NoticeShown(text=f"teachcam web\nhttp://teachcam-pi:8080/\ntoken:\n{'Ab3_' * 11}", seconds=0.6,
                           link=link))
    assert len(drawn) == 2
    shown = Image.fromarray(picture).convert("RGBA")
    shown.alpha_composite(drawn[1])
    decoded, _, _ = cv2.QRCodeDetector().detectAndDecode(np.asarray(shown.convert("RGB")))
    assert decoded == link
    time.sleep(0.7)
    port.update(View("cat", "cat", 0.9, 0.9, {"cat": 0.9}, {"cat": 1}), picture)
    assert len(drawn) == 3 and drawn[2].tobytes() == drawn[0].tobytes()  # gone: the overlay as before


def test_the_focus_region_is_outlined_on_the_screen():
    """#28: the attached screen shows where the model looks — an outline, the picture inside left as it is."""
    from teachcam.edge.devices.screen import REGION

    shown = Shown("mug", 87, (), region=(0.25, 0.5, 0.75, 1.0))
    overlay = np.asarray(render_overlay(shown, (640, 480), ["mug"]))
    assert tuple(overlay[360, 160][:3]) == REGION and overlay[360, 160][3] == 255  # the left edge
    assert tuple(overlay[240, 320][:3]) == REGION  # the top edge
    assert overlay[360, 320][3] == 0  # inside: the camera's picture shows through
    assert overlay[100, 600][3] == 0 and not np.any(np.all(overlay[:, :, :3] == REGION, axis=2)[:200, 500:])
    plain = np.asarray(render_overlay(Shown("mug", 87, ()), (640, 480), ["mug"]))
    assert not np.any(np.all(plain[:, :, :3] == REGION, axis=2) & (plain[:, :, 3] == 255))
