"""The bridge's MQTT transport: one paho-mqtt client (a persistent session, the last will, TLS, a password from a
file), its callbacks turned into work items for the bridge's one worker thread, and an outbox that keeps what is
published while the broker is away — the newest per topic, at most ``MAX_PENDING``."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from teachcam.edge.errors import TeachcamError

log = logging.getLogger(__name__)
MAX_PENDING = 1000  # messages kept while the broker is away (newest win; per topic, the last one)


class Transport:
    def __init__(self, config, *, device: str, will_topic: str, put: Callable):
        self.config, self.device, self.will_topic, self._put = config, device, will_topic, put
        self.pending: OrderedDict[str, tuple[bytes, bool, int]] = OrderedDict()
        self.connected = False
        self.refused_reason = ""
        self.client = self._make_client()

    def start(self) -> None:
        self.client.connect_async(self.config.host, self.config.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        """The last word (``offline``, as the will says) before disconnecting."""
        if self.connected:
            self.client.publish(self.will_topic, "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()

    def take_pending(self) -> OrderedDict:
        pending, self.pending = self.pending, OrderedDict()
        return pending

    def _make_client(self):
        import paho.mqtt.client as paho

        # A persistent session: fleet ops (QoS 1) sent while this device was away wait for it at the broker.
        # Commands are taken at QoS 0, so none of them is run late, hours after it was sent.
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=self.config.client_id or f"teachcam-{self.device}",
                             clean_session=False, protocol=paho.MQTTv311)
        client.will_set(self.will_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if self.config.username:
            password = None
            if self.config.password_file:
                try:
                    password = Path(self.config.password_file).read_text(encoding="utf-8").splitlines()[0].strip()
                except (OSError, IndexError) as exc:
                    raise TeachcamError(f"mqtt.password_file {self.config.password_file}: cannot read it ({exc})") \
                        from None
            client.username_pw_set(self.config.username, password)
        if self.config.tls:
            import ssl

            try:
                client.tls_set(ca_certs=self.config.ca_file or None, certfile=self.config.cert_file or None,
                               keyfile=self.config.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise TeachcamError(f"mqtt TLS: {exc} (mqtt.ca_file / cert_file / key_file)") from None
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            reason = str(reason_code)
            log.debug("connection attempt refused (%s); paho retries with backoff", reason)
            if reason != self.refused_reason:  # one line per new reason, not one per retry
                log.error("the MQTT broker %s:%d refused the connection: %s (check mqtt.username / "
                          "password_file and the broker's ACL); retrying with backoff", self.config.host,
                          self.config.port, reason)
                self.refused_reason = reason
            return
        self.refused_reason = ""
        self._put(("connected",))

    def _on_connect_fail(self, client, userdata):
        """No connection at all (paho gives no reason): a name that does not resolve, or nothing listening."""
        try:
            socket.getaddrinfo(self.config.host, self.config.port, proto=socket.IPPROTO_TCP)
            reason = "nothing answers there (is the broker running? mqtt.host / mqtt.port)"
        except OSError as exc:
            reason = f"the name {self.config.host!r} does not resolve ({exc.strerror or exc}; mqtt.host)"
        log.debug("connection attempt failed (%s); paho retries with backoff", reason)
        if reason != self.refused_reason:  # one line per new reason, not one per retry
            log.error("cannot reach the MQTT broker %s:%d: %s; retrying with backoff", self.config.host,
                      self.config.port, reason)
            self.refused_reason = reason

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self._put(("disconnected", str(reason_code)))

    def _on_message(self, client, userdata, message):
        self._put(("message", message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))

    def publish(self, topic: str, payload, *, retain: bool = False, qos: int = 0) -> None:
        """Publish now, or keep it (the newest per topic, at most MAX_PENDING) until the broker is back."""
        data = payload if isinstance(payload, bytes) else (
            payload.encode() if isinstance(payload, str) else json.dumps(payload, separators=(",", ":")).encode())
        if self.connected:
            info = self.client.publish(topic, data, qos=qos, retain=retain)
            if info.rc == 0:
                return
        self.pending.pop(topic, None)
        self.pending[topic] = (data, retain, qos)
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
