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

import numpy as np

log = logging.getLogger(__name__)


class Port:
    """One place views and events go. Subclasses override what they need."""

    name = "port"

    def update(self, view, frame: np.ndarray | None = None) -> None:
        pass

    def event(self, event) -> None:
        pass

    def close(self) -> None:
        pass


class Mailbox:
    """A port's bounded inbox, emptied by a thread of its own.

    At most ``views`` views wait (a newer one pushes the oldest out: ``dropped_views``) and at
    most ``events`` events (then the oldest event goes: ``dropped_events``). ``offer_*`` never block.
    ``view_interval``: a port that needs no more than a view every so often (a screen: 20 a second)
    is not even woken for the others — they are dropped and counted. Events are never rate-limited.
    """

    def __init__(self, port: Port, *, views: int = 1, events: int = 256, view_interval: float = 0.0):
        self.port = port
        self.max_views, self.max_events = views, events
        self.view_interval = view_interval
        self._last_view = -1e9
        self._views: collections.deque = collections.deque()
        self._events: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._closing = False
        self.dropped_views = self.dropped_events = self.delivered = 0
        self._failures: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name=f"teachcam-port-{port.name}", daemon=True)
        self._thread.start()

    def offer_view(self, view, frame=None) -> None:
        if self.view_interval:
            now = time.monotonic()
            if now - self._last_view < self.view_interval:
                self.dropped_views += 1
                return
            self._last_view = now
        with self._ready:
            if len(self._views) >= self.max_views:
                self._views.popleft()
                self.dropped_views += 1
            self._views.append((view, frame))
            self._ready.notify()

    def offer_event(self, event) -> None:
        with self._ready:
            if len(self._events) >= self.max_events:
                self._events.popleft()
                self.dropped_events += 1
            self._events.append(event)
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._events and not self._views and not self._closing:
                    self._ready.wait()
                if not self._events and not self._views:
                    return  # closing, and everything was delivered
                # Events first: an enrollment's acknowledgement must not wait behind a view.
                item = ("event", self._events.popleft()) if self._events else ("view", self._views.popleft())
            try:
                if item[0] == "event":
                    self.port.event(item[1])
                else:
                    self.port.update(*item[1])
                self.delivered += 1
            except Exception as exc:  # a broken output must never take the daemon down
                key = f"{type(exc).__name__}: {exc}"
                self._failures[key] = self._failures.get(key, 0) + 1
                if self._failures[key] == 1:
                    log.error("output %s failed: %s (further failures like this one are counted, not logged)",
                              self.port.name, key)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once the inbox is empty (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._ready:
                if not self._events and not self._views:
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
