"""Who may use the page: a pairing token (a file, mode 0600), sessions derived from it, and request checks.

* The token is generated at first start (32 random bytes, URL-safe) and kept in ``token_file``;
  ``teachcam web --rotate-token`` replaces it, which also ends every session made with the old one.
* Logging in (``/login?token=…`` or ``POST /api/login``) sets the session cookie: an HMAC of a fixed
  string under the token — HttpOnly, SameSite=Strict. Scripts send ``Authorization: Bearer TOKEN``.
* Every state-changing request needs auth **and** the ``X-Teachcam`` header (a cross-site form cannot
  send it), and a browser's ``Origin`` must be this server; the websocket upgrade checks ``Origin`` too.
* ``Host`` must be an IP address or one of the device's names (DNS rebinding: a hostile name that
  resolves to the Pi is refused).
* Failed logins are limited per client address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
import socket
import time
from collections import deque
from pathlib import Path

from teachcam.edge.errors import TeachcamError

COOKIE = "teachcam_session"
CSRF_HEADER = "X-Teachcam"
LOGIN_ATTEMPTS = 10  # failed logins per address ...
LOGIN_WINDOW = 60.0  # ... per this many seconds


def default_token_file() -> Path:
    """$STATE_DIRECTORY/web-token under systemd, else ~/.local/share/teachcam/web-token."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "web-token"
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "teachcam" / "web-token"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically (a temp file renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_token(path: Path, *, rotate: bool = False) -> tuple[str, bool]:
    """(token, created): the token in ``path``, made (mode 0600) when missing or when ``rotate``.

    Raises:
        TeachcamError: the file cannot be read or written, or holds no token.
    """
    try:
        if not rotate and path.exists():
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)  # tightened, never loosened
            token = path.read_text(encoding="utf-8").strip()
            if len(token) < 16:
                raise TeachcamError(f"{path} holds no usable token; run `teachcam web --rotate-token`")
            return token, False
        token = secrets.token_urlsafe(32)
        _write_private(path, token + "\n")
        return token, True
    except OSError as exc:
        raise TeachcamError(f"the web token file {path}: {exc.strerror or exc}") from None


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"teachcam web session v1", hashlib.sha256).hexdigest()


class Guard:
    """The request checks (pure: the server calls them and turns a refusal into a status code)."""

    def __init__(self, token: str | None, *, names: list[str] | None = None):
        self.token = token  # None: authentication off (only when asked for explicitly)
        self.session = session_value(token) if token else ""
        host = socket.gethostname()
        self.names = {n.lower() for n in (names or [])} | {"localhost", host.lower(), f"{host.lower()}.local"}
        try:
            self.names.add(socket.getfqdn().lower())
        except OSError:
            pass
        self.failures: dict[str, deque] = {}

    def host_ok(self, host_header: str | None) -> bool:
        """An IP literal (a rebinding attack needs a *name*), or one of this device's names."""
        if not host_header:
            return False
        host = host_header.strip().lower()
        if host.startswith("["):  # [v6]:port
            host = host[1:].split("]", 1)[0]
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return host in self.names

    def authenticated(self, cookie: str | None, authorization: str | None) -> bool:
        if self.token is None:
            return True
        if cookie and hmac.compare_digest(cookie, self.session):
            return True
        if authorization and authorization.startswith("Bearer "):
            return hmac.compare_digest(authorization[7:].strip().encode(), self.token.encode())
        return False

    @staticmethod
    def origin_ok(origin: str | None, host_header: str | None, scheme: str) -> bool:
        """No Origin (a script) or exactly this server's origin."""
        if origin is None:
            return True
        return bool(host_header) and origin.lower() == f"{scheme}://{host_header}".lower()

    def check_token(self, candidate: str) -> bool:
        return self.token is None or hmac.compare_digest(candidate.encode(), self.token.encode())

    def login_allowed(self, address: str) -> bool:
        window = self.failures.setdefault(address, deque())
        now = time.monotonic()
        while window and now - window[0] > LOGIN_WINDOW:
            window.popleft()
        return len(window) < LOGIN_ATTEMPTS

    def login_failed(self, address: str) -> None:
        self.failures.setdefault(address, deque()).append(time.monotonic())
