"""The network-facing processes: ``teachcam mqtt``. Each runs apart from the daemon (which never opens an
IP socket) and reaches it only through the control socket."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from teachcam.edge.errors import TeachcamError

log = logging.getLogger("teachcam")


def register(sub) -> None:
    p = sub.add_parser("mqtt", help="(device) bridge the daemon to an MQTT broker: Home Assistant, scripts, a fleet",
                       description="Publish predictions, events, snapshots and stats to an MQTT broker, take "
                                   "commands from it, announce the device to Home Assistant (MQTT discovery), and "
                                   "share taught examples with the other Pis of a fleet group. Settings: [mqtt] in "
                                   "the config (host, port, tls, ca_file, username, password_file, device_id, "
                                   "base_topic, discovery, fleet_group …); flags override them. Topics: README, "
                                   "\"MQTT\". Runs until stopped; reconnects to the broker and the daemon by itself.")
    p.add_argument("-c", "--config", type=Path, default=None, help="TOML config file (the daemon's)")
    p.add_argument("--host", default=None, help="broker host (default localhost)")
    p.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    p.add_argument("--device-id", default=None, help="this device's id in topics (default: the hostname)")
    p.add_argument("--fleet-group", default=None, help="share taught examples with the Pis of this group")
    p.add_argument("--base-topic", default=None, help="default teachcam/<device id>")
    p.add_argument("--no-discovery", action="store_true", help="no Home Assistant discovery messages")
    p.add_argument("--socket", default=None, help="the daemon's control socket (default: where the daemon listens)")


def cmd_mqtt(args) -> int:
    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        raise TeachcamError("`teachcam mqtt` needs paho-mqtt 2: pip install 'teachcam[mqtt]' (Debian's "
                            "python3-paho-mqtt 1.6 is too old)") from None
    from teachcam.edge.config import load_config
    from teachcam.edge.mqtt import Bridge

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


COMMANDS = {"mqtt": cmd_mqtt}
