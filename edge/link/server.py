"""The control socket's server: the daemon's end, a port on its own thread (an asyncio loop).

A Unix-domain socket — never an IP one: the process that holds the camera, the pins and the store stays off
the network; network-facing code runs in its own process and talks to this. Requests become typed commands for
the daemon's loop (:func:`protocol.command_from_json`), events and preview frames go out to subscribers — JPEG, at
most ``preview_max_size`` px on the longer side and ``preview_max_fps`` a second, encoded once per frame for all
subscribers and never while nobody subscribes. A client that stops reading loses frames (only the newest waits);
one whose backlog passes 1,000 messages is disconnected. The protocol itself: :mod:`teachcam.edge.link.protocol`.

Example (``socat`` or ``nc -U``)::

    $ echo '{"id": 1, "op": "status"}' | socat - UNIX-CONNECT:/run/teachcam/control.sock
    {"hello": "teachcam", "protocol": 1, "version": "0.1.0"}
    {"id": 1, "ok": true, "data": {"fps": 29.8, "inference_ms": 31.2, "camera": "picamera2", ...}}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import grp
import io
import json
import logging
import os
import threading
import time
from collections import deque

import numpy as np

from teachcam.edge import __version__
from teachcam.edge import messages as m
from teachcam.edge.errors import ControlError, TeachcamError
from teachcam.edge.link.client import is_answering
from teachcam.edge.link.protocol import (
    MAX_LINE,
    MAX_SOCKET_PATH,
    command_from_json,
    encode,
    encode_embedding,
    hello,
    server_socket_path,
)
from teachcam.edge.model.images import read_image_bytes
from teachcam.edge.ports import Port

log = logging.getLogger(__name__)
MAX_BACKLOG = 1000
REPLY_TIMEOUT = 60.0


def _jpeg(frame: np.ndarray, max_size: int | None = None, quality: int = 80) -> tuple[bytes, int, int]:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    if max_size and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue(), image.width, image.height


class _Client:
    """One connection: its subscriptions and its outgoing messages (bounded; frames coalesced)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.events = self.frames = False
        self.backlog: deque[bytes] = deque()
        self.frame: bytes | None = None  # only the newest preview frame waits
        self.wake = asyncio.Event()
        self.closed = False

    def send(self, message: dict | bytes) -> None:
        if self.closed:
            return
        self.backlog.append(message if isinstance(message, bytes) else encode(message))
        if len(self.backlog) > MAX_BACKLOG:
            log.warning("control client disconnected: it stopped reading (%d messages waiting)", len(self.backlog))
            self.close()
        self.wake.set()

    def send_frame(self, line: bytes) -> None:
        if not self.closed:
            self.frame = line
            self.wake.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.backlog.clear()
            self.wake.set()
            self.writer.close()


class ControlServer(Port):
    """The control socket as a port: requests become commands for the main loop, events and preview
    frames go out to subscribers. All socket work happens on its own thread (an asyncio loop)."""

    name = "control"

    def __init__(self, path: str | None, post, *, preprocess=None, group: str = "teachcam", preview_size: int = 480,
                 preview_fps: float = 10.0):
        self.path = server_socket_path(path)
        self.post, self.preprocess, self.group = post, preprocess, group
        self.preview_size = preview_size
        self.view_interval = 1.0 / preview_fps  # its mailbox delivers at most one view per preview frame
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clients: set[_Client] = set()
        self.jpeg_encodes = self.frames_sent = self.bad_requests = self.connections = 0
        self._frame_subscribers = 0
        self._server = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> ControlServer:
        """Listen (mode 0660, group ``group``); returns once the socket accepts connections.

        Raises:
            ControlError: the path is unusable, or another daemon answers there.
        """
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise ControlError(f"control socket path {self.path} is too long for a Unix socket "
                               f"(max ~{MAX_SOCKET_PATH} bytes)")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        if self.path.exists() or self.path.is_symlink():
            if is_answering(self.path):
                raise ControlError(f"another teachcam daemon answers on {self.path}; stop it first "
                                   "(systemctl stop teachcam), or set [control] socket")
            self.path.unlink()  # a stale socket from a daemon that died
        ready, failure = threading.Event(), []

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            try:
                self._server = self.loop.run_until_complete(
                    asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE + 1))
                self._secure()
            except (OSError, ControlError) as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.loop.close()

        self._thread = threading.Thread(target=run, name="teachcam-control", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise ControlError(f"cannot listen on {self.path}: {failure[0]}")
        log.info("control socket: %s", self.path)
        return self

    def _secure(self) -> None:
        os.chmod(self.path, 0o660)
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            return  # no such group here (a laptop): the owner alone may connect
        if os.stat(self.path).st_gid == gid:
            return  # under systemd the socket is born in the group (Group=teachcam), and chown is a filtered syscall
        try:
            os.chown(self.path, -1, gid)
        except PermissionError:
            log.warning("control socket: cannot give it to group %s (not a member?)", self.group)

    def close(self) -> None:
        if self.loop is None or self.loop.is_closed():
            return

        async def shutdown():
            self._server.close()
            for client in list(self.clients):
                client.close()  # each connection then ends by itself (its reader sees the end)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
            for task in tasks:
                task.cancel()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        except Exception as exc:
            log.debug("control socket shutdown: %s", exc)
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.path.unlink()
        except OSError:
            pass

    # -- the port side (called from the control port's mailbox thread) -------------------------------
    def view_key(self, view) -> object:
        # views only make preview frames: while nobody subscribes to them, this thread is not woken for views
        return None if self._frame_subscribers else "no preview subscriber"

    def update(self, view, frame=None) -> None:
        if not self._frame_subscribers or frame is None or self.loop is None:
            return  # never encoded while nobody subscribes
        jpeg, width, height = _jpeg(frame, self.preview_size)  # once per frame, for every subscriber
        self.jpeg_encodes += 1
        line = encode({"frame": view.frame, "width": width, "height": height,
                        "label": view.label, "confidence": round(view.confidence, 4),
                        "confidences": {k: round(v, 4) for k, v in view.confidences.items()},
                        "jpeg": base64.b64encode(jpeg).decode()})
        self.loop.call_soon_threadsafe(self._fan_out_frame, line)

    def event(self, event) -> None:
        if self.loop is not None and not self.loop.is_closed():
            line = encode(event.as_json())
            self.loop.call_soon_threadsafe(self._fan_out_event, line)

    def _fan_out_frame(self, line: bytes) -> None:
        for client in self.clients:
            if client.frames:
                client.send_frame(line)
                self.frames_sent += 1

    def _fan_out_event(self, line: bytes) -> None:
        for client in self.clients:
            if client.events:
                client.send(line)

    # -- the socket side (the asyncio thread) -----------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            pass  # shutting down

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        self.clients.add(client)
        self.connections += 1
        sender = asyncio.ensure_future(self._send_loop(client))
        client.send(hello())
        try:
            while not client.closed:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    self.bad_requests += 1
                    client.send({"id": None, "ok": False, "error": f"line longer than {MAX_LINE} bytes; closing"})
                    await asyncio.sleep(0.05)
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    break  # the client went away (perhaps mid-line)
                reply = await self._request(client, line)
                if reply is not None:
                    client.send(reply)
        finally:
            self._unsubscribe(client)
            self.clients.discard(client)
            if not client.closed and client.backlog:
                try:
                    await asyncio.wait_for(self._flushed(client), 1.0)  # the last reply still goes out
                except (TimeoutError, asyncio.CancelledError):
                    pass
            client.close()
            sender.cancel()

    @staticmethod
    async def _flushed(client: _Client) -> None:
        while client.backlog and not client.closed:
            await asyncio.sleep(0.01)

    async def _send_loop(self, client: _Client) -> None:
        try:
            while not client.closed:
                await client.wake.wait()
                client.wake.clear()
                while client.backlog or client.frame is not None:
                    if client.backlog:
                        data = client.backlog.popleft()
                    else:
                        data, client.frame = client.frame, None
                    client.writer.write(data)
                    await client.writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception as exc:
            log.debug("control client writer: %s", exc)

    def _unsubscribe(self, client: _Client) -> None:
        if client.frames:
            client.frames = False
            self._frame_subscribers -= 1

    async def _request(self, client: _Client, line: bytes) -> dict | None:
        request_id = None
        try:
            try:
                request = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ControlError(f"not a JSON object: {str(exc)[:80]}") from None
            if not isinstance(request, dict):
                raise ControlError("a request is a JSON object with an op")
            request_id = request.get("id")
            if not (request_id is None or isinstance(request_id, (str, int, float)) and not isinstance(request_id, bool)):
                request_id = None
                raise ControlError("id must be a string or a number")
            op = request.get("op")
            if not isinstance(op, str):
                raise ControlError("op must be a string (the protocol: docs/control.md)")
            data = await self._dispatch(client, op, request)
            return {"id": request_id, "ok": True, "data": data}
        except TeachcamError as exc:
            self.bad_requests += isinstance(exc, ControlError)
            return {"id": request_id, "ok": False, "error": str(exc)}
        except Exception as exc:  # nothing a client sends may kill the server: one line, no traceback
            self.bad_requests += 1
            log.debug("control request failed: %r", exc)
            return {"id": request_id, "ok": False, "error": f"cannot handle that request ({type(exc).__name__})"}

    async def _dispatch(self, client: _Client, op: str, request: dict) -> dict:
        if op == "hello":
            if request.get("protocol", m.PROTOCOL_VERSION) != m.PROTOCOL_VERSION:
                client.send({"id": request.get("id"), "ok": False,
                             "error": f"this daemon speaks protocol {m.PROTOCOL_VERSION}"})
                client.close()
                raise ControlError(f"protocol {request.get('protocol')!r} is not supported")
            return {"protocol": m.PROTOCOL_VERSION, "version": __version__}
        if op == "ping":
            return {"pong": time.time()}
        if op in ("subscribe", "unsubscribe"):
            return self._subscribe(client, op, request)
        if "image" in request or "examples" in request:  # decoding and preprocessing takes a while: not on this thread
            command = await asyncio.get_running_loop().run_in_executor(None, command_from_json, request, self._decode_image)
        else:
            command = command_from_json(request, self._decode_image)
        result = await self._ask(command)
        return self._serializable(result)

    def _subscribe(self, client: _Client, op: str, request: dict) -> dict:
        for key in ("events", "frames"):
            if key in request and not isinstance(request[key], bool):
                raise ControlError(f"{key} must be true or false")
        if op == "unsubscribe":
            client.events = False
            self._unsubscribe(client)
        else:
            client.events = request.get("events", True)
            frames = request.get("frames", False)
            if frames and not client.frames:
                self._frame_subscribers += 1
            elif not frames and client.frames:
                self._frame_subscribers -= 1
            client.frames = frames
        return {"events": client.events, "frames": client.frames, "max_size": self.preview_size,
                "max_fps": round(1 / self.view_interval, 2)}

    def _decode_image(self, value, exact: bool = False) -> np.ndarray:
        """base64 JPEG/PNG → the model's input pixels (``exact``: taken as is when already that size)."""
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ControlError("image is not valid base64") from None
        preprocess = self.preprocess()
        image = read_image_bytes(data, name="the uploaded image", min_side=preprocess.shorter_side)
        if exact and image.shape[:2] == (preprocess.crop_height, preprocess.crop_width):
            return np.ascontiguousarray(image[..., :3])
        return preprocess(image)

    async def _ask(self, command: m.Command):
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def reply(result) -> None:  # called on the main loop's thread
            loop.call_soon_threadsafe(lambda: answer.done() or answer.set_result(result))

        self.post(command, reply)
        try:
            result = await asyncio.wait_for(answer, REPLY_TIMEOUT)
        except TimeoutError:
            raise ControlError(f"{command.op}: the daemon did not answer in {REPLY_TIMEOUT:.0f} s") from None
        if isinstance(result, BaseException):
            raise result
        return result

    def _serializable(self, result) -> dict:
        result = dict(result or {})
        if isinstance(result.get("frame"), np.ndarray):
            jpeg, width, height = _jpeg(result.pop("frame"), result.pop("max_size", 0) or None)
            result.update(jpeg=base64.b64encode(jpeg).decode(), width=width, height=height)
        for key in ("png", "jpeg"):  # a thumbnail, an inbox item's picture
            if isinstance(result.get(key), bytes):
                result[key] = base64.b64encode(result[key]).decode()
        if isinstance(result.get("embedding"), np.ndarray):
            result["embedding"] = encode_embedding(result["embedding"])
        return result
