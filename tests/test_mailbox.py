"""ports.Mailbox on its own: bounded, drop-oldest, events before views, failures counted — never blocking."""

from __future__ import annotations

import logging
import threading
import time

from teachcam.edge.ports import FAILURE_REST, Mailbox, Port
from tests.helpers import wait_for


class Recorder(Port):
    """A port that takes the first item, then waits at a gate until the test opens it."""

    name = "recorder"

    def __init__(self, fail_on=()):
        self.got, self.gate, self.busy, self.fail_on, self.closed = [], threading.Event(), threading.Event(), fail_on, False

    def _take(self, item):
        self.busy.set()
        self.gate.wait(10)
        if item in self.fail_on:
            raise OSError(f"I2C bus error on {item}")
        self.got.append(item)

    def update(self, view, frame=None):
        self._take(view)

    def event(self, event):
        self._take(event)

    def close(self):
        self.closed = True


def blocked_mailbox(port, **options) -> Mailbox:
    """A mailbox whose port is busy with a first view, so what is offered next waits in the inbox."""
    box = Mailbox(port, **options)
    box.offer_view("v0")
    assert port.busy.wait(5)
    return box


def test_the_oldest_view_and_the_oldest_event_are_dropped_and_counted():
    port = Recorder()
    box = blocked_mailbox(port, views=2, events=3)
    for i in range(1, 6):
        box.offer_view(f"v{i}")
    for i in range(5):
        box.offer_event(f"e{i}")
    assert (box.dropped_views, box.dropped_events) == (3, 2)
    port.gate.set()
    assert box.wait_idle()
    assert wait_for(lambda: len(port.got) == 6)
    # events first (an enrollment's acknowledgement never waits behind a view), then the newest views
    assert port.got == ["v0", "e2", "e3", "e4", "v4", "v5"]
    assert box.delivered == 6
    box.close()
    assert port.closed


def test_offering_never_blocks_even_when_the_port_hangs():
    port = Recorder()
    box = blocked_mailbox(port, views=1, events=4)
    done = threading.Event()

    def flood():
        for i in range(10_000):
            box.offer_view(i)
            box.offer_event(i)
        done.set()

    threading.Thread(target=flood, daemon=True).start()
    assert done.wait(10)  # the port is still stuck on its first view
    assert box.dropped_views == 9_999 and box.dropped_events == 9_996
    port.gate.set()
    box.close()


def test_a_failing_port_is_logged_once_per_kind_and_counted(caplog):
    port = Recorder(fail_on={"bad"})
    box = blocked_mailbox(port, events=10)
    for item in ("bad", "good", "bad", "bad"):
        box.offer_event(item)
    with caplog.at_level(logging.ERROR, logger="teachcam.edge.ports"):
        port.gate.set()
        assert box.wait_idle()
        assert wait_for(lambda: box.failures == 3)
    lines = [r.getMessage() for r in caplog.records if "recorder failed" in r.getMessage()]
    assert len(lines) == 1 and "I2C bus error on bad" in lines[0]
    assert port.got == ["v0", "good"] and box.delivered == 2
    box.offer_event("after")  # the port still works after its failures
    assert wait_for(lambda: port.got[-1] == "after")
    box.close()


class Counter(Port):
    """A port that records what it is handed and how often its thread was woken for a view."""

    name = "counter"

    def __init__(self, interval=0.0, key=None, fail=False):
        self.view_interval, self.key, self.fail, self.got = interval, key, fail, []

    def view_key(self, view):
        return self.key(view) if self.key else None

    def update(self, view, frame=None):
        self.got.append((time.monotonic(), view))
        if self.fail:
            raise OSError(121, "Remote I/O error")

    def event(self, event):
        self.got.append((time.monotonic(), event))


def test_a_rate_limited_port_gets_the_newest_view_after_its_interval_and_is_not_woken_in_between():
    port = Counter(interval=0.4)
    box = Mailbox(port)
    box.offer_view(0)
    assert wait_for(lambda: port.got)
    for i in range(1, 50):
        box.offer_view(i)
    box.offer_event("e")
    assert box.wait_idle() and len(port.got) == 3
    assert [item for _, item in port.got] == [0, "e", 49]  # events are never rate-limited; the newest view waited
    assert port.got[2][0] - port.got[0][0] >= 0.4 and box.dropped_views == 48 and box.delivered == 3
    box.close()


def test_a_view_that_changes_nothing_the_port_shows_is_not_delivered():
    port = Counter(key=lambda view: view["label"])
    box = Mailbox(port, views=10)  # room for them all: only the key decides
    for label in ("a", "a", "a", "b", "b", "a"):
        box.offer_view({"label": label})
    assert box.wait_idle() and [view["label"] for _, view in port.got] == ["a", "b", "a"]
    assert box.unchanged_views == 3 and box.dropped_views == 0
    box.close()


def test_after_a_failed_view_the_same_view_is_tried_again_after_a_rest(caplog):
    port = Counter(key=lambda view: view, fail=True)
    box = Mailbox(port)
    box.offer_view("same")
    assert wait_for(lambda: box.failures == 1)
    box.offer_view("same")  # the port failed to show it: not "unchanged", but not before the rest is over
    assert box.unchanged_views == 0 and wait_for(lambda: len(port.got) == 2)
    assert port.got[1][0] - port.got[0][0] >= FAILURE_REST * 0.99
    port.fail = False
    box.offer_view("same")  # shown now: the next identical view is skipped again
    assert wait_for(lambda: len(port.got) == 3)
    box.offer_view("same")
    assert box.wait_idle() and box.unchanged_views == 1 and box.failures == 2
    box.close()


def test_close_delivers_what_waits_then_closes_the_port():
    port = Recorder()
    box = blocked_mailbox(port, events=10)
    for i in range(5):
        box.offer_event(i)
    port.gate.set()
    box.close()
    assert port.got == ["v0", 0, 1, 2, 3, 4] and port.closed
