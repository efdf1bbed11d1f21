"""Who may use the page: a pairing token (a file, mode 0600), sessions derived from it, and request checks.

* The token is generated at first start (32 random bytes, URL-safe) and kept in ``token_file``;
  ``teachcam web --rotate-token`` replaces it, which also ends every session made with the old one.
* Logging in (``/login?token=…`` or ``POST /api/login``) makes a *session* — 32 random bytes in the cookie
  (HttpOnly, SameSite=Strict), only their sha256 kept on the server (``web-sessions.json`` beside the token, mode
  0600, bound to the token: a rotation ends them all). Logging out ends that session: a copied cookie dies with it.
  Sessions last 30 days; at most 64 are kept (the oldest goes). Scripts send ``Authorization: Bearer TOKEN``.
* Every state-changing request needs auth **and** the ``X-Teachcam`` header (a cross-site form cannot
  send it), and a browser's ``Origin`` must be this server; the websocket upgrade checks ``Origin`` too.
* ``Host`` must be an IP address or one of the device's names (DNS rebinding: a hostile name that
  resolves to the Pi is refused).
* Failed logins are limited per client address (10 a minute; they expire, and the table is pruned) — the right
  token is never refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
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
FAILURE_TABLE = 4096  # addresses remembered at most
SESSION_DAYS = 30
MAX_SESSIONS = 64
log = logging.getLogger(__name__)


def sessions_file_for(token_file: Path) -> Path:
    return token_file.with_name("web-sessions.json")


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


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Sessions:
    """Server-side sessions: the sha256 of each cookie, when it was made; kept in ``path`` (mode 0600) when given,
    bound to the token's sha256 (a file made under another token is ignored: rotation ends every session)."""

    def __init__(self, token: str, path: Path | None = None):
        self.path, self.bound = path, _digest("teachcam web sessions v2:" + token)
        self.known: dict[str, float] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if data.get("token") == self.bound:
                    self.known = {str(k): float(v) for k, v in data.get("sessions", {}).items()}
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("web sessions in %s unreadable (%s): everyone logs in again", path, exc)
        self._expire()

    def _expire(self) -> None:
        oldest = time.time() - SESSION_DAYS * 86400
        self.known = {k: t for k, t in self.known.items() if t >= oldest}
        while len(self.known) > MAX_SESSIONS:
            del self.known[min(self.known, key=self.known.get)]

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            _write_private(self.path, json.dumps({"token": self.bound, "sessions": self.known}))
        except OSError as exc:
            log.warning("cannot keep web sessions in %s (%s): they end when the web service restarts", self.path, exc)

    def new(self) -> str:
        value = secrets.token_urlsafe(32)
        self.known[_digest(value)] = time.time()
        self._expire()
        self._save()
        return value

    def valid(self, value: str | None) -> bool:
        if not value or len(value) > 128:
            return False
        made = self.known.get(_digest(value))
        return made is not None and made >= time.time() - SESSION_DAYS * 86400

    def end(self, value: str | None) -> bool:
        if value and self.known.pop(_digest(value), None) is not None:
            self._save()
            return True
        return False


class Guard:
    """The request checks (pure: the server calls them and turns a refusal into a status code)."""

    def __init__(self, token: str | None, *, names: list[str] | None = None, sessions_file: Path | None = None):
        self.token = token  # None: authentication off (only when asked for explicitly)
        self.sessions = Sessions(token, sessions_file) if token else None
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
        if cookie and self.sessions.valid(cookie):
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

    def login(self, address: str, candidate: str) -> str | None:
        """A new session's cookie value for the right token — always, however many wrong ones came before; None
        for a wrong one (counted against ``address``). Raises PermissionError past LOGIN_ATTEMPTS wrong ones a minute
        (the caller answers 429)."""
        if isinstance(candidate, str) and self.check_token(candidate):
            self.failures.pop(address, None)
            return self.sessions.new() if self.sessions is not None else ""
        now = time.monotonic()
        window = self.failures.get(address, deque())
        while window and now - window[0] > LOGIN_WINDOW:
            window.popleft()
        if len(window) >= LOGIN_ATTEMPTS:
            raise PermissionError("too many failed logins from this address; wait a minute")
        window.append(now)
        self.failures[address] = window
        if len(self.failures) > FAILURE_TABLE:  # prune: expired windows go, then the oldest addresses
            self.failures = {a: w for a, w in self.failures.items() if w and now - w[-1] <= LOGIN_WINDOW}
            while len(self.failures) > FAILURE_TABLE:
                del self.failures[next(iter(self.failures))]
        return None

    def logout(self, cookie: str | None) -> bool:
        return self.sessions is not None and self.sessions.end(cookie)
