"""The blocking client of the control socket (the CLI's, the MQTT bridge's): ``request(op, **fields)`` → the
reply's data; ``events()`` → typed events. Every socket failure is one :class:`ControlError` line."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

from teachcam.edge import messages as m
from teachcam.edge.errors import ControlError
from teachcam.edge.link.protocol import (
    MAX_LINE,
    ClientCore,
    check_hello,
    client_socket_path,
    connection_failure,
    decode,
    event_from_json,
)


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
    """A blocking client of the control socket.

    Raises (``connect``, ``request``, ``messages``):
        ControlAccessError: a daemon may run, but this user is not in the socket's group (one line: what to run).
        ControlError: no daemon answers, it went away, or it refused the request (its one-line reason).
    """

    def __init__(self, path: str | Path | None = None, timeout: float | None = 120.0, via: str = "cli"):
        self.path = Path(path) if path else client_socket_path()
        self.timeout = timeout
        self.core = ClientCore(via)
        self.sock: socket.socket | None = None
        self._file = None
        self.hello: dict = {}

    def connect(self) -> ControlClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0 if self.timeout is None else min(self.timeout, 5.0))
        try:
            sock.connect(str(self.path))
            sock.settimeout(self.timeout)
            self.sock, self._file = sock, sock.makefile("rb")
            self.hello = check_hello(self._read(), self.path)
        except (OSError, ValueError, ControlError) as exc:
            self.close()
            sock.close()
            raise connection_failure(exc, self.path) from None
        return self

    def _read(self) -> dict:
        line = self._file.readline(MAX_LINE + 1)
        if not line:
            raise ControlError(f"the teachcam daemon on {self.path} closed the connection (restarting?); try again")
        return decode(line)

    def request(self, op: str, **fields) -> dict:
        """Send one request and wait for its reply (events that arrive meanwhile are skipped)."""
        request_id, line = self.core.request_line(op, fields)
        try:
            self.sock.sendall(line)
            while True:
                message = self._read()
                if self.core.reply_id(message) == request_id:
                    break
        except (OSError, ValueError) as exc:
            raise connection_failure(exc, self.path) from None
        return self.core.result(op, message)

    def messages(self) -> Iterator[dict]:
        """Everything the daemon pushes (after ``request("subscribe", ...)``) as it came, until it goes away."""
        try:
            while True:
                yield self._read()
        except (OSError, ValueError) as exc:
            raise connection_failure(exc, self.path) from None

    def events(self) -> Iterator[m.Event]:
        """The pushed events, typed (preview frames and kinds this version does not know are left out)."""
        for message in self.messages():
            if "event" in message and (event := event_from_json(message)) is not None:
                yield event

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
