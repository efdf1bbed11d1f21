"""The Raspberry Pi camera path against a picamera2 double as strict as a Pi 4 / Pi 5 (tests/fakes/picamera2)."""

from __future__ import annotations

import importlib
import io
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import NotifyListener
from PIL import Image

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import make_source
from teachcam.edge.devices.grabber import FrameGrabber
from teachcam.edge.errors import CameraError
from teachcam.edge.samples import sample_photos

FAKES = Path(__file__).parent / "fakes"


@pytest.fixture
def fake(monkeypatch):
    """The picamera2 double, imported as `picamera2`, reset for each test."""
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    module = importlib.import_module("picamera2")
    assert module.__file__.startswith(str(FAKES))
    module.PLATFORM, module.INSTANCES[:] = "vc4", []
    module.STALLED.clear()
    yield module
    module.STALLED.clear()


def photo(name="chelsea.png", size=(342, 256)) -> np.ndarray:
    return np.asarray(Image.open(sample_photos((name,))[0]).convert("RGB").resize(size, Image.Resampling.BILINEAR))


@pytest.mark.parametrize("platform", ["vc4", "pisp"])
def test_lores_rows_are_sliced_to_the_picture_not_the_stride(fake, platform):
    fake.PLATFORM = platform
    scene = photo()
    fake.SCENE = [scene]
    source = make_source("picamera2")
    source.open()
    try:
        assert source.stream["size"] == (342, 256) and source.stream["stride"] == 384  # 64-byte aligned rows
        frame = source.read()
    finally:
        source.close()
    assert frame.shape == (256, 342, 3)  # not 384 wide: the 42 padding columns (noise) are gone
    assert np.abs(frame.astype(int) - scene).mean() < 3  # the picture itself, chroma subsampling aside


def test_a_centred_object_stays_centred_through_the_crop(fake, bundle_path):
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.preprocess import Preprocessor

    scene = np.zeros((256, 342, 3), np.uint8)
    scene[:, 169:173] = 255  # a white bar in the middle of the lores picture
    fake.SCENE = [scene]
    source = make_source("picamera2")
    source.open()
    frame = source.read()
    source.close()
    pixels = Preprocessor.from_manifest(load_bundle(bundle_path).preprocessing)(frame)
    columns = np.nonzero(pixels[..., 0].mean(axis=0) > 128)[0]
    assert abs(columns.mean() - (pixels.shape[1] - 1) / 2) <= 1.0, columns  # 21 px right of centre before


def test_full_range_stream_keeps_its_contrast(fake):
    scene = np.zeros((256, 342, 3), np.uint8)
    scene[:, :171] = 235
    scene[:, 171:] = 20
    fake.SCENE = [scene]
    source = make_source("picamera2")
    source.open()
    frame = source.read()
    source.close()
    # OpenCV's I420 conversion (limited range) would give 255 and 5: contrast stretched by 1.16.
    assert abs(int(frame[:, 10:160].mean()) - 235) <= 2 and abs(int(frame[:, 180:330].mean()) - 20) <= 2


def test_the_sensor_is_asked_for_the_configured_frame_rate(fake):
    source = make_source("picamera2", fps=15)
    source.open()
    try:
        camera = fake.INSTANCES[-1]
        assert camera.camera_config["controls"]["FrameRate"] == 15.0
        assert camera.frame_rate == 15.0  # not the sensor mode's 120 fps
        started = time.monotonic()
        for _ in range(4):
            source.read()
        assert time.monotonic() - started >= 3 / 15 - 0.02
    finally:
        source.close()


def test_a_main_stream_smaller_than_the_lores_default_still_starts(fake):
    source = make_source("picamera2", width=320, height=240)
    source.open()  # picamera2 refuses lores > main; teachcam asks for lores = main instead
    try:
        assert source.read().shape == (240, 320, 3)
    finally:
        source.close()


def test_the_real_rules_refuse_what_a_pi_refuses(fake):
    camera = fake.Picamera2()
    with pytest.raises(RuntimeError, match="may not exceed main"):
        camera.configure(camera.create_preview_configuration(main={"size": (320, 240)}, lores={"size": (342, 256)}))
    with pytest.raises(RuntimeError, match="must be YUV"):
        camera.configure(camera.create_preview_configuration(lores={"size": (320, 240), "format": "RGB888"}))
    with pytest.raises(ValueError, match="Bad key"):
        camera.create_preview_configuration(lores={"size": (320, 240), "fromat": "YUV420"})
    with pytest.raises(RuntimeError, match="not advertised"):
        camera.configure(camera.create_preview_configuration(controls={"FrameRat": 30}))


def test_a_stalled_capture_times_out_and_the_camera_is_reopened(fake, caplog):
    fake.STALLED.set()
    source = make_source("picamera2")
    source.timeout = 0.3
    grabber = FrameGrabber(source, max_backoff=0.2).start()
    try:
        deadline = time.monotonic() + 10
        while len(fake.INSTANCES) < 2:  # first camera timed out, closed, and a new one opened
            assert time.monotonic() < deadline, "a stalled camera was never reopened"
            time.sleep(0.05)
        assert fake.INSTANCES[0].closed
        fake.STALLED.clear()
        assert grabber.latest(timeout=5.0) is not None  # frames again
    finally:
        grabber.stop()
    assert "delivered no frame in 0.3 s" in caplog.text


def test_a_picamera2_that_fails_to_import_is_a_retried_camera_error(tmp_path, monkeypatch, caplog):
    # What a numpy-2 venv does to Raspberry Pi OS's picamera2 (its simplejpeg was built for numpy 1).
    package = tmp_path / "picamera2"
    package.mkdir()
    (package / "__init__.py").write_text('raise ValueError("numpy.dtype size changed, may indicate binary '
                                         'incompatibility. Expected 96 from C header, got 88 from PyObject")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    with pytest.raises(CameraError, match="cannot be imported .*numpy.dtype size changed.*install-pi"):
        make_source("picamera2").open()
    grabber = FrameGrabber(make_source("picamera2"), max_backoff=0.1).start()
    try:
        deadline = time.monotonic() + 5
        while grabber.errors < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert grabber._thread.is_alive()  # logged and retried, not a dead capture thread
    finally:
        grabber.stop()


def test_the_watchdog_is_fed_only_while_frames_advance(fake, bundle_path, tmp_path, monkeypatch):
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    messages = listener.messages
    fake.SCENE = [photo()]
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "camera": {"source": "picamera2"}, "buttons": {"enabled": False},
                                "leds": {"enabled": False}, "output": {"terminal": "off", "json": "off"}})
    daemon = Daemon(config, keyboard=False, stdout=io.StringIO()).start()
    daemon.grabber.source.timeout = 60  # a capture that hangs (picamera2 without wait= hangs for ever)
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()

    try:
        assert any("READY=1" in m for m in messages(10))
        assert any("WATCHDOG=1" in m for m in messages(2.5))
        fake.STALLED.set()
        messages(1.2)  # a frame in flight may still be classified
        assert not any("WATCHDOG=1" in m for m in messages(3.0)), "watchdog fed while no frame arrives"
        fake.STALLED.clear()
        assert any("WATCHDOG=1" in m for m in messages(3.0))
    finally:
        daemon.stop()
        thread.join(timeout=10)
        daemon.close()
        listener.close()


def test_without_opencv_the_pi_camera_works_and_a_webcam_says_what_to_install(fake, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # the device install has no OpenCV
    source = make_source("picamera2")
    source.open()
    assert source.read().shape == (256, 342, 3)
    source.close()
    with pytest.raises(CameraError, match=r"opencv:0 needs OpenCV.*pip install 'teachcam\[video\]'"):
        make_source("opencv:0").open()


def test_picamera2_source_reads_the_lores_stream_as_rgb(monkeypatch):
    # The strict double (tests/fakes/picamera2): padded rows, camera_config read back, wait= timeouts.
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent / "fakes"))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    import picamera2 as fake

    red = np.zeros((240, 320, 3), np.uint8)
    red[..., 0] = 200
    monkeypatch.setattr(fake, "SCENE", [red])
    fake.INSTANCES.clear()
    source = make_source("picamera2")
    source.open()
    frame = source.read()
    camera = fake.INSTANCES[-1]
    source.close()
    assert frame.shape == (256, 342, 3)  # shorter side = the bundle's 256: preprocessing is a plain crop
    assert abs(int(frame[..., 0].mean()) - 200) < 8 and frame[..., 2].mean() < 20  # RGB order, not BGR
    assert {k: camera.camera_config["lores"][k] for k in ("size", "format")} == {"size": (342, 256), "format": "YUV420"}
    assert camera.closed and not camera.started


def test_picamera2_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(CameraError, match="apt install python3-picamera2"):
        make_source("picamera2").open()


def halves() -> np.ndarray:
    """A 640x480 scene: red on the left, blue on the right."""
    scene = np.zeros((480, 640, 3), np.uint8)
    scene[:, :320, 0], scene[:, 320:, 2] = 220, 220
    return scene


def test_a_pi5_isp_crops_the_focus_region_on_the_stream_the_model_reads_and_again_after_a_reopen(fake):
    """#28 on a Pi 5 (PiSP): ScalerCrops — main keeps the whole picture (the screen, the live view), lores (the
    model's) holds only the region at its full resolution; a camera reopened after a stall is asked again."""
    fake.PLATFORM, fake.SCENE = "pisp", [halves()]
    source = make_source("picamera2")
    source.timeout = 0.3
    assert source.set_region((0.5, 0.0, 1.0, 1.0)) is True  # not open yet: the ISP is asked when it opens
    grabber = FrameGrabber(source, max_backoff=0.2).start()
    try:
        frame = grabber.latest(timeout=5.0)
        camera = fake.INSTANCES[-1]
        full = fake.SENSOR_CROP
        assert ("set_controls", {"ScalerCrops": [full, (1640, 0, 1640, 2464)]}) in camera.calls
        assert frame.image.shape == (480, 640, 3)  # the whole picture, in RGB order
        assert frame.image[:, :300, 0].mean() > 200 and frame.image[:, 340:, 2].mean() > 200
        assert frame.image[:, :300, 2].mean() < 20
        view = source.model_view
        assert view.shape == (256, 342, 3) and view[..., 2].mean() > 190 and view[..., 0].mean() < 30  # only blue
        fake.STALLED.set()
        deadline = time.monotonic() + 10
        while len(fake.INSTANCES) < 2:
            assert time.monotonic() < deadline, "a stalled camera was never reopened"
            time.sleep(0.05)
        fake.STALLED.clear()
        assert grabber.latest(timeout=5.0) is not None
        assert fake.INSTANCES[-1].crops["lores"] == (1640, 0, 1640, 2464)  # the new camera was asked again
        assert source.set_region(None) is False  # the whole picture again: nothing left to crop
        assert fake.INSTANCES[-1].crops["lores"] == full
    finally:
        grabber.stop()


def test_a_pi4_cannot_crop_one_stream_so_the_region_is_cut_from_the_main_stream(fake, bundle_path, tmp_path):
    fake.PLATFORM, fake.SCENE = "vc4", [halves()]
    source = make_source("picamera2")
    source.open()
    try:
        assert source.set_region((0.5, 0.0, 1.0, 1.0)) is True
        assert not any(call[0] == "set_controls" for call in fake.INSTANCES[-1].calls)
        shown = source.read()
        assert shown.shape == (256, 342, 3) and shown[:, :150, 0].mean() > 190  # the whole picture, from lores
        view = source.model_view  # the right half of the 640x480 main stream: twice lores' detail, RGB order
        assert view.shape == (480, 320, 3) and view[..., 2].mean() > 200 and view[..., 0].mean() < 10
        assert source.set_region(None) is False
        source.read()
        assert source.model_view is None
        with pytest.raises(RuntimeError, match="ScalerCrops is not advertised"):
            fake.INSTANCES[-1].set_controls({"ScalerCrops": [fake.SENSOR_CROP]})
    finally:
        source.close()


@pytest.mark.parametrize("platform", ["pisp", "vc4"])
def test_the_daemon_reads_the_region_from_the_isp_or_crops_it_itself(fake, bundle_path, tmp_path, platform):
    """Either way the model sees the right half — on a Pi 5 from the ISP's lores crop, on a Pi 4 cropped here."""
    fake.PLATFORM, fake.SCENE = platform, [halves()]
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "camera": {"source": "picamera2", "region": [0.5, 0.0, 1.0, 1.0]},
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off"}})
    daemon = Daemon(config, keyboard=False, stdout=io.StringIO()).start()
    try:
        frame = daemon.grabber.latest(timeout=5.0)
        assert frame.image.shape == ((480, 640, 3) if platform == "pisp" else (256, 342, 3))  # what is shown
        pixels = frame.pixels
        assert pixels.shape == (224, 224, 3) and pixels[..., 2].mean() > 190 and pixels[..., 0].mean() < 30
        daemon.set_region(None)
        frame = daemon.grabber.latest(after=frame.number + 1, timeout=5.0)
        assert frame.pixels[..., 0].mean() > 60 and frame.pixels[..., 2].mean() > 60  # both halves again
    finally:
        daemon.close()
