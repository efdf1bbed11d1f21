"""Where predictions go: JSON lines and the OLED (which must never hold up the main loop)."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from teachcam.edge.devices.sinks import JsonLinesSink, OledSink
from teachcam.edge.errors import ConfigError
from teachcam.edge.messages import Enrolled
from teachcam.edge.ports import Mailbox, View
from tests.helpers import wait_for


def test_json_lines_only_when_the_shown_label_changes():
    out = io.StringIO()
    sink = JsonLinesSink(out)
    for label in ("a", "a", "b", "b", "a"):
        sink.update(View(label, label, 0.9, 0.8, {"a": 0.8}, {"a": 3}))
    sink.event(Enrolled(label="a", count=4))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("label") for line in lines] == ["a", "b", "a", "a"]
    assert lines[-1]["event"] == "enrolled"


def test_oled_draws_on_luma_dummy_device():
    from luma.core.device import dummy

    device = dummy(width=128, height=64)
    box = Mailbox(OledSink(device))
    box.offer_view(View("coffee", "coffee", 0.9, 0.75, {}, {"coffee": 3}, fps=30.0))
    assert box.wait_idle(5.0)  # drawn by the mailbox's own thread
    image = np.asarray(device.image.convert("L"))
    assert image.max() == 255 and image[20:30, :60].mean() > 200
    box.close()


class SlowOled:
    """A luma dummy device whose every redraw takes as long as a real SSD1306 at 100 kHz I2C (~90 ms)."""

    def __init__(self, fail: bool = False):
        from luma.core.device import dummy

        self.inner, self.fail, self.shown = dummy(width=128, height=64), fail, []
        self.width, self.height, self.mode, self.size = 128, 64, self.inner.mode, self.inner.size

    def display(self, image):
        time.sleep(0.09)
        if self.fail:
            raise OSError(121, "Remote I/O error")
        self.inner.display(image)
        self.shown.append(image.copy())

    def cleanup(self):
        pass


def test_the_oled_never_holds_up_the_main_loop():
    device = SlowOled()
    sink = OledSink(device, max_fps=4)
    box = Mailbox(sink)
    started = time.perf_counter()
    for i in range(60):  # a label change every frame for 2 s of a 30 fps camera
        box.offer_view(View(f"class{i % 3}", f"class{i % 3}", 0.9, 0.5 + i / 200, {}, {"a": i}))
    handed_over = time.perf_counter() - started
    assert handed_over < 0.05, f"offering took {handed_over * 1e3:.0f} ms for 60 frames"
    assert box.wait_idle(5.0)
    newest = View("class2", "class2", 0.9, 0.5 + 59 / 200, {}, {"a": 59})
    expected = SlowOled()
    OledSink(expected).update(newest)
    # the first view (if the thread took it before the next came), then the newest a quarter of a second later
    assert 1 <= len(device.shown) <= 2 and device.shown[-1].tobytes() == expected.shown[0].tobytes()
    drawn = len(device.shown)
    for _ in range(30):  # the same thing shown, frame after frame: not redrawn at all
        box.offer_view(newest)
    assert box.wait_idle(5.0) and len(device.shown) == drawn and box.unchanged_views == 30
    box.close()


def test_oled_errors_are_one_line_and_the_sink_keeps_going(caplog):
    device = SlowOled(fail=True)
    box = Mailbox(OledSink(device, max_fps=20))
    deadline = time.monotonic() + 1.6
    while time.monotonic() < deadline:  # a steady camera: the same view at 20 frames a second
        box.offer_view(View("c", "c", 0.9, 0.8, {}, {}))
        time.sleep(0.05)
    assert 2 <= box.failures <= 3  # tried again a second after each failure, not at every frame
    assert caplog.text.count("output oled failed: OSError: [Errno 121] Remote I/O error") == 1
    device.fail = False
    assert wait_for(lambda: box.offer_view(View("c", "c", 0.9, 0.8, {}, {})) or device.shown, timeout=5.0)
    box.close()  # the wire is back: it draws again
    with pytest.raises(ConfigError, match=r"OLED on /dev/i2c-99 at address 0x3c did not start .*i2cdetect -y 99"):
        OledSink(port=99)


def test_the_oled_shows_a_notice_then_the_class_again():
    """The web page's pairing link on the Pi's own OLED (a luma dummy device), for its seconds, then the class."""
    from luma.core.device import dummy

    from teachcam.edge.messages import NoticeShown

    device = dummy(width=128, height=64)
    box = Mailbox(OledSink(device))
    mug = View("mug", "mug", 0.9, 0.9, counts={"mug": 3})
    try:
        box.offer_view(mug)
        assert box.wait_idle()
        before = device.image.copy()
        box.offer_event(NoticeShown(text="teachcam web\nhttp://pi:8080/\ntoken:\n" + "x" * 43, seconds=0.5))
        assert box.wait_idle()
        notice = device.image.copy()
        assert notice.tobytes() != before.tobytes()
        assert notice.crop((0, 50, 128, 60)).getbbox() is not None  # six lines: the token wraps over three
        box.offer_view(mug)  # while the notice is up: it stays
        assert box.wait_idle() and device.image.tobytes() == notice.tobytes()
        time.sleep(0.6)
        box.offer_view(mug)  # the same view as before the notice, but the notice is over: the class again
        assert box.wait_idle() and device.image.tobytes() == before.tobytes()
    finally:
        box.close()
