"""The daemon with gpiozero's mock pins, real models, real stores and real frames."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time

import pytest

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.messages import Enroll
from tests.helpers import DRIVER, FlakySource, augmented_views, make_daemon, press, run_teachcam, settle, wait_for


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
        leds = daemon.leds  # let the acknowledgement blinks finish (gpiozero's blink threads)
        assert wait_for(lambda: all(led._blink_thread is None or not led._blink_thread.is_alive() for led in leds.leds)
                        and all(until <= time.monotonic() for until in leds._blinking.values()))
        view = daemon.step(coffee[3])
        view = daemon.step(coffee[3])
        # The LEDs are a port with a mailbox of its own: they follow each view a moment after step().
        assert view.label == "coffee"
        assert wait_for(lambda: factory.pin(16).state > 0 and factory.pin(12).state == 0)
        view = daemon.step(cat[3])
        assert view.label == "cat" and wait_for(lambda: factory.pin(12).state > 0 and factory.pin(16).state == 0)
        view = daemon.step(astronaut[0])
        assert view.label == "unknown"
        assert wait_for(lambda: factory.pin(12).state == 0 and factory.pin(16).state == 0)
    finally:
        daemon.close()


def test_the_daemon_survives_a_camera_that_stops_and_keeps_its_state(bundle_path, tmp_path, factory):
    cat = augmented_views("chelsea.png", 1, seed=7)[0]
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "frames": 25, "buttons": {"pins": [5], "clear_pin": 26}, "leds": {"pins": [12]},
                                "output": {"terminal": "off", "json": "off"}})
    source = FlakySource(cat)
    daemon = Daemon(config, pin_factory=factory, source=source, keyboard=False, stdout=io.StringIO()).start()
    daemon.grabber.max_backoff = 0.2
    daemon.post(Enroll(index=0))
    try:
        assert daemon.run() == 0
        assert daemon.stats.frames == 25
        assert daemon.teacher.counts() == {"cat": 1}
        assert daemon.grabber.errors >= 1
    finally:
        daemon.close()




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
    from teachcam.edge.teaching.teacher import Teacher

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
        daemon.post(Enroll(index=0))
        daemon.step(cat[0])
        first = daemon.embedder
        daemon.reload()
        assert daemon.embedder is not first
        assert daemon.teacher.counts() == {"cat": 1}
        assert daemon.step(cat[1]).label == "cat"
    finally:
        daemon.close()
    assert "reloaded the configuration and the bundle (1 examples kept)" in caplog.text


def test_run_says_which_controls_it_uses(bundle_path, tmp_path):
    from tests.helpers import run_teachcam

    result = run_teachcam("run", "--bundle", bundle_path, "--store", tmp_path / "store", "--source", "demo",
                          "--frames", "3", "--no-gpio")
    assert result.returncode == 0, result.stderr
    assert "teachcam: running — camera demo, mode knn, int8 (XNNPACK) embedder, 0 enrolled examples; no buttons" in result.stderr




def test_camera_trouble_and_its_end_reach_every_port_as_events(bundle_path, tmp_path, factory):
    from teachcam.edge.ports import Port

    class Recorder(Port):
        name = "recorder"

        def __init__(self):
            self.kinds = []

        def event(self, event):
            self.kinds.append(event.kind)

    recorder = Recorder()
    cat = augmented_views("chelsea.png", 1, seed=7)[0]
    config = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                                "frames": 25, "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off"}})
    daemon = Daemon(config, source=FlakySource(cat), keyboard=False, stdout=io.StringIO(), ports=[recorder]).start()
    daemon.grabber.max_backoff = 0.2
    try:
        assert daemon.run() == 0
        assert wait_for(lambda: "camera_back" in recorder.kinds)
        assert recorder.kinds.index("camera_trouble") < recorder.kinds.index("camera_back")
    finally:
        daemon.close()


@pytest.mark.slow
def test_the_demo_teaches_three_objects_and_recognises_them(bundle_path, tmp_path):
    # The README's first command, end to end (about 30 s): the change gate is on, as by default.
    store = tmp_path / "default-store"
    result = run_teachcam("demo", "--bundle", bundle_path, env={"TEACHCAM_STORE": str(store)}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "taught 15 examples by button" in summary, summary
    accuracy = float(summary.split("recognition accuracy ")[1].split("%")[0])
    assert accuracy >= 95.0, summary
    assert not store.exists()  # the demo teaches a store of its own, never the user's


def test_an_enrollment_sent_on_the_heels_of_the_last_reply_gets_its_own_frame(bundle_path, tmp_path, factory):
    """A client that sends its next enrollment the moment it reads a reply may get it queued while the daemon is
    still applying this frame's commands: it must wait for the next frame, not be skipped as the same frame."""
    from teachcam.edge import messages as m

    daemon = make_daemon(bundle_path, tmp_path, factory, augmented_views("chelsea.png", 3, seed=90), frames=3)
    try:
        replies = []

        def reply(result):
            replies.append(result)
            if len(replies) == 1:  # the next request arrives while this batch is still being applied
                daemon.post(m.Enroll(label="cat", via="socket"), replies.append)

        daemon.post(m.Enroll(label="cat", via="socket"), reply)
        daemon.run()
        assert [r.get("count") for r in replies] == [1, 2] and "skipped" not in replies[1], replies
    finally:
        daemon.close()
