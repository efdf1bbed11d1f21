"""The web server's one connection to the daemon's control socket (asyncio).

Requests are matched to replies by id; events go to every listener; preview frames (subscribed only
while someone watches the live view) are decoded once and kept as the newest frame, which every
MJPEG stream sends — so one page or ten cost the daemon the same single JPEG encode per frame.
When the daemon goes away the link says so to its listeners and reconnects every 2 s.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from pathlib import Path

from teachcam.edge.errors import ControlError
from teachcam.edge.link.protocol import (
    MAX_LINE,
    ClientCore,
    access_advice,
    check_hello,
    client_socket_path,
    decode,
    event_from_json,
)

log = logging.getLogger(__name__)
REPLY_TIMEOUT = 30.0


class DaemonLink:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else client_socket_path()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.up = asyncio.Event()
        self.pending: dict[int, asyncio.Future] = {}
        self.core = ClientCore(via="web")
        self.listeners: list = []  # callables: typed events (messages.Event), {"link": "up"/"down"}, {"preview": …}
        self.frame: dict | None = None  # the newest preview frame: {"number", "jpeg" (bytes), "label", ...}
        self.frame_changed = asyncio.Condition()
        self.viewers = 0
        self.task: asyncio.Task | None = None
        self.lost_at: float | None = None  # when the daemon went away (the "back" line says for how long)

    async def run(self) -> None:
        """Connect, read, reconnect — until cancelled."""
        while True:
            try:
                await self._session()
            except PermissionError:
                if self.lost_at is None:
                    log.error("%s", access_advice(self.path))
                    self.lost_at = time.monotonic()
            except (OSError, ControlError, asyncio.IncompleteReadError, ValueError) as exc:
                if self.up.is_set():
                    log.warning("lost the daemon's control socket (%s); reconnecting every 2 s", exc)
                    self.lost_at = time.monotonic()
            finally:
                self._down()
            await asyncio.sleep(2.0)

    async def _session(self) -> None:
        """One connection: hello, subscribe, then read until it ends."""
        self.reader, self.writer = await asyncio.open_unix_connection(str(self.path), limit=MAX_LINE + 1)
        check_hello(decode(await self.reader.readline()), self.path)
        self.up.set()
        if self.lost_at is None:
            log.info("connected to the daemon on %s", self.path)
        else:
            log.warning("the daemon is back on %s (away %.0f s)", self.path, time.monotonic() - self.lost_at)
            self.lost_at = None
        reading = asyncio.ensure_future(self._read())
        try:
            await self.request("subscribe", events=True, frames=self.viewers > 0)
        except ControlError:
            reading.cancel()
            raise
        self._tell({"link": "up"})
        await reading

    async def _read(self) -> None:
        while True:
            line = await self.reader.readline()
            if not line:
                self._fail_pending()  # a request sent just before (subscribe) must not wait REPLY_TIMEOUT
                raise ControlError("the daemon closed the connection")
            message = decode(line)
            if (request_id := self.core.reply_id(message)) is not None:
                future = self.pending.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif "frame" in message:
                message["jpeg"] = base64.b64decode(message["jpeg"])
                self.frame = message
                async with self.frame_changed:
                    self.frame_changed.notify_all()
                self._tell({"preview": {k: message.get(k) for k in ("frame", "label", "confidence", "confidences")}})
            elif "event" in message and (event := event_from_json(message)) is not None:
                self._tell(event)

    def _fail_pending(self) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ControlError("the daemon went away"))
        self.pending.clear()

    def _down(self) -> None:
        was_up = self.up.is_set()
        self.up.clear()
        self._fail_pending()
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        if was_up:
            self._tell({"link": "down"})

    def _tell(self, message: dict) -> None:
        for listener in list(self.listeners):
            try:
                listener(message)
            except Exception as exc:  # a listener's bug must not stop the link
                log.debug("listener failed: %r", exc)

    async def request(self, op: str, **fields) -> dict:
        """One request; the reply's data. Raises ControlError with the daemon's one-line reason."""
        if self.writer is None:
            raise ControlError("the teachcam daemon is not running (or not reachable on its control socket)")
        request_id, line = self.core.request_line(op, fields)
        future = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        try:
            self.writer.write(line)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            self.pending.pop(request_id, None)
            raise ControlError(f"{op}: the daemon went away ({type(exc).__name__})") from None
        try:
            reply = await asyncio.wait_for(future, REPLY_TIMEOUT)
        except TimeoutError:
            self.pending.pop(request_id, None)
            raise ControlError(f"{op}: the daemon did not answer in {REPLY_TIMEOUT:.0f} s") from None
        return self.core.result(op, reply)

    async def watch(self, delta: int) -> None:
        """A live view opened (+1) or closed (−1): preview frames are subscribed only while someone watches."""
        before = self.viewers
        self.viewers = max(0, self.viewers + delta)
        if (before == 0) != (self.viewers == 0) and self.up.is_set():
            try:
                await self.request("subscribe", events=True, frames=self.viewers > 0)
            except ControlError as exc:
                log.debug("subscribe: %s", exc)

    async def next_frame(self, after: int, timeout: float = 5.0) -> dict | None:
        """The newest frame with a number above ``after`` (None after ``timeout`` seconds)."""
        async with self.frame_changed:
            try:
                await asyncio.wait_for(self.frame_changed.wait_for(
                    lambda: self.frame is not None and self.frame["frame"] != after), timeout)
            except TimeoutError:
                return None
        return self.frame
