"""The control socket's protocol, for both ends: where the socket is, how lines are framed, the hello, commands
from JSON (validated by the rules declared beside each field in :mod:`teachcam.edge.messages`), events back from
JSON, and the client side's bookkeeping (ids, replies, errors) that the blocking and the asyncio client share.

Protocol (version 1): newline-delimited JSON, UTF-8, one object per line, at most 8 MiB a line (a longer one gets
an error and the connection is closed).

* On connect the server says ``{"hello": "teachcam", "protocol": 1, "version": "0.1.0"}``. A client may answer
  ``{"op": "hello", "protocol": 1}``; another protocol number is refused.
* A request is ``{"id": ANY, "op": NAME, ...fields}``; its reply echoes the id: ``{"id": ANY, "ok": true,
  "data": {...}}`` or ``{"id": ANY, "ok": false, "error": "one line"}``. Every line that is not a valid request
  gets exactly one error reply.
* Ops: every command in ``messages.SOCKET_COMMANDS`` (its fields are the request's) and ``messages.SOCKET_OPS``
  (``hello``, ``ping``, ``subscribe`` with ``events``/``frames`` booleans, ``unsubscribe``). ``via`` (optional)
  names the client in events. docs/control.md lists them with their fields; a test keeps that table true.
* Pushed to subscribers: events ``{"event": KIND, ...}`` (``messages.EVENTS``) and preview frames ``{"frame": N,
  "width": W, "height": H, "label", "confidence", "confidences", "jpeg": BASE64}``.

Path: ``[control] socket`` in the config, else ``$TEACHCAM_SOCKET``, else ``$RUNTIME_DIRECTORY/control.sock``
(systemd's ``RuntimeDirectory=teachcam``: ``/run/teachcam/control.sock``), else
``$XDG_RUNTIME_DIR/teachcam/control.sock``. Mode 0660, group ``teachcam`` (who may connect).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import getpass
import grp
import json
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np

from teachcam.edge import __version__
from teachcam.edge import messages as m
from teachcam.edge.errors import ControlAccessError, ControlError, TeachcamError
from teachcam.edge.region import check_region

MAX_LINE = 8 * 1024 * 1024
MAX_SOCKET_PATH = 100  # bytes: a Unix socket's path must fit sun_path (108 on Linux, less elsewhere)
MAX_TEXT = 256  # characters in a text field
MAX_EMBEDDING = 16384  # floats in an embedding a client may send (MobileNetV2's is 1280)
MAX_LIST = 100_000  # ids or sources in one remove_examples
MAX_BATCH = 200  # examples in one enroll_embeddings
SERVICE_SOCKET = Path("/run/teachcam/control.sock")  # systemd's RuntimeDirectory=teachcam (mode 0750)


# -- where ---------------------------------------------------------------------------------------------------
def server_socket_path(configured: str | None = None) -> Path:
    """Where the daemon listens (see the module docstring)."""
    if configured:
        return Path(configured)
    if os.environ.get("TEACHCAM_SOCKET"):
        return Path(os.environ["TEACHCAM_SOCKET"])
    if os.environ.get("RUNTIME_DIRECTORY"):  # systemd's RuntimeDirectory=teachcam
        return Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]) / "control.sock"
    return _user_runtime_dir() / "control.sock"


def client_socket_path() -> Path:
    """Where a client looks for the daemon: $TEACHCAM_SOCKET, the service's, else the user's own."""
    if os.environ.get("TEACHCAM_SOCKET"):
        return Path(os.environ["TEACHCAM_SOCKET"])
    try:
        if SERVICE_SOCKET.exists():
            return SERVICE_SOCKET
    except PermissionError:  # the service's folder is its group's: connecting says what to do
        return SERVICE_SOCKET
    return _user_runtime_dir() / "control.sock"


def _user_runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "teachcam" if base else Path(f"/tmp/teachcam-{os.getuid()}")


def access_advice(path: Path) -> str:
    """One line for a user who may not use the socket at ``path``: who may, and what to run."""
    group = "teachcam"
    for folder in (path, path.parent):
        try:
            group = grp.getgrgid(os.stat(folder).st_gid).gr_name
            break
        except (OSError, KeyError):
            continue
    return (f"permission denied on {path}: the teachcam service answers only members of group {group} — run "
            f"`sudo usermod -aG {group} {getpass.getuser()}`, then log in again (or `newgrp {group}` in this shell)")


def connection_failure(exc: BaseException, path: Path) -> ControlError:
    """Any failure to reach or keep talking to the daemon, as one line (never a traceback)."""
    if isinstance(exc, ControlError):
        return exc
    if isinstance(exc, PermissionError):
        return ControlAccessError(access_advice(path))
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, EOFError)):  # asyncio's IncompleteReadError too
        return ControlError(f"the teachcam daemon on {path} went away mid-request (restarting?); try again")
    if isinstance(exc, TimeoutError):
        return ControlError(f"the teachcam daemon on {path} did not answer in time")
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return ControlError(f"no teachcam daemon answers on {path} (is it running? systemctl status teachcam)")
    if isinstance(exc, OSError):
        return ControlError(f"no teachcam daemon answers on {path} ({exc.strerror or exc})")
    if isinstance(exc, ValueError):  # not JSON, or a line past MAX_LINE
        return ControlError(f"{path} sent something that is not the teachcam protocol ({str(exc)[:80]})")
    return ControlError(f"lost the teachcam daemon on {path} ({type(exc).__name__})")


# -- framing -------------------------------------------------------------------------------------------------
def encode(message: dict) -> bytes:
    """One message as one line."""
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str) + "\n").encode()


def decode(line: bytes) -> dict:
    """One line as one message (ValueError when it is not a JSON object)."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def hello() -> dict:
    return {"hello": "teachcam", "protocol": m.PROTOCOL_VERSION, "version": __version__}


def check_hello(message: dict, path: Path) -> dict:
    if message.get("hello") != "teachcam" or message.get("protocol") != m.PROTOCOL_VERSION:
        raise ControlError(f"{path} does not speak teachcam protocol {m.PROTOCOL_VERSION}")
    return message


# -- commands from JSON (the server's side) -------------------------------------------------------------------
def wire_fields(command_type: type[m.Command]) -> dict[str, tuple[str, m.Wire]]:
    """The JSON keys a command takes → (its field's name, its rules)."""
    out = {}
    for f in dataclasses.fields(command_type):
        rules = f.metadata.get("wire")
        if rules is not None:
            out["image" if rules.kind == "image" else f.name] = (f.name, rules)
    return out


def command_from_json(request: dict, decode_image: Callable[[str, bool], np.ndarray] | None = None) -> m.Command:
    """A request (``{"op": …, …fields}``) as its typed command; ControlError (one line) for anything wrong.

    ``decode_image(base64_text, exact)`` turns an ``image`` into the model's input pixels (the server's
    preprocessing); without it an image is refused.
    """
    op = request.get("op")
    command_type = m.SOCKET_COMMANDS.get(op) if isinstance(op, str) else None
    if command_type is None:
        known = ", ".join(sorted([*m.SOCKET_COMMANDS, *m.SOCKET_OPS]))
        raise ControlError(f"unknown op {op!r} (known: {known})")
    accepted = wire_fields(command_type)
    values: dict = {"via": "socket"}
    for key, value in request.items():
        if key in ("id", "op"):
            continue
        if key not in accepted:
            raise ControlError(f"{op}: unknown field {key!r}")
        name, rules = accepted[key]
        if rules.kind == "image":
            if decode_image is None:
                raise ControlError(f"{op}: images are not taken here")
            if not isinstance(value, str):
                raise ControlError("image must be a base64 string")
            values[name] = decode_image(value, rules.exact)
        elif rules.kind == "examples":
            values[name] = _examples(op, key, value, decode_image)
        else:
            values[name] = _checked(op, key, value, rules)
    for key, (name, rules) in accepted.items():
        if rules.required and name not in values:
            raise ControlError(f"{op}: {key} is required" + (" (base64 JPEG or PNG)" if rules.kind == "image" else ""))
    command = command_type(**values)
    problem = command.check()
    if problem:
        raise ControlError(f"{op}: {problem}")
    return command


def _checked(op: str, key: str, value, rules: m.Wire):
    kind = rules.kind
    if kind == "text":
        if isinstance(value, str) and value and rules.cut:
            return value[:rules.cut]
        if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
            raise ControlError(f"{op}: {key} must be a non-empty string (at most {MAX_TEXT} characters)")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ControlError(f"{op}: {key} must be true or false")
        return value
    if kind in ("int", "number"):
        types_ = (int,) if kind == "int" else (int, float)
        low, high = rules.low, rules.high
        if (not isinstance(value, types_) or isinstance(value, bool)
                or (low is not None and value < low) or (high is not None and value > high)):
            if rules.hint:
                what = rules.hint
            elif low is not None and high is not None:
                what = f"{low:g} to {high:g}"
            else:
                what = "an integer" if kind == "int" else "a number"
            raise ControlError(f"{op}: {key} must be {what}")
        return value if kind == "int" else float(value)
    if kind == "strings":
        if (not isinstance(value, list) or len(value) > MAX_LIST
                or not all(isinstance(v, str) and 0 < len(v) <= MAX_TEXT for v in value)):
            raise ControlError(f"{op}: {key} must be a list of strings")
        return tuple(value)
    if kind == "embedding":
        return decode_embedding(value)
    if kind == "region":
        if value is not None and not isinstance(value, list):
            raise ControlError(f"{op}: {key} must be a list of four numbers (x0, y0, x1, y1) or null")
        try:
            return check_region(value)
        except ValueError as exc:
            raise ControlError(f"{op}: {key}: {exc}") from None
    raise ControlError(f"{op}: {key} cannot be sent")  # a kind this version does not know


def _examples(op: str, key: str, value, decode_image) -> tuple:
    """A batch of examples taught elsewhere: each checked as enroll_embedding's fields are; a picture that cannot be
    read fails its own example (``error``), not the batch."""
    if decode_image is None:
        raise ControlError(f"{op}: images are not taken here")
    if not isinstance(value, list) or not 0 < len(value) <= MAX_BATCH:
        raise ControlError(f"{op}: {key} must be a list of 1 to {MAX_BATCH} examples")
    out = []
    for item in value:
        if not isinstance(item, dict) or set(item) - {"label", "source", "fingerprint", "embedding", "image"}:
            raise ControlError(f"{op}: each example is an object with label, source, fingerprint, embedding, image")
        for text in ("label", "source"):
            if not isinstance(item.get(text), str) or not item[text] or len(item[text]) > MAX_TEXT:
                raise ControlError(f"{op}: each example's {text} must be a non-empty string")
        fingerprint = item.get("fingerprint", "")
        if not isinstance(fingerprint, str) or len(fingerprint) > MAX_TEXT:
            raise ControlError(f"{op}: an example's fingerprint must be a string")
        if not isinstance(item.get("image"), str):
            raise ControlError(f"{op}: each example needs its image (base64 JPEG or PNG)")
        embedding = decode_embedding(item["embedding"]) if item.get("embedding") is not None else None
        example = {"label": item["label"], "source": item["source"], "fingerprint": fingerprint, "embedding": embedding}
        try:
            example["pixels"] = decode_image(item["image"], True)
        except TeachcamError as exc:
            example["error"] = str(exc)
        out.append(example)
    return tuple(out)


def decode_embedding(value) -> np.ndarray:
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


def encode_embedding(vector: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vector).astype("<f4").tobytes()).decode()


# -- events from JSON (the clients' side) ---------------------------------------------------------------------
def event_from_json(message: dict) -> m.Event | None:
    """The inverse of ``Event.as_json``: a pushed ``{"event": KIND, …}`` as its typed event (None for a kind this
    version does not know — a newer daemon's; fields it does not know are left out)."""
    event_type = m.EVENTS.get(message.get("event"))
    if event_type is None:
        return None
    values = {}
    for name, is_tuple in _event_fields(event_type):
        if name in message:
            value = message[name]
            values[name] = tuple(value) if is_tuple and isinstance(value, list) else value
    try:
        return event_type(**values)
    except TypeError:
        return None


@functools.cache
def _event_fields(event_type: type[m.Event]) -> tuple[tuple[str, bool], ...]:
    """An event's fields, and which are tuples (JSON brings them back as lists): worked out once per type."""
    hints = typing.get_type_hints(event_type)
    return tuple((f.name, _is_tuple(hints.get(f.name))) for f in dataclasses.fields(event_type))


def _is_tuple(hint) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple or (
        isinstance(hint, types.UnionType) and any(_is_tuple(h) for h in typing.get_args(hint)))


# -- the client side's bookkeeping ----------------------------------------------------------------------------
class ClientCore:
    """What the blocking and the asyncio client share, with no I/O: request lines with fresh ids, replies
    matched to them, and a refusal turned into the daemon's one-line reason."""

    def __init__(self, via: str):
        self.via = via
        self.next_id = 0

    def request_line(self, op: str, fields: dict) -> tuple[int, bytes]:
        self.next_id += 1
        return self.next_id, encode({"id": self.next_id, "op": op, "via": self.via, **fields})

    @staticmethod
    def reply_id(message: dict):
        """The request id a message answers (None for a pushed event or frame)."""
        return message.get("id") if "ok" in message and "id" in message else None

    @staticmethod
    def result(op: str, reply: dict) -> dict:
        """A reply's data, or ControlError with the daemon's reason."""
        if not reply.get("ok"):
            raise ControlError(reply.get("error") or f"{op} refused")
        return reply.get("data") or {}
