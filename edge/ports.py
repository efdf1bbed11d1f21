"""Ports: where the daemon's views and events go, and where commands come from.

Every output — LEDs, the terminal view, JSON lines, the OLED, the preview window, the control
socket — is a :class:`Port`: ``update(view, frame)`` for each classified frame, ``event(event)``
for each :class:`~teachcam.edge.messages.Event`, ``close()``. Inputs (buttons, keys, the control
socket) post :class:`~teachcam.edge.messages.Command` objects through the ``post`` callable they
are given. The daemon builds the list from the config and only wires.

A port never runs on the main loop: each sits behind a :class:`Mailbox`, a bounded inbox with a
thread of its own. A slow port (a stalled journal, an OLED on a slow I2C bus, a client that does
not read) loses views — the oldest pending one is dropped and counted — never the loop's time.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)
FAILURE_REST = 1.0  # seconds before a port that failed to show a view (a loose I2C wire) is given the next one


@dataclass
class View:
    """What a person should see about the current frame."""

    label: str  # smoothed: what the LEDs show
    raw_label: str
    score: float
    confidence: float
    confidences: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    fps: float = 0.0
    latency_ms: float = 0.0
    frame: int = 0
    mode: str = "knn"
    region: tuple | None = None  # the focus region the model looked at (fractions of the picture), None: all of it


class Port:
    """One place views and events go. Subclasses override what they need.

    Two knobs spare a port's thread the views it would ignore — it is not even woken for them, which matters:
    every wake-up during an invoke takes a core from the interpreter's threads (scripts/bench/daemon.py):
    ``view_interval`` (seconds): at most one view per interval, the newest (a screen: 20 a second);
    :meth:`view_key`: what the port shows of a view, so that a view that would change nothing is not delivered.
    """

    name = "port"
    view_interval = 0.0

    def view_key(self, view) -> object:
        """What of ``view`` this port shows, or None (the default): every view matters. Called on the main loop for
        every frame: it must be cheap and thread-safe (read the view, and at most a flag of the port's own). A view
        whose key equals the last one accepted is skipped (counted in :attr:`Mailbox.unchanged_views`)."""
        return None

    def update(self, view: View, frame: np.ndarray | None = None) -> None:
        pass

    def event(self, event) -> None:
        pass

    def close(self) -> None:
        pass


class Mailbox:
    """A port's bounded inbox, emptied by a thread of its own.

    At most ``views`` views wait (a newer one pushes the oldest out: ``dropped_views``) and at
    most ``events`` events (then the oldest event goes: ``dropped_events``). ``offer_*`` never block.
    The port's ``view_interval``: after a view is delivered the next one
    waits that long, and only the newest waiting one is delivered — the thread is not woken in between. A view
    whose :meth:`Port.view_key` equals the last accepted one is skipped (``unchanged_views``); after a view the
    port failed to show, the next one is delivered whatever its key, ``FAILURE_REST`` later. Events are never
    rate-limited or skipped.
    """

    _NO_KEY = object()

    def __init__(self, port: Port, *, views: int = 1, events: int = 256):
        self.port = port
        self.max_views, self.max_events = views, events
        self._rest_until = 0.0  # no view is delivered before this time.monotonic()
        self._last_key: object = self._NO_KEY
        self._views: collections.deque = collections.deque()
        self._events: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self._busy = False  # the thread is handing an item to the port
        self.dropped_views = self.dropped_events = self.unchanged_views = self.delivered = 0
        self._failures: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name=f"teachcam-port-{port.name}", daemon=True)
        self._thread.start()

    def offer_view(self, view, frame=None) -> None:
        key = self.port.view_key(view)
        with self._ready:
            if key is not None and key == self._last_key:
                self.unchanged_views += 1
                return
            self._last_key = key
            waiting = bool(self._views)
            if len(self._views) >= self.max_views:
                self._views.popleft()
                self.dropped_views += 1
            self._views.append((view, frame))
            # A thread that rests with a view waiting wakes by itself at the end of its rest, and takes the newest.
            if not waiting or time.monotonic() >= self._rest_until:
                self._ready.notify()

    def offer_event(self, event) -> None:
        with self._ready:
            if len(self._events) >= self.max_events:
                self._events.popleft()
                self.dropped_events += 1
            self._events.append(event)
            self._ready.notify()

    def _next(self) -> tuple[str, object] | None:
        """The next item to deliver (events first: an enrollment's acknowledgement must not wait behind a view),
        waiting for one; None once closing and everything was delivered. Called with the lock held."""
        while True:
            if self._events:
                return "event", self._events.popleft()
            now = time.monotonic()
            if self._views and (now >= self._rest_until or self._closing):
                self._rest_until = now + self.port.view_interval
                return "view", self._views.popleft()
            if self._closing:
                return None
            self._ready.wait(self._rest_until - now if self._views else None)

    def _run(self) -> None:
        while True:
            with self._ready:
                self._busy = False
                item = self._next()
                self._busy = item is not None
            if item is None:
                return
            try:
                if item[0] == "event":
                    self.port.event(item[1])
                else:
                    self.port.update(*item[1])
                self.delivered += 1
            except Exception as exc:  # a broken output must never take the daemon down
                if item[0] == "view":
                    with self._ready:  # not shown: the next view is delivered whatever its key, after a rest
                        self._last_key = self._NO_KEY
                        self._rest_until = max(self._rest_until, time.monotonic() + FAILURE_REST)
                key = f"{type(exc).__name__}: {exc}"
                self._failures[key] = self._failures.get(key, 0) + 1
                if self._failures[key] == 1:
                    log.error("output %s failed: %s (further failures like this one are counted, not logged)",
                              self.port.name, key)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once everything offered has been handed to the port (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._ready:
                if not self._events and not self._views and not self._busy:
                    return True
            time.sleep(0.002)
        return False

    def close(self, timeout: float = 2.0) -> None:
        with self._ready:
            self._closing = True
            self._ready.notify()
        self._thread.join(timeout)
        self.port.close()

    @property
    def failures(self) -> int:
        return sum(self._failures.values())
