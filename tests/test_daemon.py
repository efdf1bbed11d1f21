"""The daemon with gpiozero's mock pins, real models, real stores and real frames."""

from __future__ import annotations

import io
import json
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import numpy as np
import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge.camera import ArraySource, FrameGrabber, Source, make_source
from edge.config import load_config
from edge.controls import Command
from edge.daemon import Daemon
from edge.display import JsonLinesSink, OledSink, View
from edge.errors import CameraError, ConfigError
from edge.smoothing import Smoother
from tests.helpers import augmented_views

CLASSES = ("cat", "coffee")


@pytest.fixture
def factory():
    return MockFactory(pin_class=MockPWMPin)


def make_daemon(bundle_path, tmp_path, factory, images, **changes):
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"),
                                "classes": list(CLASSES), "smoothing": 1})
    config = replace(config, buttons=replace(config.buttons, pins=(5, 6), clear_pin=26, hold_time=0.2,
                                             clear_hold_time=0.6),
                     leds=replace(config.leds, pins=(12, 16)), output=replace(config.output, terminal="off", json="off"),
                     **changes)
    return Daemon(config.validate(), pin_factory=factory, source=ArraySource(images, loop=True), keyboard=False,
                  stdout=io.StringIO()).start()


def press(factory, pin, seconds=0.05):
    factory.pin(pin).drive_low()
    time.sleep(seconds)
    factory.pin(pin).drive_high()


def settle(daemon, frame):
    time.sleep(0.15)
    return daemon.step(frame)


def test_one_press_one_example_even_with_contact_bounce(bundle_path, tmp_path, factory):
    cat = augmented_views("chelsea.png", 3, seed=1)
    daemon = make_daemon(bundle_path, tmp_path, factory, cat)
    try:
        for _ in range(6):  # a bouncing contact: six edges within a few milliseconds
            factory.pin(5).drive_low()
            factory.pin(5).drive_high()
        settle(daemon, cat[0])
        assert daemon.teacher.counts() == {"cat": 1}
        time.sleep(0.1)
        press(factory, 5)
        settle(daemon, cat[1])
        assert daemon.teacher.counts() == {"cat": 2}
    finally:
        daemon.close()


def test_holding_a_button_keeps_enrolling(bundle_path, tmp_path, factory):
    coffee = augmented_views("coffee.png", 2, seed=2)
    daemon = make_daemon(bundle_path, tmp_path, factory, coffee)
    try:
        factory.pin(6).drive_low()
        for i in range(12):  # the camera keeps delivering frames while the button is held (1.2 s)
            time.sleep(0.1)
            daemon.step(coffee[i % 2])
        factory.pin(6).drive_high()
        settle(daemon, coffee[0])
        assert daemon.teacher.counts()["coffee"] >= 4
    finally:
        daemon.close()


def test_clear_button_short_press_undoes_long_press_clears(bundle_path, tmp_path, factory):
    cat = augmented_views("chelsea.png", 3, seed=3)
    daemon = make_daemon(bundle_path, tmp_path, factory, cat)
    try:
        for i in range(3):
            press(factory, 5)
            settle(daemon, cat[i])
            time.sleep(0.06)
        assert daemon.teacher.counts() == {"cat": 3}
        press(factory, 26)
        settle(daemon, cat[0])
        assert daemon.teacher.counts() == {"cat": 2}
        press(factory, 26, seconds=0.9)
        settle(daemon, cat[0])
        assert len(daemon.teacher) == 0
    finally:
        daemon.close()


def test_leds_show_the_predicted_class_and_go_dark_on_unknown(bundle_path, tmp_path, factory):
    cat, coffee = augmented_views("chelsea.png", 4, seed=4), augmented_views("coffee.png", 4, seed=5)
    astronaut = augmented_views("astronaut.png", 2, seed=6)
    daemon = make_daemon(bundle_path, tmp_path, factory, cat)
    try:
        for pin, frames in ((5, cat), (6, coffee)):
            for frame in frames[:3]:
                press(factory, pin)
                settle(daemon, frame)
                time.sleep(0.06)
        time.sleep(0.4)  # let the acknowledgement blinks finish
        view = daemon.step(coffee[3])
        view = daemon.step(coffee[3])
        assert view.label == "coffee"
        assert factory.pin(16).state > 0 and factory.pin(12).state == 0
        view = daemon.step(cat[3])
        assert view.label == "cat" and factory.pin(12).state > 0 and factory.pin(16).state == 0
        view = daemon.step(astronaut[0])
        assert view.label == "unknown"
        assert factory.pin(12).state == 0 and factory.pin(16).state == 0
    finally:
        daemon.close()


class FlakySource(Source):
    """Works, then raises for a while (unplugged), then returns nothing, then works again."""

    name = "flaky"

    def __init__(self, frame):
        self.frame, self.reads, self.opens = frame, 0, 0

    def open(self):
        self.opens += 1
        if 2 <= self.opens <= 3:
            raise CameraError("no camera on the bus")

    def read(self):
        self.reads += 1
        if self.reads == 5:
            raise CameraError("unplugged")
        if 6 <= self.reads <= 8:
            return None
        return self.frame


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


def test_the_daemon_survives_a_camera_that_stops_and_keeps_its_state(bundle_path, tmp_path, factory):
    cat = augmented_views("chelsea.png", 1, seed=7)[0]
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "frames": 25, "buttons": {"pins": [5], "clear_pin": 26}, "leds": {"pins": [12]},
                                "output": {"terminal": "off", "json": "off"}})
    source = FlakySource(cat)
    daemon = Daemon(config, pin_factory=factory, source=source, keyboard=False, stdout=io.StringIO()).start()
    daemon.grabber.max_backoff = 0.2
    daemon.commands.put(Command("enroll", 0))
    try:
        assert daemon.run() == 0
        assert daemon.stats.frames == 25
        assert daemon.teacher.counts() == {"cat": 1}
        assert daemon.grabber.errors >= 1
    finally:
        daemon.close()


def test_json_lines_only_when_the_shown_label_changes():
    out = io.StringIO()
    sink = JsonLinesSink(out)
    for label in ("a", "a", "b", "b", "a"):
        sink.update(View(label, label, 0.9, 0.8, {"a": 0.8}, {"a": 3}))
    sink.event("enrolled", label="a", count=4)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("label") for line in lines] == ["a", "b", "a", "a"]
    assert lines[-1]["event"] == "enrolled"


def test_smoothing_needs_a_majority_to_switch():
    smoother = Smoother(5)
    shown = [smoother.update(x) for x in ["a", "a", "b", "a", "b", "b", "b", "a", "b"]]
    assert shown == ["a", "a", "a", "a", "a", "b", "b", "b", "b"]


def test_oled_draws_on_luma_dummy_device():
    from luma.core.device import dummy

    device = dummy(width=128, height=64)
    sink = OledSink(device)
    sink.update(View("coffee", "coffee", 0.9, 0.75, {}, {"coffee": 3}, fps=30.0))
    assert sink.wait_drawn(5.0)  # drawn by the OLED's own thread
    image = np.asarray(device.image.convert("L"))
    assert image.max() == 255 and image[20:30, :60].mean() > 200


@pytest.mark.parametrize("overrides, message", [
    ({"camra": {"source": "demo"}}, "unknown key camra"),
    ({"camera": {"sourc": "demo"}}, "unknown key camera.sourc"),
    ({"camera": {"fps": "fast"}}, "camera.fps must be float"),
    ({"smoothing": True}, "smoothing must be a number"),
    ({"buttons": {"pins": [5, 5, 6, 7]}}, "GPIO5 is already used by buttons.pins"),
    ({"leds": {"pins": [5, 16, 20, 21]}}, "leds.pins: GPIO5 is already used"),
    ({"classes": ["a", "b", "c"], "buttons": {"pins": [5, 6]}}, "every class needs its own button"),
    ({"classes": ["Mug", "mug"]}, "two class names are the same"),
    ({"mode": "magic"}, "mode = 'magic'"),
    ({"buttons": {"clear_pin": 40}}, "not a Raspberry Pi header GPIO"),
])
def test_config_errors_name_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_config_file_errors_are_one_line_and_nothing_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[camera]\nsource = "demo"\nfsp = 30\n')
    from tests.conftest import run_teachcam

    result = run_teachcam("run", "--config", bad)
    assert result.returncode == 2
    assert result.stderr.strip() == "teachcam: error: unknown key camera.fsp (known: fps, height, loop, source, width)"
    bad.write_text("this is = not toml ==")
    assert "is not valid TOML" in run_teachcam("run", "--config", bad).stderr


def test_unknown_camera_spec():
    with pytest.raises(CameraError, match="unknown camera source 'webcam'"):
        make_source("webcam")


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


DRIVER = textwrap.dedent("""
    import io, sys, threading, time
    from gpiozero.pins.mock import MockFactory, MockPWMPin
    from edge.config import load_config
    from edge.daemon import Daemon
    from edge.display import Sink
    from edge.demo import DemoSource

    class Acks(Sink):
        def event(self, kind, **data):
            if kind == "enrolled":
                print("ACK", data["count"], flush=True)

    bundle, store = sys.argv[1], sys.argv[2]
    config = load_config(None, {"bundle": bundle, "store": store, "classes": ["cat"], "buttons": {"pins": [5]},
                                "leds": {"pins": [12]}, "output": {"terminal": "off", "json": "off"}})
    factory = MockFactory(pin_class=MockPWMPin)
    daemon = Daemon(config, pin_factory=factory, source=DemoSource(fps=30), keyboard=False, sinks=[Acks()])
    daemon.install_signal_handlers()
    daemon.start()

    def presser():
        while True:
            factory.pin(5).drive_low(); time.sleep(0.03); factory.pin(5).drive_high(); time.sleep(0.07)

    threading.Thread(target=presser, daemon=True).start()
    print("READY", flush=True)
    code = daemon.run()
    daemon.close()
    print("EXIT", code, flush=True)
    sys.exit(code)
""")


def test_sigterm_mid_run_exits_0_with_every_acknowledged_enrollment(bundle_path, tmp_path):
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(bundle_path), str(store)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    acked = []
    assert proc.stdout.readline().strip() == "READY"
    deadline = time.monotonic() + 60
    while len(acked) < 8 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("ACK"):
            acked.append(int(line.split()[1]))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    acked += [int(line.split()[1]) for line in out.splitlines() if line.startswith("ACK")]
    assert proc.returncode == 0, err
    assert "EXIT 0" in out
    from edge.teach import Teacher

    with Teacher.open(store) as teacher:
        assert teacher.counts()["cat"] >= max(acked) >= 8


def test_ready_and_watchdog_reach_systemd(bundle_path, tmp_path, factory, monkeypatch):
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    cat = augmented_views("chelsea.png", 2, seed=9)
    daemon = make_daemon(bundle_path, tmp_path, factory, cat, frames=5)
    try:
        assert daemon.run() == 0
    finally:
        daemon.close()
    messages = []
    server.settimeout(0.2)
    try:
        while True:
            messages.append(server.recv(4096).decode())
    except TimeoutError:
        pass
    server.close()
    joined = "\n".join(messages)
    assert "READY=1" in joined and "WATCHDOG=1" in joined and "STOPPING=1" in joined
    assert joined.index("WATCHDOG=1") < joined.index("READY=1") or "STATUS=classifying" in joined


def test_sighup_reloads_the_bundle_and_keeps_enrollments(bundle_path, tmp_path, factory, caplog):
    cat = augmented_views("chelsea.png", 2, seed=10)
    daemon = make_daemon(bundle_path, tmp_path, factory, cat)
    try:
        daemon.commands.put(Command("enroll", 0))
        daemon.step(cat[0])
        first = daemon.embedder
        daemon.reload()
        assert daemon.embedder is not first
        assert daemon.teacher.counts() == {"cat": 1}
        assert daemon.step(cat[1]).label == "cat"
    finally:
        daemon.close()
    assert "reloaded the configuration and the bundle (1 examples kept)" in caplog.text


def test_terminal_keys_do_what_the_buttons_do():
    from edge.controls import KeyboardControls

    commands = queue.Queue()
    keys = KeyboardControls(commands, classes=3, stream=io.StringIO())
    for key in "13u9cqx":
        keys.handle(key)
    got = []
    while not commands.empty():
        got.append(commands.get())
    assert [(c.kind, c.index) for c in got] == [("enroll", 0), ("enroll", 2), ("undo", -1), ("clear", -1),
                                                ("quit", -1)]
    assert all(c.source == "key" for c in got)


def test_run_says_which_controls_it_uses(bundle_path, tmp_path):
    from tests.conftest import run_teachcam

    result = run_teachcam("run", "--bundle", bundle_path, "--store", tmp_path / "store", "--source", "demo",
                          "--frames", "3", "--no-gpio")
    assert result.returncode == 0, result.stderr
    assert "teachcam: running — camera demo, mode knn, int8 (XNNPACK) embedder, 0 enrolled examples; no buttons" in result.stderr


def test_a_bounce_on_release_is_not_a_second_press(bundle_path, tmp_path, factory):
    cat = augmented_views("chelsea.png", 2, seed=11)
    daemon = make_daemon(bundle_path, tmp_path, factory, cat)
    daemon.buttons.buttons[0].hold_time = 0.5  # the default: a 200 ms press is a press, not a hold
    try:
        pin = factory.pin(5)
        pin.drive_low()  # pressed ...
        time.sleep(0.1)
        daemon.step(cat[0])  # the camera keeps classifying frames while the button is down
        assert daemon.teacher.counts() == {"cat": 1}
        time.sleep(0.1)
        pin.drive_high()  # ... let go 200 ms later, and the contact bounces: 2 ms low
        pin.drive_low()
        time.sleep(0.002)
        pin.drive_high()
        settle(daemon, cat[0])
        assert daemon.teacher.counts() == {"cat": 1}
        time.sleep(0.1)
        press(factory, 5)  # a real second press later still counts
        settle(daemon, cat[1])
        assert daemon.teacher.counts() == {"cat": 2}
    finally:
        daemon.close()


def test_gpiozero_gets_the_bounce_time(bundle_path, tmp_path, factory):
    daemon = make_daemon(bundle_path, tmp_path, factory, augmented_views("chelsea.png", 1, seed=12))
    try:
        assert [b.pin.bounce for b in daemon.buttons.buttons] == [0.05, 0.05]  # lgpio debounces in the kernel on a Pi
        assert daemon.buttons.clear_button.pin.bounce == 0.05
    finally:
        daemon.close()


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
    from edge.errors import ConfigError

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
