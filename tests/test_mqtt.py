"""`teachcam mqtt` against a real Mosquitto broker (started per test, loopback, free port, persistence in a temp
folder) and real daemons: state, commands, Home Assistant discovery, fleet sync, outages, passwords, ACL, TLS."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.apps.mqtt import fleet
from tests.helpers import RunningDaemon, save_views, wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                                 reason="needs Debian's mosquitto (.ci/run installs it)")]
paho = pytest.importorskip("paho.mqtt.client")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
# Started as root, mosquitto drops to the "mosquitto" user, which cannot write the test's temp folder.
USER_LINE = "user root\n" if os.geteuid() == 0 else ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Our own mosquitto: generated config, persistence in a temp folder, stopped by the test."""

    def __init__(self, folder: Path, *, extra: str = "", anonymous: bool = True, port: int | None = None):
        self.folder, self.port = folder, port or free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous {'true' if anonymous else 'false'}\n"
                             f"persistence true\npersistence_location {folder}/\nautosave_interval 1\n"
                             f"{USER_LINE}"
                             f"log_dest file {folder}/mosquitto.log\n{extra}")
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        assert wait_for(self._listening, timeout=10), self.proc.stderr.read().decode() if self.proc.poll() else ""

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class Watcher:
    """A subscriber that records every message (as Home Assistant or a script would see them)."""

    def __init__(self, port: int, topics=("#",), **tls):
        self.messages: list[tuple[str, bytes, bool, float]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"watcher-{time.monotonic_ns()}")
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain), time.monotonic()))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [payload for t, payload, _, _ in self.messages if t == topic]

    def last_json(self, topic: str):
        payloads = [p for p in self.on(topic) if p]
        return json.loads(payloads[-1]) if payloads else None

    def wait(self, condition, timeout: float = 15.0) -> bool:
        return wait_for(condition, timeout=timeout, interval=0.02)

    def publish(self, topic: str, payload, retain: bool = False) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class BridgeProcess:
    def __init__(self, tmp: Path, name: str, socket_path: Path, port: int, *extra: str, config: Path | None = None,
                 debug: bool = False):
        self.log = tmp / f"bridge-{name}.log"
        self.args = [sys.executable, "-m", "teachcam.edge.cli", *(["-vv"] if debug else []), "mqtt",
                     "--port", str(port), "--device-id", name, "--socket", str(socket_path),
                     *(["--config", str(config)] if config else []), *extra]
        self.proc = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"),
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)


@pytest.fixture
def broker(tmp_path):
    running = Broker(tmp_path / "broker")
    yield running
    running.stop()


@pytest.fixture
def cleanup():
    things = []
    yield things.append
    for thing in reversed(things):
        thing.stop() if hasattr(thing, "stop") else thing.close()


def start_daemon(bundle_path, tmp_path, name: str, photo: str, seed: int, cleanup) -> RunningDaemon:
    camera = tmp_path / f"camera-{name}"
    save_views(camera, photo, 3, seed=seed)
    daemon = RunningDaemon(bundle_path, tmp_path, camera, socket=tmp_path / f"{name}.sock", name=name)
    cleanup(daemon)
    return daemon


def store_sources(daemon: RunningDaemon) -> dict[str, str]:
    return {e["source"]: c["label"] for c in daemon.request("classes")["classes"] for e in c["examples"]}


def test_state_commands_and_home_assistant_discovery(bundle_path, tmp_path, broker, cleanup):
    daemon = start_daemon(bundle_path, tmp_path, "pi1", "chelsea.png", 50, cleanup)
    watcher = Watcher(broker.port)
    cleanup(watcher)
    bridge = BridgeProcess(tmp_path, "pi1", daemon.socket, broker.port)
    cleanup(bridge)
    base = "teachcam/pi1"
    assert watcher.wait(lambda: watcher.on(f"{base}/availability")[-1:] == [b"online"]), bridge.text()
    discovery_topic = "homeassistant/device/pi1/config"
    assert watcher.wait(lambda: watcher.on(discovery_topic))
    config = json.loads(watcher.on(discovery_topic)[-1])
    assert config["dev"]["ids"] == ["teachcam_pi1"] and config["dev"]["mf"] == "teachcam" and config["dev"]["sw"]
    assert config["o"]["name"] == "teachcam" and config["avty_t"] == f"{base}/availability"
    platforms = {key: c["p"] for key, c in config["cmps"].items()}
    assert platforms == {"label": "sensor", "confidence": "sensor", "class_seen": "event", "snapshot": "image",
                         "teach_class": "select", "capture": "button", "paused": "switch", "camera_fps": "sensor",
                         "model_fps": "sensor", "inference_ms": "sensor", "examples": "sensor", "inbox": "sensor",
                         "fps": "sensor"}  # "fps": retired (only its platform: Home Assistant removes the entity)
    assert all(c["uniq_id"].startswith("teachcam_pi1_") for k, c in config["cmps"].items() if k != "fps")
    assert config["cmps"]["label"]["stat_t"] == f"{base}/state" and config["cmps"]["label"]["exp_aft"] > 0
    assert config["cmps"]["camera_fps"]["ent_cat"] == config["cmps"]["model_fps"]["ent_cat"] == "diagnostic"

    # a command with a transaction id: enroll the current frame into "cat"
    watcher.publish(f"{base}/request/enroll", {"id": "t-1", "label": "cat"})
    assert watcher.wait(lambda: watcher.last_json(f"{base}/response/enroll"))
    response = watcher.last_json(f"{base}/response/enroll")
    assert response["id"] == "t-1" and response["status"] == "ok" and response["data"]["label"] == "cat"
    assert daemon.status()["classes"] == {"cat": 1}
    assert watcher.wait(lambda: (watcher.last_json(f"{base}/state") or {}).get("label") == "cat")
    state = watcher.last_json(f"{base}/state")
    assert set(state) >= {"label", "confidence", "scores", "counts", "time", "bundle_fingerprint"}
    assert state["counts"] == {"cat": 1} and len(state["bundle_fingerprint"]) == 64
    assert watcher.wait(lambda: watcher.last_json(f"{base}/classes") == {"classes": {"cat": 1}, "examples": 1})
    assert watcher.wait(lambda: {"event_type": "cat"} in [json.loads(p) for p in watcher.on(f"{base}/event/class")])
    assert watcher.wait(lambda: watcher.on(f"{base}/snapshot"))
    snapshot = Image.open(io.BytesIO(watcher.on(f"{base}/snapshot")[-1]))
    assert snapshot.format == "JPEG" and max(snapshot.size) <= 320
    events = [json.loads(p)["event"] for p in watcher.on(f"{base}/event")]
    assert "enrolled" in events and "prediction" in events
    assert watcher.wait(lambda: "cat" in json.loads(watcher.on(discovery_topic)[-1])["cmps"]["class_seen"]["evt_typ"])

    # Home Assistant restarts: discovery and state again
    before = len(watcher.on(discovery_topic))
    watcher.publish("homeassistant/status", b"online")
    assert watcher.wait(lambda: len(watcher.on(discovery_topic)) > before)

    # teach from Home Assistant: select a class, press the button; pause with the switch
    watcher.publish(f"{base}/request/add_class", {"label": "dog"})
    assert watcher.wait(lambda: "dog" in json.loads(watcher.on(discovery_topic)[-1])["cmps"]["teach_class"]["ops"])
    watcher.publish(f"{base}/set/teach_class", b"dog")
    assert watcher.wait(lambda: watcher.on(f"{base}/teach_class")[-1:] == [b"dog"])
    watcher.publish(f"{base}/set/capture", b"PRESS")
    assert watcher.wait(lambda: daemon.status()["classes"].get("dog") == 1)
    watcher.publish(f"{base}/set/paused", b"ON")
    assert watcher.wait(lambda: daemon.status()["paused"] is True)
    assert watcher.wait(lambda: watcher.on(f"{base}/paused")[-1:] == [b"ON"])
    watcher.publish(f"{base}/set/paused", b"OFF")
    assert watcher.wait(lambda: daemon.status()["paused"] is False)
    # the focus region, as a script or an automation sets it (#28)
    watcher.publish(f"{base}/request/set_region", {"id": "r", "region": [0, 0.5, 0.5, 1]})
    assert watcher.wait(lambda: daemon.status()["region"] == [0, 0.5, 0.5, 1])
    assert watcher.wait(lambda: ((watcher.last_json(f"{base}/response/set_region") or {}).get("data") or {})
                        .get("other_region") == 2)  # the cat and the dog: taken of the whole picture

    # a removed class leaves discovery: no ghost options or event types
    watcher.publish("teachcam/all/request/remove_class", {"label": "dog", "id": 7})
    assert watcher.wait(lambda: (watcher.last_json(f"{base}/response/remove_class") or {}).get("id") == 7)
    assert watcher.wait(lambda: "dog" not in json.loads(watcher.on(discovery_topic)[-1])["cmps"]["teach_class"]["ops"])
    assert "dog" not in json.loads(watcher.on(discovery_topic)[-1])["cmps"]["class_seen"]["evt_typ"]

    # a bridge that dies: the broker says offline (its last will); back: online
    bridge.stop(signal.SIGKILL)
    assert watcher.wait(lambda: watcher.on(f"{base}/availability")[-1:] == [b"offline"])
    bridge.start()
    assert watcher.wait(lambda: watcher.on(f"{base}/availability")[-1:] == [b"online"])


def home_assistant_rules_broken(watcher: Watcher, base: str, discovery_topic: str) -> list[str]:
    """What Home Assistant would log as an error or a warning, from the messages in the order it got them: a select
    state that is not one of the options of the discovery before it, an event type the discovery did not declare."""
    broken, options, types = [], None, None
    with watcher.lock:
        messages = list(watcher.messages)
    for topic, payload, _, _ in messages:
        if topic == discovery_topic and payload:
            cmps = json.loads(payload)["cmps"]
            options, types = cmps["teach_class"]["ops"], cmps["class_seen"]["evt_typ"]
        elif topic == f"{base}/teach_class" and payload != b"None" and payload.decode() not in (options or []):
            broken.append(f"select state {payload.decode()!r} not in {options}")
        elif topic == f"{base}/event/class" and json.loads(payload)["event_type"] not in (types or []):
            broken.append(f"event type {json.loads(payload)['event_type']!r} not in {types}")
    return broken


def test_home_assistant_gets_valid_states_and_capture_follows_a_rename(bundle_path, tmp_path, broker, cleanup):
    """#25 1, 3, 5, 7, 8: the select's state is always one of its options or None; every event type is declared;
    the chosen class follows a rename and is dropped with its class; a late subscriber gets the stats at once;
    camera and model frames/s apart; one announce burst; reserved names refused on every topic."""
    daemon = start_daemon(bundle_path, tmp_path, "pi1", "chelsea.png", 52, cleanup)
    watcher = Watcher(broker.port)
    cleanup(watcher)
    bridge = BridgeProcess(tmp_path, "pi1", daemon.socket, broker.port)
    cleanup(bridge)
    base, discovery_topic = "teachcam/pi1", "homeassistant/device/pi1/config"
    assert watcher.wait(lambda: watcher.on(f"{base}/teach_class") and watcher.on(f"{base}/stats"))
    time.sleep(1.5)
    # one announce burst for the start (the daemon and the broker both coming up)
    assert len(watcher.on(discovery_topic)) == 1 and watcher.on(f"{base}/availability") == [b"online"]
    assert watcher.on(f"{base}/teach_class") == [b"None"]  # no classes yet: nothing chosen (not the placeholder)

    for label in ("cat", "dog"):
        watcher.publish(f"{base}/request/add_class", {"label": label})
    assert watcher.wait(lambda: json.loads(watcher.on(discovery_topic)[-1])["cmps"]["teach_class"]["ops"]
                        == ["cat", "dog"])
    watcher.publish(f"{base}/set/teach_class", b"cat")
    assert watcher.wait(lambda: watcher.on(f"{base}/teach_class")[-1:] == [b"cat"])
    watcher.publish(f"{base}/set/capture", b"PRESS")
    assert watcher.wait(lambda: daemon.status()["classes"] == {"cat": 1, "dog": 0})
    assert watcher.wait(lambda: watcher.last_json(f"{base}/classes") == {"classes": {"cat": 1, "dog": 0}, "examples": 1})

    # renamed in teachcam (here through the socket, as the page does): Capture enrolls into the new name
    daemon.request("rename_class", old="cat", new="kitty")
    assert watcher.wait(lambda: watcher.on(f"{base}/teach_class")[-1:] == [b"kitty"])
    watcher.publish(f"{base}/set/capture", b"PRESS")
    assert watcher.wait(lambda: daemon.status()["classes"] == {"kitty": 2, "dog": 0}), bridge.text()
    # removed: nothing chosen any more, and Capture brings nothing back
    daemon.request("remove_class", label="kitty")
    assert watcher.wait(lambda: watcher.on(f"{base}/teach_class")[-1:] == [b"None"])
    watcher.publish(f"{base}/set/capture", b"PRESS")
    assert watcher.wait(lambda: "choose a class to teach first" in bridge.text())
    assert daemon.status()["classes"] == {"dog": 0}
    watcher.publish(f"{base}/set/teach_class", b"kitty")  # a stale choice from Home Assistant is not taken
    assert watcher.wait(lambda: "no class 'kitty'" in bridge.text())
    assert watcher.on(f"{base}/teach_class")[-1:] == [b"None"]

    # reserved names: refused with one line on every way in (request topics, the socket), nothing changes
    for name in ("unknown", "None", "icon", "nothing recognised"):
        watcher.publish(f"{base}/request/add_class", {"id": name, "label": name})
        assert watcher.wait(lambda n=name: (watcher.last_json(f"{base}/response/add_class") or {}).get("id") == n)
        response = watcher.last_json(f"{base}/response/add_class")
        assert response["status"] == "error" and "reserved word" in response["error"], response
        watcher.publish(f"{base}/request/enroll", {"id": name, "label": name})
        assert watcher.wait(lambda n=name: (watcher.last_json(f"{base}/response/enroll") or {}).get("id") == n)
        assert "reserved word" in watcher.last_json(f"{base}/response/enroll")["error"]
        with pytest.raises(Exception, match="reserved word"):
            daemon.request("rename_class", old="dog", new=name)
    assert daemon.status()["classes"] == {"dog": 0}

    # a subscriber that comes late (Home Assistant restarting) gets the stats at once, retained, with the camera's
    # rate and the model's capacity apart
    late = Watcher(broker.port, topics=(f"{base}/stats", f"{base}/classes"))
    cleanup(late)
    assert late.wait(lambda: late.on(f"{base}/stats") and late.on(f"{base}/classes"), timeout=5)
    stats = late.last_json(f"{base}/stats")
    assert 0 < stats["camera_fps"] < 100 and stats["model_fps"] > 0 and "fps" not in stats
    assert all(retained for t, _, retained, _ in late.messages)
    assert home_assistant_rules_broken(watcher, base, discovery_topic) == []


def test_bad_input_on_every_command_topic_gets_an_error_and_changes_nothing(bundle_path, tmp_path, broker, cleanup):
    daemon = start_daemon(bundle_path, tmp_path, "pi1", "chelsea.png", 51, cleanup)
    watcher = Watcher(broker.port)
    cleanup(watcher)
    bridge = BridgeProcess(tmp_path, "pi1", daemon.socket, broker.port, "--fleet-group", "shop")
    cleanup(bridge)
    base = "teachcam/pi1"
    assert watcher.wait(lambda: watcher.on(f"{base}/availability")[-1:] == [b"online"]), bridge.text()
    cases = [("enroll", b"{not json", "not JSON"), ("enroll", b"[1, 2]", "JSON object"),
             ("enroll", {"label": 5}, "label must be a non-empty string"),
             ("enroll", {"label": "a" * 300}, "label must be"), ("enroll", {"label": "x\ny"}, ""),
             ("rename_class", {"old": "nothing", "new": "x"}, "no class"),
             ("frobnicate", {}, "unknown op"), ("example", {"example": "x"}, "unknown op"),
             ("set_region", {"region": [0.5, 0.5, 0.4, 0.9]}, "x0 < x1"), ("set_region", {"region": [0, 0, 2, 1]}, "0 to 1"),
             ("enroll", b"x" * (5 * 1024 * 1024), "at most")]
    for i, (op, payload, message) in enumerate(cases):
        body = payload if isinstance(payload, bytes) else json.dumps({**payload, "id": i}).encode()
        before = len(watcher.on(f"{base}/response/{op}"))
        watcher.publish(f"{base}/request/{op}", body)
        assert watcher.wait(lambda op=op, n=before: len(watcher.on(f"{base}/response/{op}")) > n), (op, bridge.text())
        response = json.loads(watcher.on(f"{base}/response/{op}")[-1])
        assert response["status"] == "error" and response["data"] is None and message in response["error"], response
        assert response["id"] == (i if not isinstance(payload, bytes) else None)

    # fleet examples that must not be enrolled: wrong embedding, not an image, another group, lies about origin
    good = {"v": 1, "group": "shop", "device": "pi9", "id": "e1", "label": "cat", "fingerprint": "f" * 64,
            "embedding": base64.b64encode(np.ones(1280, "<f4").tobytes()).decode(),
            "jpeg": base64.b64encode(b"not an image").decode(), "time": 1}
    bad = [("teachcam/fleet/shop/example/pi9/e1", {**good}),  # thumbnail is not an image (and a foreign fingerprint)
           ("teachcam/fleet/shop/example/pi9/e2", {**good, "id": "e2",
                                                   "embedding": base64.b64encode(b"\x00" * 7).decode()}),
           ("teachcam/fleet/shop/example/pi9/e3", {**good, "id": "e3", "group": "other"}),
           ("teachcam/fleet/shop/example/pi9/e4", {**good, "id": "e4", "device": "pi1"}),
           ("teachcam/fleet/shop/example/pi9/e5", b"\xff\xfe"),
           ("teachcam/fleet/shop/example/pi9/e6", {**good, "id": "e6", "label": "a/b"}),
           ("teachcam/fleet/shop/example/pi9/e7", fleet.MAGIC + b"\x05\x00{bad"),  # format 2, broken
           ("teachcam/fleet/shop/example/pi9/e8", {**good, "id": "e8", "label": "unknown",  # a reserved name
                                                   "jpeg": jpeg_text(np.full((224, 224, 3), 128, np.uint8))}),
           ("teachcam/fleet/shop/op", {"v": 1, "group": "shop", "device": "pi9", "op": "format_disk"})]
    for topic, payload in bad:
        watcher.publish(topic, payload, retain="/example/" in topic)
    assert watcher.wait(lambda: bridge.text().count("fleet example refused") >= 5, timeout=20), bridge.text()
    assert watcher.wait(lambda: "not enrolled" in bridge.text() and "reserved word" in bridge.text())
    assert watcher.wait(lambda: "does not travel" in bridge.text())  # the op topic has its own QoS: any order
    time.sleep(1.0)
    assert daemon.status()["classes"] == {} and bridge.alive() and daemon.proc.poll() is None
    assert "Traceback" not in bridge.text()
    watcher.publish(f"{base}/request/status", {"id": "still"})  # and it still answers
    assert watcher.wait(lambda: any(json.loads(p).get("id") == "still" for p in watcher.on(f"{base}/response/status")))


def jpeg_text(pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return base64.b64encode(out.getvalue()).decode()


def fleet_of_two(bundle_path, tmp_path, broker, cleanup, seed: int):
    """Pis A and B (the same cat, other views), each with a bridge in fleet group "shop", both online."""
    a = start_daemon(bundle_path, tmp_path, "pia", "chelsea.png", seed, cleanup)
    b = start_daemon(bundle_path, tmp_path, "pib", "chelsea.png", seed + 1, cleanup)
    watcher = Watcher(broker.port, topics=("teachcam/#",))
    cleanup(watcher)
    bridges = {name: BridgeProcess(tmp_path, name, d.socket, broker.port, "--fleet-group", "shop")
               for name, d in (("pia", a), ("pib", b))}
    for bridge in bridges.values():
        cleanup(bridge)
    assert watcher.wait(lambda: all(watcher.on(f"teachcam/{n}/availability")[-1:] == [b"online"] for n in bridges))
    return a, b, watcher, bridges


def test_a_fleet_shares_what_one_pi_was_taught(bundle_path, tmp_path, broker, cleanup):
    """Teach on A → B enrolls it and predicts it; rename and remove travel; B catches up after being away."""
    a, b, watcher, bridges = fleet_of_two(bundle_path, tmp_path, broker, cleanup, seed=60)

    delays = []
    for _ in range(3):
        started = time.monotonic()
        example = a.request("enroll", label="cat")["example"]
        assert wait_for(lambda ex=example: f"fleet:pia:{ex}" in store_sources(b), timeout=10), bridges["pib"].text()
        delays.append(time.monotonic() - started)
    assert max(delays) <= 2.0, delays
    assert b.status()["classes"] == {"cat": 3}
    assert wait_for(lambda: b.status()["shown"] == "cat", timeout=20)  # B's own camera now says cat
    assert a.status()["classes"] == {"cat": 3}  # no echo back to A

    a.request("rename_class", old="cat", new="kitty")
    assert wait_for(lambda: b.status()["classes"] == {"kitty": 3}, timeout=10), bridges["pib"].text()

    bridges["pib"].stop()  # B's bridge away while A is taught and changes its mind
    a.request("enroll", label="kitty")
    undone = a.request("enroll", label="kitty")["example"]
    a.request("undo")
    bridges["pib"].start()
    assert wait_for(lambda: b.status()["classes"] == {"kitty": 4}, timeout=15), bridges["pib"].text()
    assert f"fleet:pia:{undone}" not in store_sources(b)

    a.request("remove_class", label="kitty")
    assert wait_for(lambda: "kitty" not in b.status()["classes"], timeout=10), bridges["pib"].text()
    retained = [t for t, p, r, _ in watcher.messages if t.startswith("teachcam/fleet/shop/example/")]
    assert retained  # one retained message per example went out
    size = max(len(p) for t, p, _, _ in watcher.messages if t.startswith("teachcam/fleet/shop/example/") and p)
    assert size <= fleet.WIRE_BUDGET  # format 2: at most 8 KB an example


def test_a_deletion_anywhere_holds_everywhere_and_ops_wait_for_a_pi_that_was_away(bundle_path, tmp_path, broker,
                                                                                  cleanup):
    """B deletes examples A taught → A, their owner, removes them: they do not come back when B's bridge
    reconnects. A rename made on B while A's bridge was away reaches A when it returns (a persistent session), and
    A's examples do not bring the old name back to B."""
    a, b, watcher, bridges = fleet_of_two(bundle_path, tmp_path, broker, cleanup, seed=64)
    ids = [a.request("enroll", label="cat")["example"] for _ in range(3)]
    assert wait_for(lambda: all(f"fleet:pia:{i}" in store_sources(b) for i in ids), timeout=10), bridges["pib"].text()

    def id_in_b(example_id: str) -> str:
        return next(e["id"] for c in b.request("classes")["classes"] for e in c["examples"]
                    if e["source"] == f"fleet:pia:{example_id}")

    b.request("remove_examples", examples=[id_in_b(ids[0])])  # the page's "delete the example that causes it"
    assert wait_for(lambda: a.status()["classes"] == {"cat": 2}, timeout=10), bridges["pia"].text()
    assert watcher.wait(lambda: watcher.on(f"teachcam/fleet/shop/example/pia/{ids[0]}")[-1:] == [b""])
    b.request("remove_examples", examples=[id_in_b(ids[2])])  # (undo no longer takes back a peer's example)
    assert wait_for(lambda: a.status()["classes"] == {"cat": 1}, timeout=10), bridges["pia"].text()

    caught_up = bridges["pib"].text().count("caught up")
    bridges["pib"].stop()  # B's bridge reconnects: the broker's replay brings nothing deleted back
    bridges["pib"].start()
    assert wait_for(lambda: bridges["pib"].text().count("caught up") > caught_up, timeout=20), bridges["pib"].text()
    assert {s for s in store_sources(b) if s.startswith("fleet:")} == {f"fleet:pia:{ids[1]}"}

    caught_up = bridges["pia"].text().count("caught up")
    bridges["pia"].stop()  # A's bridge away while B renames the class
    assert b.request("rename_class", old="cat", new="kitty")
    bridges["pia"].start()
    assert wait_for(lambda: a.status()["classes"] == {"kitty": 1}, timeout=20), bridges["pia"].text()
    assert wait_for(lambda: bridges["pia"].text().count("caught up") > caught_up, timeout=20), bridges["pia"].text()
    topic = f"teachcam/fleet/shop/example/pia/{ids[1]}"
    assert watcher.wait(lambda: fleet.decode(topic, watcher.on(topic)[-1], "shop").label == "kitty")
    time.sleep(1.0)  # what A republished has reached B
    assert b.status()["classes"] == {"kitty": 1} and a.status()["classes"] == {"kitty": 1}
    for bridge in bridges.values():
        assert "Traceback" not in bridge.text()


def test_broker_outage_and_restart_lose_nothing(bundle_path, tmp_path, broker, cleanup):
    a = start_daemon(bundle_path, tmp_path, "pia", "chelsea.png", 62, cleanup)
    b = start_daemon(bundle_path, tmp_path, "pib", "coffee.png", 63, cleanup)
    for name, daemon in (("pia", a), ("pib", b)):
        cleanup(BridgeProcess(tmp_path, name, daemon.socket, broker.port, "--fleet-group", "shop"))
    watcher = Watcher(broker.port)
    assert watcher.wait(lambda: all(watcher.on(f"teachcam/{n}/availability")[-1:] == [b"online"]
                                    for n in ("pia", "pib")))
    a.request("enroll", label="cat")
    assert wait_for(lambda: b.status()["classes"] == {"cat": 1}, timeout=10)
    watcher.close()
    time.sleep(1.5)  # the broker's autosave (1 s) has the retained messages
    broker.kill()
    a.request("enroll", label="cat")  # taught while the broker is down
    assert wait_for(lambda: a.status()["classes"] == {"cat": 2})
    broker.start()
    watcher = Watcher(broker.port)
    cleanup(watcher)
    assert watcher.wait(lambda: all(watcher.on(f"teachcam/{n}/availability")[-1:] == [b"online"]
                                    for n in ("pia", "pib")), timeout=60)
    assert wait_for(lambda: b.status()["classes"] == {"cat": 2}, timeout=30)
    assert a.status()["classes"] == {"cat": 2}
    assert watcher.wait(lambda: len([p for t, p, r, _ in watcher.messages
                                     if t.startswith("teachcam/fleet/shop/example/pia/") and p]) >= 2)
    assert watcher.wait(lambda: (watcher.last_json("teachcam/pia/state") or {}).get("counts") == {"cat": 2})


def make_certificates(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    run = lambda *args: subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=teachcam test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.crt", "-days", "2", "-extfile", "ext.cnf")
    return {name: folder / name for name in ("ca.crt", "server.crt", "server.key")}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_passwords_an_acl_and_tls(bundle_path, tmp_path, cleanup):
    daemon = start_daemon(bundle_path, tmp_path, "pi1", "chelsea.png", 64, cleanup)
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "pi1", "right horse"], check=True,
                   capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "ha", "ha pass"], check=True, capture_output=True)
    acl = tmp_path / "acl"
    acl.write_text("user pi1\ntopic readwrite teachcam/pi1/#\ntopic write homeassistant/#\ntopic read "
                   "homeassistant/status\ntopic read teachcam/all/#\n\nuser ha\ntopic readwrite #\n")
    os.chmod(passwords, 0o600)
    os.chmod(acl, 0o600)
    certs = make_certificates(tmp_path / "certs")
    tls_port = free_port()
    broker = Broker(tmp_path / "broker", anonymous=False,
                    extra=f"password_file {passwords}\nacl_file {acl}\n"
                          f"listener {tls_port} 127.0.0.1\ncafile {certs['ca.crt']}\ncertfile {certs['server.crt']}\n"
                          f"keyfile {certs['server.key']}\n")
    cleanup(broker)
    watcher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ha")
    watcher.username_pw_set("ha", "ha pass")
    seen: list[tuple[str, bytes]] = []
    watcher.on_message = lambda c, u, m: seen.append((m.topic, bytes(m.payload)))
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe("teachcam/#")
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    cleanup(type("Stop", (), {"stop": lambda self: (watcher.loop_stop(), watcher.disconnect())})())

    secret = tmp_path / "mqtt-password"
    secret.write_text("wrong\n")
    config = tmp_path / "teachcam.toml"
    config.write_text(f'[mqtt]\nusername = "pi1"\npassword_file = "{secret}"\n')
    wrong = BridgeProcess(tmp_path, "pi1", daemon.socket, broker.port, config=config, debug=True)
    cleanup(wrong)
    assert wait_for(lambda: "refused the connection" in wrong.text(), timeout=20), wrong.text()
    # it retries with backoff and says so once, not once per retry (each retry is a debug line)
    assert wait_for(lambda: wrong.text().count("connection attempt refused") >= 3, timeout=30), wrong.text()
    assert wrong.alive() and wrong.text().count("refused the connection") == 1, wrong.text()
    assert not any(t == "teachcam/pi1/availability" for t, _ in seen)
    wrong.stop()

    secret.write_text("right horse\n")
    right = BridgeProcess(tmp_path, "pi1", daemon.socket, broker.port, config=config)
    cleanup(right)
    assert wait_for(lambda: ("teachcam/pi1/availability", b"online") in seen, timeout=20), right.text()
    right.stop()

    # TLS: the broker's certificate checked against the CA the test made
    config.write_text(f'[mqtt]\nusername = "pi1"\npassword_file = "{secret}"\ntls = true\n'
                      f'ca_file = "{certs["ca.crt"]}"\n')
    seen.clear()
    tls = BridgeProcess(tmp_path, "pi1", daemon.socket, tls_port, config=config)
    cleanup(tls)
    assert wait_for(lambda: ("teachcam/pi1/availability", b"online") in seen, timeout=20), tls.text()
    assert wait_for(lambda: any(t == "teachcam/pi1/state" for t, _ in seen), timeout=10)


def test_a_pi_that_joins_late_catches_up_on_more_than_the_brokers_queue_holds(bundle_path, tmp_path, broker, cleanup):
    """1,100 retained examples (more than Mosquitto's per-client queue of 1,000): every one arrives."""
    from teachcam.edge.apps.mqtt import fleet

    late = start_daemon(bundle_path, tmp_path, "pilate", "coffee.png", 65, cleanup)
    fingerprint = late.status()["fingerprint"]
    buffer = io.BytesIO()
    Image.fromarray(np.full((224, 224, 3), 128, np.uint8)).save(buffer, "JPEG")
    jpeg = base64.b64encode(buffer.getvalue()).decode()
    rng = np.random.default_rng(0)
    publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="teacher")
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    infos = []
    for i in range(1100):
        vector = rng.random(1280, dtype=np.float32).astype("<f4")
        example = fleet.FleetExample("shop", "piold", f"x{i:05d}", f"class{i % 11}", fingerprint,
                                     base64.b64encode(vector.tobytes()).decode(), jpeg, time.time())
        infos.append(publisher.publish(fleet.example_topic("shop", "piold", example.id), example.payload(), qos=1,
                                       retain=True))
    for info in infos:
        info.wait_for_publish(30)
    publisher.loop_stop()
    publisher.disconnect()
    bridge = BridgeProcess(tmp_path, "pilate", late.socket, broker.port, "--fleet-group", "shop")
    cleanup(bridge)
    assert wait_for(lambda: late.status()["examples"] == 1100, timeout=120), (late.status()["examples"], bridge.text())
    assert wait_for(lambda: "caught up" in bridge.text(), timeout=30), bridge.text()  # past the catch-up's end:
    assert late.status()["examples"] == 1100  # nothing removed


@pytest.mark.parametrize("host, reason", [
    ("127.0.0.1", "nothing answers there (is the broker running? mqtt.host / mqtt.port)"),
    ("no-such-broker.invalid", "the name 'no-such-broker.invalid' does not resolve"),
])
def test_a_broker_that_cannot_be_reached_is_one_line_then_quiet_retries(tmp_path, cleanup, host, reason):
    # A system without "localhost" in /etc/hosts, a broker not started yet: paho retries silently, so say it once.
    port = free_port()  # nothing listens there
    bridge = BridgeProcess(tmp_path, "pi1", tmp_path / "no-daemon.sock", port, "--host", host, debug=True)
    cleanup(bridge)
    line = f"cannot reach the MQTT broker {host}:{port}: {reason}"
    assert wait_for(lambda: line in bridge.text(), timeout=20), bridge.text()
    assert wait_for(lambda: bridge.text().count("connection attempt failed") >= 3, timeout=30), bridge.text()  # retries
    assert bridge.alive() and bridge.text().count("cannot reach the MQTT broker") == 1, bridge.text()
