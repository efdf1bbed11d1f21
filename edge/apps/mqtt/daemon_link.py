"""The bridge's two connections to the daemon's control socket: one for requests, one that reads events (on a
thread of its own, handed to the bridge's worker as work items)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from teachcam.edge.errors import ControlError
from teachcam.edge.link.client import ControlClient

log = logging.getLogger(__name__)


class DaemonConnection:
    def __init__(self, socket_path: str | Path | None, put: Callable):
        self.socket_path, self._put = socket_path, put
        self.up = False
        self.requests: ControlClient | None = None
        self.events_client: ControlClient | None = None

    def connect(self) -> bool:
        try:
            self.requests = ControlClient(self.socket_path, timeout=30.0).connect()
            self.events_client = ControlClient(self.socket_path, timeout=None).connect()
            self.events_client.request("subscribe", events=True, frames=False)
        except (ControlError, OSError) as exc:
            self.close()
            log.debug("daemon not reachable: %s", exc)
            return False
        threading.Thread(target=self._read_events, args=(self.events_client,), name="mqtt-events",
                         daemon=True).start()
        self.up = True
        log.info("connected to the daemon on %s", self.requests.path)
        return True

    def close(self) -> None:
        for client in (self.requests, self.events_client):
            if client is not None:
                client.close()
        self.requests = self.events_client = None
        self.up = False

    def _read_events(self, client: ControlClient) -> None:
        try:
            for event in client.events():
                self._put(("event", event))
        except (ControlError, OSError, ValueError):
            pass
        self._put(("daemon_lost", client))

    def ask(self, op: str, **fields) -> dict:
        """One control-socket request (raises ControlError with the daemon's one-line reason)."""
        if self.requests is None:
            raise ControlError("the daemon is not reachable")
        try:
            return self.requests.request(op, **fields)
        except OSError as exc:
            raise ControlError(f"the daemon went away ({exc})") from None
