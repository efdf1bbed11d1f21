"""ports.Mailbox on its own: bounded, drop-oldest, events before views, failures counted — never blocking."""

from __future__ import annotations

import logging
import threading

from teachcam.edge.ports import Mailbox, Port
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


def test_a_rate_limited_port_is_not_woken_for_views_in_between():
    port = Recorder()
    port.gate.set()
    box = Mailbox(port, view_interval=3600)
    for i in range(50):
        box.offer_view(i)
    box.offer_event("e")
    assert box.wait_idle() and wait_for(lambda: len(port.got) == 2)
    assert sorted(map(str, port.got)) == ["0", "e"] and box.dropped_views == 49  # events are never rate-limited
    box.close()


def test_close_delivers_what_waits_then_closes_the_port():
    port = Recorder()
    box = blocked_mailbox(port, events=10)
    for i in range(5):
        box.offer_event(i)
    port.gate.set()
    box.close()
    assert port.got == ["v0", 0, 1, 2, 3, 4] and port.closed
