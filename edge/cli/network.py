"""The network-facing processes: ``teachcam web`` and ``teachcam mqtt``. Each runs apart from the daemon (which never opens an
IP socket) and reaches it only through the control socket."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from teachcam.edge.errors import TeachcamError

log = logging.getLogger("teachcam")


def register(sub) -> None:
    register_web(sub)
    p = sub.add_parser("mqtt", help="(device) bridge the daemon to an MQTT broker: Home Assistant, scripts, a fleet",
                       description="Publish predictions, events, snapshots and stats to an MQTT broker, take "
                                   "commands from it, announce the device to Home Assistant (MQTT discovery), and "
                                   "share taught examples with the other Pis of a fleet group. Settings: [mqtt] in "
                                   "the config (host, port, tls, ca_file, username, password_file, device_id, "
                                   "base_topic, discovery, fleet_group …); flags override them. Topics: docs/mqtt.md. "
                                   "Runs until stopped; reconnects to the broker and the daemon by itself.")
    p.add_argument("-c", "--config", type=Path, default=None, help="TOML config file (the daemon's)")
    p.add_argument("--host", default=None, help="broker host (default localhost)")
    p.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    p.add_argument("--device-id", default=None, help="this device's id in topics (default: the hostname)")
    p.add_argument("--fleet-group", default=None, help="share taught examples with the Pis of this group")
    p.add_argument("--base-topic", default=None, help="default teachcam/<device id>")
    p.add_argument("--no-discovery", action="store_true", help="no Home Assistant discovery messages")
    p.add_argument("--socket", default=None, help="the daemon's control socket (default: where the daemon listens)")


def register_web(sub) -> None:
    p = sub.add_parser("web", help="(device) the page to teach from a phone: live view, hold to add, why it thinks so",
                       description="Serve the teaching page (live view, class cards with hold-to-add, rename/delete/"
                                   "undo/clear, why it thinks so, examples in and out, /healthz, /metrics). A process "
                                   "of its own: it reaches the daemon only through the control socket. Authentication "
                                   "is on: a pairing token (mode 0600) is made at first start and its login link "
                                   "printed. Settings: [web] in the config; flags override them.")
    p.add_argument("-c", "--config", type=Path, default=None, help="TOML config file (the daemon's)")
    p.add_argument("--host", default=None, help="address to listen on (default 0.0.0.0: every interface; "
                                                "127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default 8080; 0: any free port)")
    p.add_argument("--token-file", default=None, help="where the pairing token is kept (default: the service's "
                                                      "state folder, else ~/.local/share/teachcam/web-token)")
    p.add_argument("--rotate-token", action="store_true", help="replace the token (ends every session) and exit")
    p.add_argument("--no-auth", action="store_true", help="no authentication: anyone who reaches the port can "
                                                         "change what the device knows (only when you mean it)")
    p.add_argument("--socket", default=None, help="the daemon's control socket (default: where the daemon listens)")
    p.add_argument("-s", "--store", default=None, help="the store the download reads (default: the config's)")


def login_url(host: str, port: int, token: str | None) -> str:
    import socket

    shown = host if host not in ("0.0.0.0", "::", "") else socket.gethostname()
    shown = f"[{shown}]" if ":" in shown else shown
    return f"http://{shown}:{port}/" + (f"login?token={token}" if token else "")


def cmd_web(args) -> int:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        raise TeachcamError("`teachcam web` needs aiohttp: pip install 'teachcam[web]'") from None
    from teachcam.edge.apps.web.auth import default_token_file, load_token, sessions_file_for
    from teachcam.edge.apps.web.server import serve
    from teachcam.edge.config import load_config

    overrides = {f"web.{k}": v for k, v in (("host", args.host), ("port", args.port), ("token_file", args.token_file))
                 if v is not None}
    if args.no_auth:
        overrides["web.auth"] = False
    if args.store:
        overrides["store"] = args.store
    if args.port == 0:
        overrides.pop("web.port")
    config = load_config(args.config, overrides)
    token_file = Path(config.web.token_file) if config.web.token_file else default_token_file()
    if args.rotate_token:
        load_token(token_file, rotate=True)
        sessions_file_for(token_file).unlink(missing_ok=True)  # (they are bound to the old token anyway)
        print(f"teachcam web: a new token is in {token_file}; every session made with the old one has ended. "
              "Restart the web service (systemctl restart teachcam-web) to use it.")
        return 0
    token = None
    if config.web.auth:
        token, created = load_token(token_file)
        if created:
            log.warning("made a new pairing token in %s (mode 0600)", token_file)
    else:
        log.warning("authentication is OFF (--no-auth / web.auth = false): anyone who reaches port %s can change "
                    "what this device knows", config.web.port)
    port = 0 if args.port == 0 else config.web.port

    def ready(bound: int) -> None:
        url = login_url(config.web.host, bound, token)
        print(f"teachcam web: serving on {config.web.host}:{bound}; open {url}", flush=True)
        _print_qr(url)

    # The pairing link on the Pi's own OLED/terminal/screen for 2 minutes: someone standing at the device may read
    # it (the screen shows it as a QR code too: scan it with the phone to log in).
    pairing = f"teachcam web\n{login_url(config.web.host, port, None)}\ntoken:\n{token}" if token and port else ""
    serve(config, host=config.web.host, port=port, token=token, socket_path=args.socket, on_ready=ready,
          pairing=pairing, pairing_link=login_url(config.web.host, port, token) if pairing else "",
          sessions_file=sessions_file_for(token_file) if token else None)
    return 0


def _print_qr(url: str) -> None:
    """The login link as a QR code on a terminal, when the optional `segno` package is installed."""
    import sys

    if not sys.stdout.isatty():
        return
    try:
        import segno
    except ImportError:
        return
    segno.make(url, error="l").terminal(compact=True)


def cmd_mqtt(args) -> int:
    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        raise TeachcamError("`teachcam mqtt` needs paho-mqtt 2: pip install 'teachcam[mqtt]'") from None
    from teachcam.edge.apps.mqtt.bridge import Bridge
    from teachcam.edge.config import load_config

    overrides = {f"mqtt.{key}": value for key, value in (
        ("host", args.host), ("port", args.port), ("device_id", args.device_id), ("fleet_group", args.fleet_group),
        ("base_topic", args.base_topic)) if value is not None}
    if args.no_discovery:
        overrides["mqtt.discovery"] = False
    config = load_config(args.config, overrides)
    socket_path = args.socket or (config.control.socket or None)
    bridge = Bridge(config, socket_path=socket_path)
    logging.getLogger("teachcam").setLevel(min(logging.getLogger("teachcam").getEffectiveLevel(), logging.INFO))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: bridge.stop())
    bridge.run()
    return 0


COMMANDS = {"mqtt": cmd_mqtt, "web": cmd_web}
