"""The control socket: the one way into a running daemon for the CLI, the web page and MQTT.

A Unix-domain socket — never an IP one: the process that holds the camera, the pins and the
store stays off the network; network-facing code runs in its own process and talks to this.
Path: ``[control] socket`` in the config, else ``$TEACHCAM_SOCKET``, else
``$RUNTIME_DIRECTORY/control.sock`` (systemd's ``RuntimeDirectory=teachcam``:
``/run/teachcam/control.sock``), else ``$XDG_RUNTIME_DIR/teachcam/control.sock``. Mode 0660,
group ``teachcam`` (who may connect).

Protocol (version 1): newline-delimited JSON, UTF-8, one object per line, at most 8 MiB a line
(a longer one gets an error and the connection is closed).

* On connect the server says ``{"hello": "teachcam", "protocol": 1, "version": "0.1.0"}``. A
  client may answer ``{"op": "hello", "protocol": 1}``; another protocol number is refused.
* A request is ``{"id": ANY, "op": NAME, ...fields}``; its reply echoes the id:
  ``{"id": ANY, "ok": true, "data": {...}}`` or ``{"id": ANY, "ok": false, "error": "one line"}``.
  Every line that is not a valid request gets exactly one error reply.
* Ops: ``enroll`` (``label`` — the current camera frame), ``enroll_image`` (``label``, ``image``:
  base64 JPEG/PNG), ``predict_image`` (``image``), ``add_class``, ``rename_class`` (``old``,
  ``new``), ``remove_class`` (``label``), ``undo``, ``clear``, ``pause``, ``resume``, ``reload``,
  ``snapshot`` (data ``jpeg``: base64), ``status``, ``classes`` (counts, example and thumbnail
  ids), ``thumbnail`` (``thumb`` → data ``png``: base64), ``subscribe`` (``events``: bool,
  ``frames``: bool), ``unsubscribe``, ``ping``. ``via`` (optional) names the client in events.
* Pushed to subscribers: events ``{"event": KIND, ...}`` and preview frames
  ``{"frame": N, "width": W, "height": H, "label", "confidence", "confidences", "jpeg": BASE64}`` — JPEG, at most
  ``preview_max_size`` px on the longer side and ``preview_max_fps`` a second, encoded once per
  frame for all subscribers and never while nobody subscribes. A client that stops reading
  loses frames (only the newest waits); one whose backlog passes 1,000 messages is disconnected.

Example (``socat`` or ``nc -U``)::

    $ echo '{"id": 1, "op": "status"}' | socat - UNIX-CONNECT:/run/teachcam/control.sock
    {"hello": "teachcam", "protocol": 1, "version": "0.1.0"}
    {"id": 1, "ok": true, "data": {"fps": 29.8, "inference_ms": 31.2, "camera": "picamera2", ...}}
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import grp
import io
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from teachcam.edge import __version__
from teachcam.edge import messages as m
from teachcam.edge.errors import ControlAccessError, ControlError, TeachcamError
from teachcam.edge.ports import Port

log = logging.getLogger(__name__)
MAX_LINE = 8 * 1024 * 1024
MAX_BACKLOG = 1000
REPLY_TIMEOUT = 60.0
_TEXT_FIELDS = {"label", "old", "new", "thumb", "name", "via", "example", "fingerprint", "source", "text",
                "link"}
MAX_EMBEDDING = 16384  # floats in an embedding a client may send (MobileNetV2's is 1280)
MAX_LIST = 100_000  # ids or sources in one remove_examples
MAX_SOCKET_PATH = 100  # bytes: a Unix socket's path must fit sun_path (108 on Linux, less elsewhere)


def server_socket_path(configured: str | None = None) -> Path:
    """Where the daemon listens (see the module docstring)."""
    if configured:
        return Path(configured)
    if os.environ.get("TEACHCAM_SOCKET"):
        return Path(os.environ["TEACHCAM_SOCKET"])
    if os.environ.get("RUNTIME_DIRECTORY"):  # systemd's RuntimeDirectory=teachcam
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "control.sock"
    return _user_runtime_dir() / "control.sock"


SERVICE_SOCKET = Path("/run/teachcam/control.sock")  # systemd's RuntimeDirectory=teachcam (mode 0750)


def client_socket_path() -> Path:
    """Where a client looks for the daemon: $TEACHCAM_SOCKET, the service's, else the user's own."""
    if os.environ.get("TEACHCAM_SOCKET"):
        return Path(os.environ["TEACHCAM_SOCKET"])
    try:
        if SERVICE_SOCKET.exists():
            return SERVICE_SOCKET
    except PermissionError:  # the service's folder is its group's: connect() says what to do
        return SERVICE_SOCKET
    return _user_runtime_dir() / "control.sock"


def access_advice(path: Path) -> str:
    """One line for a user who may not use the socket at ``path``: who may, and what to run."""
    import getpass

    group = "teachcam"
    for folder in (path, path.parent):
        try:
            group = grp.getgrgid(os.stat(folder).st_gid).gr_name
            break
        except (OSError, KeyError):
            continue
    return (f"permission denied on {path}: the teachcam service answers only members of group {group} — run "
            f"`sudo usermod -aG {group} {getpass.getuser()}`, then log in again (or `newgrp {group}` in this shell)")


def _user_runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "teachcam" if base else Path(f"/tmp/teachcam-{os.getuid()}")


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
        self.backlog.append(message if isinstance(message, bytes) else _encode(message))
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


def _encode(message: dict) -> bytes:
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


class ControlServer(Port):
    """The control socket as a port: requests become commands for the main loop, events and preview
    frames go out to subscribers. All socket work happens on its own thread (an asyncio loop)."""

    name = "control"

    def __init__(self, path: str | None, post, *, preprocess=None, group: str = "teachcam", preview_size: int = 480,
                 preview_fps: float = 10.0):
        self.path = server_socket_path(path)
        self.post, self.preprocess, self.group = post, preprocess, group
        self.preview_size, self.preview_interval = preview_size, 1.0 / preview_fps
        self.loop: asyncio.AbstractEventLoop | None = None
        self.clients: set[_Client] = set()
        self.jpeg_encodes = self.frames_sent = self.bad_requests = self.connections = 0
        self._frame_subscribers = 0
        self._last_encode = 0.0
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
    def update(self, view, frame=None) -> None:
        if not self._frame_subscribers or frame is None or self.loop is None:
            return  # never encoded while nobody subscribes
        now = time.monotonic()
        if now - self._last_encode < self.preview_interval:
            return
        self._last_encode = now
        jpeg, width, height = _jpeg(frame, self.preview_size)  # once per frame, for every subscriber
        self.jpeg_encodes += 1
        line = _encode({"frame": view.frame, "width": width, "height": height,
                        "label": view.label, "confidence": round(view.confidence, 4),
                        "confidences": {k: round(v, 4) for k, v in view.confidences.items()},
                        "jpeg": base64.b64encode(jpeg).decode()})
        self.loop.call_soon_threadsafe(self._fan_out_frame, line)

    def event(self, event) -> None:
        if self.loop is not None and not self.loop.is_closed():
            line = _encode(event.as_json())
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
        client.send({"hello": "teachcam", "protocol": m.PROTOCOL_VERSION, "version": __version__})
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
                raise ControlError("op must be a string (the protocol: README, \"The control socket\")")
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
        command_type = m.SOCKET_COMMANDS.get(op)
        if command_type is None:
            known = ", ".join(sorted([*m.SOCKET_COMMANDS, "hello", "ping", "subscribe", "unsubscribe"]))
            raise ControlError(f"unknown op {op!r} (known: {known})")
        command = await self._command(command_type, request)
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
                "max_fps": round(1 / self.preview_interval, 2)}

    async def _command(self, command_type: type[m.Command], request: dict) -> m.Command:
        fields = {f.name: f for f in dataclasses.fields(command_type)}
        values: dict = {"via": "socket"}
        for key, value in request.items():
            if key in ("id", "op"):
                continue
            if key == "image" and "pixels" in fields:
                exact = command_type is m.EnrollEmbedding  # a thumbnail: already the model input, when it fits
                values["pixels"] = await asyncio.get_running_loop().run_in_executor(None, self._decode_image, value,
                                                                                    exact)
                continue
            if key == "embedding" and "embedding" in fields:
                values["embedding"] = _decode_embedding(value)
                continue
            if key not in fields or key == "pixels":
                raise ControlError(f"{command_type.op}: unknown field {key!r}")
            if key in _TEXT_FIELDS:
                if not isinstance(value, str) or not value or len(value) > 256:
                    raise ControlError(f"{command_type.op}: {key} must be a non-empty string (at most 256 characters)")
                if key == "via":
                    value = value[:16]
            elif key == "index":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ControlError(f"{command_type.op}: index must be an integer")
            elif key == "unique":
                if not isinstance(value, bool):
                    raise ControlError(f"{command_type.op}: unique must be true or false")
            elif key == "skip_similar":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
                    raise ControlError(f"{command_type.op}: skip_similar must be a similarity from 0 (off) to 1")
                value = float(value)
            elif key == "seconds":
                if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 600:
                    raise ControlError(f"{command_type.op}: seconds must be 1 to 600")
                value = float(value)
            elif key == "nearest":
                if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 24:
                    raise ControlError(f"{command_type.op}: nearest must be 1 to 24")
            elif key == "max_size":
                if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 8192:
                    raise ControlError(f"{command_type.op}: max_size must be 0 (full size) to 8192 pixels")
            elif key in ("examples", "sources"):
                if (not isinstance(value, list) or len(value) > MAX_LIST
                        or not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value)):
                    raise ControlError(f"{command_type.op}: {key} must be a list of strings")
                value = tuple(value)
            values[key] = value
        if "pixels" in fields and "pixels" not in values:
            raise ControlError(f"{command_type.op}: image (base64 JPEG or PNG) is required")
        for required in ("label", "old", "new", "thumb", "example", "source", "text"):
            if required in fields and fields[required].default == "" and required not in values:
                raise ControlError(f"{command_type.op}: {required} is required")
        if command_type is m.Enroll and "label" not in values and "index" not in values:
            raise ControlError("enroll: label (a class name) is required")
        return command_type(**values)

    def _decode_image(self, value, exact: bool = False) -> np.ndarray:
        """base64 JPEG/PNG → the model's input pixels (``exact``: taken as is when already that size)."""
        from teachcam.edge.model.images import read_image_bytes

        if not isinstance(value, str):
            raise ControlError("image must be a base64 string")
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
        if isinstance(result.get("png"), bytes):
            result["png"] = base64.b64encode(result["png"]).decode()
        if isinstance(result.get("embedding"), np.ndarray):
            result["embedding"] = base64.b64encode(result["embedding"].astype("<f4").tobytes()).decode()
        return result


def _decode_embedding(value) -> np.ndarray:
    """base64 of little-endian float32 values → a finite vector (at most MAX_EMBEDDING values)."""
    if not isinstance(value, str) or len(value) > MAX_EMBEDDING * 6:
        raise ControlError("embedding must be base64 of little-endian float32 values")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ControlError("embedding is not valid base64") from None
    if not raw or len(raw) % 4:
        raise ControlError(f"embedding has {len(raw)} bytes: not a whole number of float32 values")
    vector = np.frombuffer(raw, "<f4").astype(np.float32)
    if not np.all(np.isfinite(vector)):
        raise ControlError("embedding holds NaN or infinite values")
    return vector


def is_answering(path: Path, timeout: float = 1.0) -> bool:
    """True when a daemon accepts connections on ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(timeout)
        try:
            probe.connect(str(path))
            return True
        except OSError:
            return False


class ControlClient:
    """A blocking client of the control socket (the CLI's): ``request(op, **fields)`` → the reply's data.

    Raises (``connect``):
        ControlAccessError: a daemon may run, but this user is not in the socket's group (one line: what to run).
        ControlError: no daemon answers (the CLI then opens the store itself).
    """

    def __init__(self, path: str | Path | None = None, timeout: float = 120.0):
        self.path = Path(path) if path else client_socket_path()
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._file = None
        self._next_id = 0
        self.hello: dict = {}

    def connect(self) -> ControlClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0 if self.timeout is None else min(self.timeout, 5.0))
        try:
            sock.connect(str(self.path))
        except PermissionError:
            sock.close()
            raise ControlAccessError(access_advice(self.path)) from None
        except OSError as exc:
            sock.close()
            raise ControlError(f"no teachcam daemon answers on {self.path} ({exc.strerror or exc})") from None
        sock.settimeout(self.timeout)
        self.sock, self._file = sock, sock.makefile("rb")
        self.hello = self._read()
        if self.hello.get("hello") != "teachcam" or self.hello.get("protocol") != m.PROTOCOL_VERSION:
            self.close()
            raise ControlError(f"{self.path} does not speak teachcam protocol {m.PROTOCOL_VERSION}")
        return self

    def _read(self) -> dict:
        line = self._file.readline(MAX_LINE + 1)
        if not line:
            raise ControlError("the daemon closed the connection")
        return json.loads(line)

    def request(self, op: str, **fields) -> dict:
        """Send one request and wait for its reply (events that arrive meanwhile are skipped).

        Raises:
            ControlError: the daemon refused the request (its one-line reason) or went away.
        """
        self._next_id += 1
        request_id = self._next_id
        self.sock.sendall(_encode({"id": request_id, "op": op, "via": "cli", **fields}))
        while True:
            message = self._read()
            if message.get("id") == request_id and "ok" in message:
                if not message["ok"]:
                    raise ControlError(message.get("error", "refused"))
                return message.get("data") or {}

    def messages(self):
        """Everything the daemon pushes (after ``request("subscribe", ...)``), forever."""
        while True:
            yield self._read()

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading messages()
            except OSError:
                pass
        for part in (self._file, self.sock):
            if part is not None:
                part.close()
        self.sock = self._file = None

    def __enter__(self) -> ControlClient:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()
