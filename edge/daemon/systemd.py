"""systemd's side of the daemon: sd_notify (READY, STATUS, STOPPING) and the watchdog's pings."""

from __future__ import annotations

import os
import time


class Notifier:
    """systemd's sd_notify (through sdnotify); silent when not run by systemd."""

    def __init__(self):
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()
        self._last_ping = 0.0

    def notify(self, message: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(message)

    def ping(self) -> None:
        now = time.monotonic()
        if now - self._last_ping >= 1.0:
            self._last_ping = now
            self.notify("WATCHDOG=1")
