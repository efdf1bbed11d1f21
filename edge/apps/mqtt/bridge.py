"""``teachcam mqtt``: the bridge between the daemon's control socket and an MQTT broker.

A process of its own (the daemon never opens a network socket): one connection to the control
socket for events, one for requests, and a paho-mqtt client. All work happens on one worker
thread, in order: daemon events, broker messages and the clock's ticks are queued for it, so
neither side ever waits for the other (a slow broker never slows the camera; the daemon drops
a client that stops reading, and this bridge reads all the time).

Topics, under ``<base>`` = ``teachcam/<device id>`` unless configured:

=============================  ============================================================
``<base>/availability``        ``online`` / ``offline`` (retained; ``offline`` is also the will)
``<base>/state``               retained JSON: label, confidence, scores, counts, time, bundle fingerprint
``<base>/event``               every daemon event (class changes, enrollments, camera trouble, …)
``<base>/event/class``         ``{"event_type": LABEL}`` on each class change (Home Assistant's event;
                               ``nothing recognised`` when the view turns to unknown)
``<base>/snapshot``            a small JPEG on each class change (retained)
``<base>/classes``             retained JSON: classes and example counts (on every change)
``<base>/stats``               retained JSON every 60 s: camera and model frames/s, inference ms, uptime, camera
``<base>/inbox``               retained JSON ``{"count"}``: the moments waiting for a label (on every change)
``<base>/request/<op>``        commands → ``<base>/response/<op>``: ``{"id", "status", "data", "error"}``
``teachcam/all/request/<op>``  the same for every device; each answers on its own response topic
``<base>/set/…``, ``<base>/teach_class``, ``<base>/paused``  Home Assistant's select, button and switch
``teachcam/fleet/<group>/…``   fleet sync (:mod:`teachcam.edge.apps.mqtt.fleet`)
=============================  ============================================================
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import secrets
import socket
import threading
import time
from pathlib import Path

from teachcam.edge import messages as m
from teachcam.edge.apps.mqtt import fleet, hass
from teachcam.edge.apps.mqtt.carrier import FleetCarrier
from teachcam.edge.apps.mqtt.daemon_link import DaemonConnection
from teachcam.edge.apps.mqtt.sync import FleetSync
from teachcam.edge.apps.mqtt.transport import Transport
from teachcam.edge.config import DaemonConfig
from teachcam.edge.errors import ControlError

log = logging.getLogger(__name__)

REQUEST_OPS = {"enroll", "add_class", "rename_class", "remove_class", "undo", "clear", "pause", "resume", "snapshot",
               "status", "classes", "set_region", "inbox", "inbox_label", "inbox_discard"}
MAX_REQUEST = 64 * 1024
STATE_MIN_INTERVAL = 0.25  # at most 4 state messages a second
STATS_INTERVAL = 60.0
CHANGE_INTERVAL = 0.5  # s between looks at the store while examples from the fleet come in
SNAPSHOT_SIZE = 320
SNAPSHOT_MIN_INTERVAL = 1.0  # a JPEG is encoded in the daemon: at most one a second, of the newest class
# The daemon events published on <base>/event (not stats: <base>/stats has them; not notices: they hold secrets),
# and the ones that change what the store holds.
PUBLISHED = (m.PredictionChanged, m.Enrolled, m.Undone, m.ClassAdded, m.Removed, m.Renamed, m.Cleared, m.Paused,
             m.CameraTrouble, m.CameraBack, m.ExamplesRemoved, m.Error, m.Reloaded, m.InboxChanged)
CHANGES = (m.Enrolled, m.Undone, m.ClassAdded, m.Removed, m.Renamed, m.Cleared, m.ExamplesRemoved, m.Reloaded)
# the changes that can rename or remove a class: only after them may the chosen class follow or be dropped (the
# listing read for any other event may already hold a rename whose event is still on its way)
NAMING = (m.Undone, m.Removed, m.Renamed, m.Cleared, m.Reloaded)


def device_id(configured: str) -> str:
    if configured:
        return configured
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:64]
    return name or "teachcam"


class Bridge:
    """Run with :meth:`run` (blocks until :meth:`stop`)."""

    def __init__(self, config: DaemonConfig, *, socket_path: str | Path | None = None):
        self.config = config.mqtt
        self.web_url = self.config.web_url or (
            f"http://{socket.gethostname()}:{config.web.port}/" if config.web.enabled else "")
        self.device = device_id(self.config.device_id)
        self.base = self.config.base_topic or f"teachcam/{self.device}"
        self.group = self.config.fleet_group
        self.work: queue.Queue = queue.Queue(maxsize=20_000)
        self.stopping = threading.Event()
        self.daemon = DaemonConnection(socket_path, self._put)
        self.classes: dict[str, int] = {}
        self.teach = hass.ClassToTeach()
        self.change_due, self.last_change = False, 0.0  # examples from the fleet came in (looked at in _tick)
        self.discovered: list[str] | None = None  # the classes the last discovery named
        self.paused, self.prediction, self.fingerprint = False, {}, ""
        self.sync = FleetSync(self.group, self.device) if self.group else None
        self.carrier = FleetCarrier(self.sync, self.group, self.device, ask=self.ask, publish=self.publish) if self.sync else None
        self.last_state = self.last_stats = self.last_snapshot = 0.0
        self.state_due = self.snapshot_due = False
        self.dropped = 0  # work items dropped because the worker fell 20,000 behind
        self.transport = Transport(self.config, device=self.device, will_topic=f"{self.base}/availability", put=self._put)

    def _put(self, item) -> None:
        try:
            self.work.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("the bridge is %d messages behind: %d dropped so far", self.work.qsize(), self.dropped)


    def publish(self, topic: str, payload, *, retain: bool = False, qos: int = 0) -> None:
        self.transport.publish(topic, payload, retain=retain, qos=qos)

    @property
    def connected(self) -> bool:
        return self.transport.connected

    @property
    def pending(self):
        return self.transport.pending

    # -- the daemon ----------------------------------------------------------------------------------
    def ask(self, op: str, **fields) -> dict:
        """One control-socket request (raises ControlError with the daemon's one-line reason)."""
        return self.daemon.ask(op, **fields)

    @property
    def daemon_up(self) -> bool:
        return self.daemon.up

    # -- running -------------------------------------------------------------------------------------
    def run(self) -> None:
        log.info("teachcam mqtt: device %s, base topic %s, broker %s:%d%s%s", self.device, self.base,
                 self.config.host, self.config.port, " (TLS)" if self.config.tls else "",
                 f", fleet group {self.group}" if self.group else "")
        self.transport.start()
        retry_daemon = 0.0
        try:
            while not self.stopping.is_set():
                now = time.monotonic()
                if not self.daemon_up and now >= retry_daemon:
                    retry_daemon = now + 2.0
                    try:
                        if self.daemon.connect():
                            self._daemon_ready()
                    except ControlError as exc:  # e.g. a daemon still starting: its loop does not answer yet
                        log.warning("the daemon does not answer yet (%s); retrying", exc)
                        self.daemon.close()
                try:
                    item = self.work.get(timeout=0.25)
                except queue.Empty:
                    item = None
                try:
                    if item is not None:
                        self._handle(item)
                    self._tick()
                except ControlError as exc:
                    log.warning("%s", exc)
                except Exception as exc:  # one bad message must not stop the bridge
                    log.error("internal error: %s: %s (please report it); carrying on", type(exc).__name__, exc)
                    log.debug("internal error", exc_info=True)
        finally:
            self.transport.stop()
            self.daemon.close()

    def stop(self) -> None:
        self.stopping.set()

    def _handle(self, item) -> None:
        kind = item[0]
        if kind == "connected":
            self._on_broker_up()
        elif kind == "disconnected":
            if self.connected:
                log.warning("lost the MQTT broker (%s); reconnecting with backoff", item[1])
            self.transport.connected = False
            if self.sync is not None:
                self.sync.disconnected()
        elif kind == "message":
            self._on_broker_message(*item[1:])
        elif kind == "event":
            self._on_event(item[1])
        elif kind == "daemon_lost":
            if item[1] is self.daemon.events_client:
                log.warning("lost the daemon's control socket; retrying every 2 s")
                self.daemon.close()
                self.publish(f"{self.base}/availability", "offline", retain=True, qos=1)
        elif kind == "catch_up_done":
            self._finish_catch_up()

    def _on_broker_up(self) -> None:
        self.transport.connected = True
        log.info("connected to the MQTT broker %s:%d", self.config.host, self.config.port)
        subscriptions = [(f"{self.base}/request/+", 0), ("teachcam/all/request/+", 0), (f"{self.base}/set/+", 0)]
        if self.config.discovery:
            subscriptions.append((f"{self.config.discovery_prefix}/status", 1))
        if self.group:
            # QoS 0 for the examples: on subscribing, the broker replays every retained one at once, and at QoS 1
            # Mosquitto drops what exceeds its per-client queue (max_queued_messages, 1000) — a catch-up of 1,050
            # examples lost 30. A lost connection replays them all again anyway.
            subscriptions += [(fleet.examples_filter(self.group), 0), (fleet.op_topic(self.group), 1),
                              (f"{self.base}/sync", 1)]
            marker = secrets.token_hex(8)
            self.sync.connected_to_broker(time.monotonic(), marker)
        self.transport.client.subscribe(subscriptions)
        if self.group:
            # The broker sends the retained replay (and the ops queued for this session) before it handles a message
            # published after the subscription: when this one comes back, the replay is over.
            self.transport.client.publish(f"{self.base}/sync", marker, qos=1)
        pending = self.transport.take_pending()
        announced = self._announce()  # once per connection: it publishes every retained topic afresh
        for topic, (data, retain, qos) in pending.items():
            if topic != f"{self.base}/availability" and topic not in announced:
                self.publish(topic, data, retain=retain, qos=qos)

    def _daemon_ready(self) -> None:
        status = self.ask("status")
        self.fingerprint = status.get("fingerprint", "")
        self.paused = bool(status.get("paused"))
        self.classes = dict(status.get("classes") or {})
        if self.prediction.get("label") is None and status.get("shown"):
            self.prediction = {"label": status["shown"], "confidence": 0.0, "confidences": {}}
        if self.connected:
            self._announce()  # (not connected: the broker's connection announces)
        if self.sync is not None and self.connected:
            self.carrier.carry_out(self.sync.share_own(self._listing()))  # (nothing while catching up)

    def _announce(self) -> set[str]:
        """Availability, discovery and every retained topic, as after a (re)connect; the topics it published."""
        if not self.daemon_up:
            return set()
        self.publish(f"{self.base}/availability", "online", retain=True, qos=1)
        self._publish_discovery()
        self._publish_classes()
        self._publish_state()
        self.publish(f"{self.base}/paused", "ON" if self.paused else "OFF", retain=True)
        self.teach.follow(None, self.classes, time.monotonic())  # a class removed while the daemon was away: dropped
        self._publish_teach_class()
        self._publish_stats()
        return {f"{self.base}/{t}" for t in ("availability", "classes", "state", "paused", "teach_class", "stats", "inbox")} | {
            hass.discovery_topic(self.config.discovery_prefix, self.device)}

    def _publish_teach_class(self) -> None:
        """The select's state: a class that is one of its options, or ``None`` (Home Assistant: nothing chosen)."""
        self.publish(f"{self.base}/teach_class", self.teach.state(self.classes), retain=True)

    def _tick(self) -> None:
        now = time.monotonic()
        if self.state_due and now - self.last_state >= STATE_MIN_INTERVAL:
            self._publish_state()
        if self.daemon_up and now - self.last_state >= self.config.state_interval:
            self._publish_state()
        if self.teach.take_due(now):
            self._publish_teach_class()
        if self.snapshot_due and self.daemon_up and now - self.last_snapshot >= SNAPSHOT_MIN_INTERVAL:
            self._publish_snapshot()
        if self.daemon_up and now - self.last_stats >= STATS_INTERVAL:
            self._publish_stats()
        if self.carrier is not None:
            self.carrier.tick(now)
        if self.change_due and now - self.last_change >= CHANGE_INTERVAL:
            self._store_changed(None)
        if self.sync is not None and self.sync.tick(now, self.daemon_up, self.work.qsize()):
            self._put(("catch_up_done",))  # after every fleet message already queued

    # -- what goes out -------------------------------------------------------------------------------
    def _publish_state(self) -> None:
        if not self.daemon_up:
            return
        p = self.prediction
        self.publish(f"{self.base}/state", {
            "label": p.get("label"), "confidence": round(float(p.get("confidence") or 0.0), 4),
            "scores": p.get("confidences") or {}, "counts": self.classes, "time": round(time.time(), 3),
            "bundle_fingerprint": self.fingerprint, "paused": self.paused}, retain=True)
        self.last_state, self.state_due = time.monotonic(), False

    def _publish_stats(self) -> None:
        self.last_stats = time.monotonic()
        try:
            status = self.ask("status")
        except ControlError:
            return
        keep = ("camera_fps", "model_fps", "inference_ms", "uptime_s", "examples", "frames", "camera", "camera_ok",
                "model", "kernels", "temperature_c", "throttled", "paused")
        # retained: Home Assistant (re)starting, a script subscribing late — each gets the figures at once
        self.publish(f"{self.base}/stats", {k: status.get(k) for k in keep}, retain=True)
        if status.get("inbox") is not None:
            self.publish(f"{self.base}/inbox", {"count": status["inbox"]}, retain=True)

    def _publish_classes(self) -> None:
        self.publish(f"{self.base}/classes", {"classes": self.classes, "examples": sum(self.classes.values())},
                     retain=True)

    def _publish_discovery(self) -> None:
        if not self.config.discovery:
            return
        self.discovered = list(self.classes)
        payload = hass.discovery_payload(device_id=self.device, base=self.base, classes=list(self.classes),
                                         expire_after=int(self.config.state_interval * 3), web_url=self.web_url)
        self.publish(hass.discovery_topic(self.config.discovery_prefix, self.device), payload, retain=True, qos=1)

    def _publish_snapshot(self) -> None:
        self.snapshot_due, self.last_snapshot = False, time.monotonic()
        try:
            shot = self.ask("snapshot", max_size=SNAPSHOT_SIZE)
        except ControlError as exc:
            log.debug("no snapshot: %s", exc)
            return
        self.publish(f"{self.base}/snapshot", base64.b64decode(shot["jpeg"]), retain=True)

    # -- daemon events -------------------------------------------------------------------------------
    def _on_event(self, event: m.Event) -> None:
        if isinstance(event, PUBLISHED):
            self.publish(f"{self.base}/event", event.as_json())
        if isinstance(event, m.PredictionChanged):
            changed = event.label != self.prediction.get("label")
            self.prediction = event.as_json()
            self.classes = dict(event.counts or self.classes)
            self._discover_if_changed()
            self.state_due = True
            if changed:
                self.publish(f"{self.base}/event/class", {"event_type": hass.event_type(event.label)})
                self.snapshot_due = True
        elif isinstance(event, m.InboxChanged):
            self.publish(f"{self.base}/inbox", {"count": event.count}, retain=True)
        elif isinstance(event, m.Paused):
            self.paused = bool(event.paused)
            self.publish(f"{self.base}/paused", "ON" if self.paused else "OFF", retain=True)
            self.state_due = True
        if isinstance(event, m.Enrolled) and event.via == "fleet":
            self.change_due = True  # a fleet's catch-up enrolls thousands: one look at the store per half second
        elif isinstance(event, CHANGES):
            self._store_changed(event)

    def _store_changed(self, event: m.Event | None) -> None:
        """What the store holds changed (``event``; None: examples from the fleet came in)."""
        self.change_due, self.last_change = False, time.monotonic()
        listing = self._listing()  # one request serves the counts and the fleet's own examples
        if listing is not None:
            self.classes = {c["label"]: c["count"] for c in listing}
        self._publish_classes()
        self.state_due = True
        renamed = (event.old, event.new) if isinstance(event, m.Renamed) else None
        if isinstance(event, NAMING) and self.teach.follow(renamed, self.classes, time.monotonic()):
            self.publish(f"{self.base}/teach_class", hass.NO_SELECTION, retain=True)
        self._discover_if_changed()
        if self.sync is not None:
            self.carrier.carry_out(self.sync.changed(event, listing) if event is not None else self.sync.share_own(listing))

    def _discover_if_changed(self) -> None:
        """Discovery again when the classes differ from the ones it last named (options and event types); the
        chosen class's state follows it (hass.ClassToTeach.DELAY)."""
        if list(self.classes) != self.discovered:
            self._publish_discovery()
            if self.teach.chosen:
                self.teach.due = time.monotonic() + self.teach.DELAY

    def _listing(self) -> list[dict] | None:
        """The daemon's classes with their examples (the ``classes`` op), or None when it does not answer."""
        try:
            return self.ask("classes")["classes"]
        except (ControlError, KeyError, TypeError):
            return None

    # -- requests from the broker --------------------------------------------------------------------
    def _on_broker_message(self, topic: str, payload: bytes, retained: bool = False, received: float = 0.0) -> None:
        if self.sync is not None and topic.startswith("teachcam/fleet/"):
            self.carrier.carry_out(self.sync.message(topic, payload, retained=retained, now=received))
        elif topic == f"{self.base}/sync":
            if self.sync is not None:
                self.sync.sync_marker(payload)
        elif topic == f"{self.config.discovery_prefix}/status":
            if payload.strip().lower() == b"online":
                log.info("Home Assistant came online: discovery and state again")
                self._announce()
        elif topic.startswith(f"{self.base}/set/"):
            self._on_set(topic.rsplit("/", 1)[1], payload)
        elif "/request/" in topic:
            self._on_request(topic.rsplit("/", 1)[1], payload)

    def _on_request(self, op: str, payload: bytes) -> None:
        response_topic = f"{self.base}/response/{op}"
        request_id = None
        try:
            if len(payload) > MAX_REQUEST:
                raise ControlError(f"{op}: the request has {len(payload)} bytes; at most {MAX_REQUEST}")
            try:
                fields = json.loads(payload) if payload.strip() else {}
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ControlError(f"{op}: the payload is not JSON") from None
            if not isinstance(fields, dict):
                raise ControlError(f"{op}: the payload must be a JSON object")
            request_id = fields.pop("id", fields.pop("transaction", None))
            if op not in REQUEST_OPS:
                raise ControlError(f"unknown op {op!r} (known: {', '.join(sorted(REQUEST_OPS))})")
            fields.pop("via", None)
            if op == "snapshot":
                fields.setdefault("max_size", SNAPSHOT_SIZE)
            data = self.ask(op, via="mqtt", **fields)
            self.publish(response_topic, {"id": request_id, "status": "ok", "data": data, "error": None})
        except ControlError as exc:
            log.warning("mqtt request %s refused: %s", op, exc)
            self.publish(response_topic, {"id": request_id, "status": "error", "data": None, "error": str(exc)})

    def _on_set(self, what: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip()[:256]
        try:
            if what == "teach_class":
                refused = self.teach.choose(text, self.classes)
                if refused:
                    log.warning("%s", refused)
                self._publish_teach_class()
            elif what == "capture":
                if not self.teach.chosen or self.teach.chosen not in self.classes:  # (followed anyway: belt and braces)
                    self._publish_teach_class()
                    raise ControlError("capture: choose a class to teach first (Class to teach)")
                self.ask("enroll", label=self.teach.chosen, via="mqtt")
            elif what == "paused":
                self.ask("pause" if text.upper() == "ON" else "resume", via="mqtt")
        except ControlError as exc:
            log.warning("%s", exc)

    # -- fleet: the sync decides (apps/mqtt/sync.py), the carrier carries it out (apps/mqtt/carrier.py) -------
    def _finish_catch_up(self) -> None:
        self.carrier.flush()  # the replay's last examples before the stale ones are counted
        self.carrier.carry_out(self.sync.caught_up(self._listing()))
