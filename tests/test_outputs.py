"""Where predictions go: JSON lines and the OLED (which must never hold up the main loop)."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from teachcam.edge.devices.sinks import JsonLinesSink, OledSink, View
from teachcam.edge.errors import ConfigError
from teachcam.edge.messages import Enrolled


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
    sink = OledSink(device)
    sink.update(View("coffee", "coffee", 0.9, 0.75, {}, {"coffee": 3}, fps=30.0))
    assert sink.wait_drawn(5.0)  # drawn by the OLED's own thread
    image = np.asarray(device.image.convert("L"))
    assert image.max() == 255 and image[20:30, :60].mean() > 200


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
    started = time.perf_counter()
    for i in range(60):  # a label change every frame for 2 s of a 30 fps camera
        sink.update(View(f"class{i % 3}", f"class{i % 3}", 0.9, 0.5 + i / 200, {}, {"a": i}))
    handed_over = time.perf_counter() - started
    assert handed_over < 0.05, f"update() took {handed_over * 1e3:.0f} ms for 60 frames"
    assert sink.wait_drawn(5.0)
    assert 1 <= len(device.shown) <= 3  # the newest view, at a capped rate, not 60 redraws
    sink.close()


def test_oled_errors_are_one_line_and_the_sink_keeps_going(caplog):

    device = SlowOled(fail=True)
    sink = OledSink(device, max_fps=20)
    for i in range(5):
        sink.update(View(f"c{i}", f"c{i}", 0.9, 0.8, {}, {}))
        time.sleep(0.05)
    time.sleep(1.5)
    assert sink.errors >= 2
    assert caplog.text.count("OLED: OSError: [Errno 121] Remote I/O error; retrying") == 1
    device.fail = False
    assert sink.wait_drawn(5.0) and device.shown  # the wire is back: it draws again
    sink.close()
    with pytest.raises(ConfigError, match=r"OLED on /dev/i2c-99 at address 0x3c did not start .*i2cdetect -y 99"):
        OledSink(port=99)


def test_the_oled_shows_a_notice_then_the_class_again():
    """The web page's pairing link on the Pi's own OLED (a luma dummy device), for its seconds, then the class."""
    import time

    from luma.core.device import dummy

    from teachcam.edge.messages import NoticeShown

    device = dummy(width=128, height=64)
    sink = OledSink(device)
    try:
        sink.update(View("mug", "mug", 0.9, 0.9, counts={"mug": 3}))
        assert sink.wait_drawn()
        before = device.image.copy()
        sink.event(NoticeShown(text="teachcam web\nhttp://pi:8080/\ntoken:\n" + "x" * 43, seconds=0.5))
        assert sink.wait_drawn()
        notice = device.image.copy()
        assert notice.tobytes() != before.tobytes()
        assert notice.crop((0, 50, 128, 60)).getbbox() is not None  # six lines: the token wraps over three
        sink.update(View("mug", "mug", 0.9, 0.9, counts={"mug": 3}))  # while the notice is up: it stays
        assert sink.wait_drawn() and device.image.tobytes() == notice.tobytes()
        time.sleep(0.6)
        sink.update(View("mug", "mug", 0.9, 0.9, counts={"mug": 3}))
        assert sink.wait_drawn() and device.image.tobytes() == before.tobytes()
    finally:
        sink.close()
