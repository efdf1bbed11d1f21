"""Camera sources and the grabber that keeps only the newest frame, through failures."""

from __future__ import annotations

import time

import numpy as np
import pytest

from teachcam.edge.devices.camera import make_source
from teachcam.edge.devices.grabber import FrameGrabber
from teachcam.edge.errors import CameraError
from tests.helpers import FlakySource, augmented_views


def test_a_failing_camera_is_retried_with_backoff_and_recovers(caplog):
    source = FlakySource(np.zeros((48, 64, 3), np.uint8))
    grabber = FrameGrabber(source, fps=100, max_backoff=0.2).start()
    try:
        deadline = time.monotonic() + 10
        while source.opens < 4 or grabber.frames_captured < 8:
            assert time.monotonic() < deadline, "capture did not recover"
            time.sleep(0.05)
        assert grabber.latest(timeout=1.0) is not None
        assert grabber.errors >= 3
    finally:
        grabber.stop()
    assert "retrying in" in caplog.text and "is back" in caplog.text


def test_unknown_camera_spec():
    with pytest.raises(CameraError, match="unknown camera source 'webcam'"):
        make_source("webcam")


def test_file_and_images_sources(tmp_path):
    import cv2
    from PIL import Image

    frames = augmented_views("coffee.png", 3, seed=8)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).resize((320, 240)).save(tmp_path / f"{i}.png")
    source = make_source(f"images:{tmp_path}", loop=False)
    source.open()
    assert [source.read().shape for _ in range(3)] == [(240, 320, 3)] * 3
    assert source.read() is None
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    for frame in frames:
        writer.write(cv2.cvtColor(cv2.resize(frame, (320, 240)), cv2.COLOR_RGB2BGR))
    writer.release()
    source = make_source(f"file:{clip}", loop=True)
    source.open()
    assert all(source.read().shape == (240, 320, 3) for _ in range(7))  # loops past the 3 frames
    source.close()
    with pytest.raises(CameraError, match="video file not found"):
        make_source(f"file:{tmp_path / 'none.mp4'}").open()
