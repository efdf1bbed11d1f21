"""The aiohttp application behind ``teachcam web``.

Routes (JSON unless said; every state-changing one needs auth, the ``X-Teachcam`` header and, from a
browser, this server's ``Origin``):

==============================  =================================================================
``GET /``, ``/static/…``        the page (no secrets in it: it asks ``/api/session`` and shows a login)
``GET /healthz``                ``{"ok", "daemon"}`` — no auth; 503 while the daemon does not answer
``GET /metrics``                Prometheus text format
``GET /login?token=T``          the pairing link (QR code): sets the session cookie, back to ``/``
``POST /api/login``             ``{"token"}`` → the session cookie; ``POST /api/logout``
``GET /api/session``            ``{"authenticated", "auth"}`` — no auth
``GET /api/status``             the daemon's status (camera, fps, inference ms, model, uptime, …)
``GET /api/classes``            classes, counts, example and thumbnail ids, variety
``GET /api/thumb/<id>``         one example's thumbnail (PNG)
``GET /api/explain``            nearest examples to the current frame; confused examples (leave-one-out)
``POST /api/enroll``            ``{"label", "hold"}`` — the current frame; ``hold``: rate-capped, near-copies skipped
``POST /api/classes``           ``{"label"}`` add; ``POST /api/classes/rename`` ``{"old", "new"}``;
                                ``POST /api/classes/remove`` ``{"label"}``
``POST /api/undo``, ``/api/clear``, ``/api/examples/remove`` ``{"ids"}``
``POST /api/region``            ``{"region": [x0, y0, x1, y1] | null}`` or ``{"reset": true}``: the focus region
``GET /api/export.zip``         every example, one folder per class (``teachcam train --data`` takes it)
``POST /api/upload``            multipart: images (with a ``label`` field) and/or zips laid out like the export
``…/api/inbox…``                the review inbox, "To label" (:mod:`teachcam.edge.apps.web.inbox`)
``GET /stream.mjpg``            the live view (MJPEG of the daemon's preview frames)
``GET /ws``                     the live feed: prediction, events, status every 2 s
==============================  =================================================================
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import time
from importlib import resources
from pathlib import Path

from aiohttp import web

from teachcam.edge import __version__
from teachcam.edge import messages as m
from teachcam.edge.apps.web import files
from teachcam.edge.apps.web.auth import COOKIE, CSRF_HEADER, SESSION_DAYS, Guard
from teachcam.edge.apps.web.files import BODY_TIMEOUT
from teachcam.edge.apps.web.files import error as _error
from teachcam.edge.apps.web.inbox import InboxRoutes
from teachcam.edge.apps.web.link import DaemonLink
from teachcam.edge.apps.web.live import Live
from teachcam.edge.config import DaemonConfig
from teachcam.edge.errors import ControlError, TeachcamError

log = logging.getLogger(__name__)
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
PUBLIC = {"/", "/healthz", "/login", "/api/login", "/api/session"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
JSON_LIMIT = 8 * 1024  # bytes: login and every JSON route


# On every response: no MIME sniffing, no reading by another site's page (the stream and thumbnails are the camera's
# pictures), no referrer (the login link carries the token), and no versions in Server. On HTML: no framing, and
# nothing loaded or connected to but this origin.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "same-origin",
                    "Referrer-Policy": "no-referrer"}
HTML_HEADERS = {"X-Frame-Options": "DENY",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
                                           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"}


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for key, value in {**SECURITY_HEADERS, **(HTML_HEADERS if response.content_type == "text/html" else {})}.items():
        response.headers.setdefault(key, value)
    response.headers["Server"] = "teachcam"  # aiohttp would say "Python/3.x aiohttp/3.x"


def _static(name: str) -> bytes:
    return resources.files("teachcam.edge.apps.web").joinpath("static", name).read_bytes()


class WebApp:
    def __init__(self, config: DaemonConfig, link: DaemonLink, guard: Guard, *, pairing: str = "",
                 pairing_link: str = ""):
        self.config, self.web, self.link, self.guard = config, config.web, link, guard
        self.last_hold: dict[str, float] = {}
        self.counters = {"requests": 0, "enrolled": 0, "hold_skipped_rate": 0, "hold_skipped_similar": 0,
                         "stream_frames": 0, "refused": 0}
        self.live = Live(link, hold_rate=self.web.hold_rate, counters=self.counters, web_stats=self._web_stats,
                         pairing=pairing, pairing_link=pairing_link)
        self.assets = {name: _static(name) for name in STATIC}
        # gzipped once at start: a phone on a weak Wi-Fi gets a third of the bytes (browsers all ask for gzip)
        self.gzipped = {name: gzip.compress(data, 9, mtime=0) for name, data in self.assets.items()}

    # -- the application ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=self.web.max_upload_mb * 1024 * 1024)
        app.on_response_prepare.append(_security_headers)
        r = app.router
        r.add_get("/", self.index)
        r.add_get("/static/{name}", self.static)
        r.add_get("/healthz", self.healthz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/login", self.login_link)
        r.add_post("/api/login", self.login)
        r.add_post("/api/logout", self.logout)
        r.add_get("/api/session", self.session)
        r.add_get("/api/status", self.api_status)
        r.add_get("/api/classes", self.classes)
        r.add_get("/api/thumb/{thumb}", self.thumb)
        r.add_get("/api/explain", self.explain)
        r.add_post("/api/enroll", self.enroll)
        r.add_post("/api/classes", self.add_class)
        r.add_post("/api/classes/rename", self.rename_class)
        r.add_post("/api/classes/remove", self.remove_class)
        r.add_post("/api/undo", self.undo)
        r.add_post("/api/region", self.region)
        r.add_post("/api/clear", self.clear)
        r.add_post("/api/examples/remove", self.remove_examples)
        r.add_get("/api/export.zip", self.export)
        r.add_post("/api/upload", self.upload)
        InboxRoutes(self.link, self._body).add_to(r)
        r.add_get("/stream.mjpg", self.live.stream)
        r.add_get("/ws", self.live.websocket)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app) -> None:
        app["link"] = asyncio.ensure_future(self.link.run())
        app["status"] = asyncio.ensure_future(self.live.status_loop())

    async def _stop(self, app) -> None:
        for key in ("link", "status"):
            app[key].cancel()
        await self.live.close_all()

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        self.counters["requests"] += 1
        if not self.guard.host_ok(request.host):
            self.counters["refused"] += 1
            return _error(403, f"Host {request.host!r} is not a name of this device: open the page by its IP address, "
                               "or add the name to [web] hosts")
        path = request.path
        public = path in PUBLIC or path.startswith("/static/")
        if not public and not self.guard.authenticated(request.cookies.get(COOKIE),
                                                       request.headers.get("Authorization")):
            self.counters["refused"] += 1
            return _error(401, "log in first: open the link `teachcam web` printed, or send Authorization: Bearer TOKEN")
        origin = request.headers.get("Origin")
        if request.method not in SAFE_METHODS or path == "/ws":
            if not self.guard.origin_ok(origin, request.host, request.scheme):
                self.counters["refused"] += 1
                return _error(403, f"Origin {origin!r} is not this page's: cross-site requests are refused")
            if request.method not in SAFE_METHODS and not request.headers.get(CSRF_HEADER):
                self.counters["refused"] += 1
                return _error(403, f"state-changing requests need the {CSRF_HEADER} header (the page sends it)")
        try:
            return await handler(request)
        except ControlError as exc:
            status = 503 if not self.link.up.is_set() else 409
            return _error(status, str(exc))
        except TeachcamError as exc:
            return _error(400, str(exc))

    async def _body(self, request: web.Request) -> dict:
        """A small JSON object (login and every JSON route: at most JSON_LIMIT bytes, read within BODY_TIMEOUT)."""
        if request.content_length is not None and request.content_length > JSON_LIMIT:
            raise web.HTTPRequestEntityTooLarge(max_size=JSON_LIMIT, actual_size=request.content_length,
                                                text=json.dumps({"error": f"at most {JSON_LIMIT} bytes of JSON"}),
                                                content_type="application/json")
        data = bytearray()
        try:
            async with asyncio.timeout(BODY_TIMEOUT):
                while chunk := await request.content.read(JSON_LIMIT + 1 - len(data)):
                    data += chunk
                    if len(data) > JSON_LIMIT:
                        raise web.HTTPRequestEntityTooLarge(max_size=JSON_LIMIT, actual_size=len(data),
                                                            text=json.dumps({"error": f"at most {JSON_LIMIT} bytes of JSON"}),
                                                            content_type="application/json")
        except TimeoutError:
            raise web.HTTPRequestTimeout(text=json.dumps({"error": f"the body did not arrive within {BODY_TIMEOUT:.0f} s"}),
                                         content_type="application/json") from None
        try:
            body = json.loads(bytes(data) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            raise TeachcamError("the request body must be JSON") from None
        if not isinstance(body, dict):
            raise TeachcamError("the request body must be a JSON object")
        return body

    @staticmethod
    def _text(body: dict, key: str) -> str:
        value = body.get(key)
        if not isinstance(value, str) or not value.strip():
            raise TeachcamError(f"{key} must be a non-empty string")
        return value

    # -- pages and sessions --------------------------------------------------------------------------------
    def _asset(self, request, name: str) -> web.Response:
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            return web.Response(body=self.gzipped[name], content_type=STATIC[name],
                                headers={**headers, "Content-Encoding": "gzip"})
        return web.Response(body=self.assets[name], content_type=STATIC[name], headers=headers)

    async def index(self, request):
        return self._asset(request, "index.html")

    async def static(self, request):
        name = request.match_info["name"]
        if name not in STATIC or name == "index.html":
            raise web.HTTPNotFound()
        return self._asset(request, name)

    async def healthz(self, request):
        up = self.link.up.is_set()
        return web.json_response({"ok": up, "daemon": "up" if up else "down", "version": __version__},
                                 status=200 if up else 503)

    @staticmethod
    def _set_session(response: web.Response, value: str) -> None:
        if value:
            response.set_cookie(COOKIE, value, httponly=True, samesite="Strict", path="/", max_age=SESSION_DAYS * 86400)

    def _login(self, request, candidate) -> str | web.Response:
        """A new session for the right token (never locked out), or the refusal."""
        try:
            value = self.guard.login(request.remote or "?", candidate.strip() if isinstance(candidate, str) else "")
        except PermissionError as exc:
            return _error(429, str(exc))
        return value if value is not None else _error(401, "wrong token")

    async def login_link(self, request):
        value = self._login(request, request.query.get("token", ""))
        if isinstance(value, web.Response):
            return value if value.status == 429 else _error(401, "that login link is not (or no longer) valid: ask "
                                                                 "the Pi for a new one")
        response = web.HTTPFound("/")
        self._set_session(response, value)
        raise response

    async def login(self, request):
        body = await self._body(request)
        value = self._login(request, body.get("token"))
        if isinstance(value, web.Response):
            return value
        response = web.json_response({"authenticated": True})
        self._set_session(response, value)
        return response

    async def logout(self, request):
        """Ends this session on the server (the cookie, wherever it was copied, no longer works)."""
        self.guard.logout(request.cookies.get(COOKIE))
        response = web.json_response({"authenticated": False})
        response.del_cookie(COOKIE, path="/")
        return response

    async def session(self, request):
        ok = self.guard.authenticated(request.cookies.get(COOKIE), request.headers.get("Authorization"))
        return web.json_response({"authenticated": ok, "auth": self.guard.token is not None, "version": __version__})

    # -- reading ---------------------------------------------------------------------------------------------
    async def api_status(self, request):
        status = await self.link.request("status")
        return web.json_response({**status, "web": self._web_stats()})

    def _web_stats(self) -> dict:
        return {"pages": len(self.live.sockets), "viewers": self.link.viewers, **self.counters}

    async def classes(self, request):
        return web.json_response(await self.link.request("classes"))

    async def thumb(self, request):
        data = await self.link.request("thumbnail", thumb=request.match_info["thumb"])
        return web.Response(body=base64.b64decode(data["png"]), content_type="image/png",
                            headers={"Cache-Control": "private, max-age=31536000, immutable"})

    async def explain(self, request):
        return web.json_response(await self.link.request("explain", nearest=6))

    async def metrics(self, request):
        lines = ["# HELP teachcam_up 1 when the daemon answers on its control socket", "# TYPE teachcam_up gauge"]
        status = {}
        if self.link.up.is_set():
            try:
                status = await self.link.request("status")
            except ControlError:
                status = {}
        lines.append(f"teachcam_up {1 if status else 0}")
        gauges = [("camera_frames_per_second", "camera_fps", "gauge", "frames per second the camera delivers"),
                  ("model_frames_per_second", "model_fps", "gauge",
                   "frames per second the model could classify (1 / the time one frame takes)"),
                  ("frames_per_second", "fps", "gauge", "the same as model_frames_per_second (its old name)"),
                  ("inference_milliseconds", "inference_ms", "gauge", "model invoke time"),
                  ("frames_total", "frames", "counter", "frames classified since the daemon started"),
                  ("uptime_seconds", "uptime_s", "gauge", "seconds since the daemon started"),
                  ("examples", "examples", "gauge", "examples stored"),
                  ("temperature_celsius", "temperature_c", "gauge", "the SoC's temperature")]
        for name, key, kind, help_text in gauges:
            if status.get(key) is not None:
                lines += [f"# HELP teachcam_{name} {help_text}", f"# TYPE teachcam_{name} {kind}",
                          f"teachcam_{name} {float(status[key]):g}"]
        if status:
            lines += ["# HELP teachcam_camera_ok 1 while the camera delivers frames", "# TYPE teachcam_camera_ok gauge",
                      f"teachcam_camera_ok {1 if status.get('camera_ok') else 0}",
                      "# HELP teachcam_class_examples examples stored per class", "# TYPE teachcam_class_examples gauge"]
            for label, count in (status.get("classes") or {}).items():
                escaped = label.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
                lines.append(f'teachcam_class_examples{{class="{escaped}"}} {count}')
        lines += ["# HELP teachcam_web_pages pages with a live feed open", "# TYPE teachcam_web_pages gauge",
                  f"teachcam_web_pages {len(self.live.sockets)}",
                  "# HELP teachcam_web_stream_frames_total MJPEG frames sent", "# TYPE teachcam_web_stream_frames_total counter",
                  f"teachcam_web_stream_frames_total {self.counters['stream_frames']}",
                  "# HELP teachcam_web_refused_total requests refused (auth, origin, host)",
                  "# TYPE teachcam_web_refused_total counter", f"teachcam_web_refused_total {self.counters['refused']}"]
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    # -- changing --------------------------------------------------------------------------------------------
    async def enroll(self, request):
        body = await self._body(request)
        label = self._text(body, "label")
        fields = {"label": label, **self._group(body)}
        if body.get("hold"):
            now = time.monotonic()
            # the page asks at hold_rate; a request a little early (network jitter) still counts
            if now - self.last_hold.get(label.casefold(), 0.0) < 0.75 / self.web.hold_rate:
                self.counters["hold_skipped_rate"] += 1
                return web.json_response({"label": label, "skipped": "rate"})
            self.last_hold[label.casefold()] = now
            if self.web.skip_similar > 0:
                fields["skip_similar"] = self.web.skip_similar
        result = await self.link.request("enroll", **fields)
        if result.get("skipped") == m.SKIPPED_SIMILAR:
            self.counters["hold_skipped_similar"] += 1
        elif not result.get("skipped"):
            self.counters["enrolled"] += 1
        return web.json_response(result)

    async def add_class(self, request):
        body = await self._body(request)
        return web.json_response(await self.link.request("add_class", label=self._text(body, "label")))

    async def rename_class(self, request):
        body = await self._body(request)
        return web.json_response(await self.link.request("rename_class", old=self._text(body, "old"),
                                                         new=self._text(body, "new")))

    async def remove_class(self, request):
        body = await self._body(request)
        return web.json_response(await self.link.request("remove_class", label=self._text(body, "label")))

    async def undo(self, request):
        """``{"action"}``: the id the page showed (``classes``' ``undo``) — exactly that one is taken back."""
        body = await self._body(request)
        action = body.get("action")
        if action is not None and (not isinstance(action, str) or len(action) > 32):
            raise TeachcamError("action must be the id of a change (from /api/classes' undo)")
        return web.json_response(await self.link.request("undo", **({"action": action} if action else {})))

    async def region(self, request):
        """``{"region": [x0, y0, x1, y1] | null}`` (fractions of the picture; null: the whole of it) or
        ``{"reset": true}`` (the config's): the focus region, at once."""
        body = await self._body(request)
        if body.get("reset") is True:
            return web.json_response(await self.link.request("set_region", reset=True))
        return web.json_response(await self.link.request("set_region", region=body.get("region")))

    @staticmethod
    def _group(body: dict) -> dict:
        group = body.get("group")
        if group is None:
            return {}
        if not isinstance(group, str) or not 0 < len(group) <= 64:
            raise TeachcamError("group must be a short text (one hold's id)")
        return {"group": group}

    async def clear(self, request):
        return web.json_response(await self.link.request("clear"))

    async def remove_examples(self, request):
        body = await self._body(request)
        ids = body.get("ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise TeachcamError("ids must be a list of example ids")
        return web.json_response(await self.link.request("remove_examples", examples=ids))

    # -- files -----------------------------------------------------------------------------------------------
    async def export(self, request):
        return await files.export(request, self.config.store)

    async def upload(self, request):
        return await files.upload(request, self.link, self.web.max_upload_mb)

    # -- live ------------------------------------------------------------------------------------------------


def serve(config: DaemonConfig, *, host: str, port: int, token: str | None, socket_path=None, on_ready=None,
          pairing: str = "", pairing_link: str = "", sessions_file: Path | None = None) -> None:
    """Run the server until SIGTERM/SIGINT (open streams get 2 s to end). ``pairing``: a text for the device's own
    display (the login link), shown for 2 minutes once the daemon answers; ``pairing_link``: the login URL, which
    an attached screen shows as a QR code."""
    import signal

    link = DaemonLink(socket_path or config.control.socket or None)
    guard = Guard(token, names=list(config.web.hosts), sessions_file=sessions_file)
    app = WebApp(config, link, guard, pairing=pairing, pairing_link=pairing_link).app()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise TeachcamError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): is another "
                                "`teachcam web` running? Choose another --port") from None
        sockets = site._server.sockets if site._server else []  # noqa: SLF001 - the port when 0 was asked for
        if on_ready:
            on_ready(sockets[0].getsockname()[1] if sockets else port)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
