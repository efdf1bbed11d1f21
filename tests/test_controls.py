"""Buttons (gpiozero mock pins) and terminal keys: what a press, a hold and a bounce enroll."""

from __future__ import annotations

import io
import time

from teachcam.edge.messages import Clear, Enroll, Quit, Undo
from tests.helpers import augmented_views, make_daemon, press, settle, wait_for


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
        frames = iter(coffee * 1000)  # the camera keeps delivering frames while the button is held

        def enrolled_while_held() -> int:
            daemon.step(next(frames))
            return daemon.teacher.counts().get("coffee", 0)

        assert wait_for(lambda: enrolled_while_held() >= 4, timeout=10, interval=0.03)  # gpiozero's hold thread
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
        factory.pin(26).drive_low()  # held: gpiozero's hold thread fires after clear_hold_time
        assert wait_for(lambda: any(isinstance(c, Clear) for c, _ in list(daemon.commands.queue)))
        factory.pin(26).drive_high()
        settle(daemon, cat[0])
        assert len(daemon.teacher) == 0
    finally:
        daemon.close()


def test_terminal_keys_do_what_the_buttons_do():
    from teachcam.edge.devices.panel import KeyboardControls

    got = []
    keys = KeyboardControls(got.append, classes=3, stream=io.StringIO())
    for key in "13u9cqx":
        keys.handle(key)
    assert got == [Enroll(index=0, via="key"), Enroll(index=2, via="key"), Undo(via="key"), Clear(via="key"),
                   Quit(via="key")]


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
