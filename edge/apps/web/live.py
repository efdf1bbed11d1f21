"""The page's live side: the MJPEG stream, the websocket each page holds, and the daemon's events, previews and
status fanned out to every page — each through a bounded queue of its own (a page that does not keep up loses the
oldest, never blocks the others)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from aiohttp import WSMsgType, web

from teachcam.edge import messages as m
from teachcam.edge.apps.web.link import DaemonLink
from teachcam.edge.errors import ControlError

log = logging.getLogger(__name__)
STATUS_INTERVAL = 2.0
WS_QUEUE = 200
PREVIEW_MIN_INTERVAL = 0.2  # live bars: at most 5 updates a second per page


class Live:
    def __init__(self, link: DaemonLink, *, hold_rate: float, counters: dict, web_stats: Callable[[], dict],
                 pairing: str = "", pairing_link: str = ""):
        self.link, self.hold_rate, self.counters, self.web_stats = link, hold_rate, counters, web_stats
        self.pairing = pairing  # shown once on the device's own outputs (the OLED) when the daemon first answers
        self.pairing_link = pairing_link  # and as a QR code on its attached screen
        self.sockets: set[web.WebSocketResponse] = set()
        self.queues: dict[web.WebSocketResponse, asyncio.Queue] = {}
        link.listeners.append(self.from_daemon)

    async def close_all(self) -> None:
        for ws in list(self.sockets):
            await ws.close()

    async def stream(self, request):
        response = web.StreamResponse(headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame",
                                               "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
        await response.prepare(request)
        await self.link.watch(+1)
        last = -1
        try:
            while True:
                frame = await self.link.next_frame(last, timeout=5.0)
                if frame is None:
                    continue
                last = frame["frame"]
                jpeg = frame["jpeg"]
                await response.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
                self.counters["stream_frames"] += 1
        except (ConnectionResetError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            await self.link.watch(-1)
        return response

    async def websocket(self, request):
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=64 * 1024)
        await ws.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(WS_QUEUE)
        self.sockets.add(ws)
        self.queues[ws] = queue
        sender = asyncio.ensure_future(self._send_loop(ws, queue))
        try:
            hello = {"type": "hello", "daemon": self.link.up.is_set(), "hold_rate": self.hold_rate}
            if self.link.up.is_set():
                try:
                    hello["status"] = await self.link.request("status")
                except ControlError:
                    pass
            self._offer(queue, hello)
            async for message in ws:  # the page sends nothing it needs answered; read to notice closing
                if message.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            sender.cancel()
            self.sockets.discard(ws)
            self.queues.pop(ws, None)
        return ws

    async def _send_loop(self, ws, queue: asyncio.Queue) -> None:
        last_preview = 0.0
        try:
            while True:
                message = await queue.get()
                if message.get("type") == "preview":
                    now = time.monotonic()
                    if now - last_preview < PREVIEW_MIN_INTERVAL:
                        continue
                    last_preview = now
                await ws.send_str(json.dumps(message))
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass

    @staticmethod
    def _offer(queue: asyncio.Queue, message: dict) -> None:
        if queue.full():  # a page that does not keep up loses the oldest, never blocks the others
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                pass
        queue.put_nowait(message)

    def from_daemon(self, message: dict | m.Event) -> None:
        if isinstance(message, m.Event):
            if isinstance(message, (m.Stats, m.NoticeShown)):  # a notice is for the device's own display
                return
            out = {"type": "event", **message.as_json()}
            for queue in self.queues.values():
                self._offer(queue, out)
            return
        if message.get("link") == "up" and self.pairing:
            text, self.pairing = self.pairing, ""
            asyncio.ensure_future(self._notice(text, self.pairing_link))
        if "preview" in message:
            out = {"type": "preview", **message["preview"]}
        elif "link" in message:
            out = {"type": "daemon", "up": message["link"] == "up"}
        else:
            return
        for queue in self.queues.values():
            self._offer(queue, out)

    async def _notice(self, text: str, link: str) -> None:
        try:
            await self.link.request("notice", text=text, seconds=120, **({"link": link} if link else {}))
        except ControlError as exc:
            log.debug("notice: %s", exc)

    async def status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            if not self.queues or not self.link.up.is_set():
                continue
            try:
                status = await self.link.request("status")
            except ControlError:
                continue
            out = {"type": "status", **status, "web": self.web_stats()}
            for queue in self.queues.values():
                self._offer(queue, out)
