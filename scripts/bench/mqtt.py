#!/usr/bin/env python3
"""What the MQTT bridge costs and how fast it carries things (#13). Needs Debian's mosquitto.

1. Daemon frames/s with `teachcam mqtt` attached vs without: the real Daemon (342x256 demo frames in
   memory, 60 examples, unpaced) in this process, the bridge as its own process on a broker this script
   starts; alternating rounds, the ratio is the median.
2. Latency from a prediction change in the daemon (the event's own timestamp) to the message at a
   subscriber of `<base>/event`, p50/p95, over those rounds.
3. Fleet: two `teachcam run` daemons (images: sources) with a bridge each: 50 enrollments on A, time until
   B's store holds each one (p50/p95); the bytes of one example's retained message.
4. Catch-up: 1,000 retained examples on the broker (as A's bridge publishes them), then B's bridge starts
   with an empty store: time until B holds all 1,000.

Usage: scripts/bench/mqtt.py [--bundle build/default-bundle] [--seconds 8] [--rounds 3] [--catch-up 1000] [--json]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon import background_daemon, demo_frames, enroll  # noqa: E402  (scripts/bench/daemon.py)

from teachcam.edge.link.client import ControlClient  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path, extra: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                    + ("user root\n" if os.geteuid() == 0 else "") + extra)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


class Subscriber:
    def __init__(self, port: int, topics: list[str]):
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, bytes, float]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-{time.monotonic_ns()}")
        self.client.on_message = lambda c, u, m: self._add(m.topic, bytes(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 0) for t in topics])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.messages.append((topic, payload, time.time()))

    def on(self, topic: str) -> list[tuple[bytes, float]]:
        with self.lock:
            return [(p, t) for top, p, t in self.messages if top == topic]

    def wait(self, condition, timeout: float = 60.0) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if condition():
                return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def bridge(port: int, device: str, socket_path: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "teachcam.edge.cli", "mqtt", "--port", str(port), "--device-id",
                             device, "--socket", str(socket_path), *extra], stdout=subprocess.DEVNULL,
                            stderr=open(log, "a"), env={**os.environ, "PYTHONUNBUFFERED": "1"})


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def daemon_round(args, store: Path, frames: list, port: int, tmp: Path, with_bridge: bool, r: int) -> dict:
    """Frames/s of the daemon over ``args.seconds``, measured once the bridge (if any) is online."""
    socket_path = tmp / f"d{r}{int(with_bridge)}.sock"
    with background_daemon(args.bundle, store, frames, args.threads, socket_path) as daemon:
        proc = watcher = None
        device = f"bench{r}"
        if with_bridge:
            watcher = Subscriber(port, [f"teachcam/{device}/#"])
            proc = bridge(port, device, socket_path, tmp / "bridge.log")
            if not watcher.wait(lambda: [p for p, _ in watcher.on(f"teachcam/{device}/availability")][-1:]
                                == [b"online"]):
                raise SystemExit("the bridge did not come online: " + (tmp / "bridge.log").read_text()[-2000:])
        time.sleep(1.0)  # settle
        frames0, started = daemon.stats.frames, time.perf_counter()
        since = time.time()
        time.sleep(args.seconds)
        result = {"fps": (daemon.stats.frames - frames0) / (time.perf_counter() - started)}
        if with_bridge:
            time.sleep(0.5)
            latencies = []
            for payload, received in watcher.on(f"teachcam/{device}/event"):
                event = json.loads(payload)
                if event.get("event") == "prediction" and event["time"] >= since:
                    latencies.append(received - event["time"])
            result["latencies_ms"] = [x * 1e3 for x in latencies]
            stop(proc)
            watcher.close()
    return result


def fleet(args, port: int, tmp: Path) -> dict:
    from PIL import Image

    from teachcam.edge.samples import sample_photos

    camera = tmp / "camera"
    camera.mkdir()
    Image.open(sample_photos(("chelsea.png",))[0]).convert("RGB").save(camera / "cat.jpg")
    procs, sockets = [], {}
    for name in ("pia", "pib"):
        sockets[name] = tmp / f"{name}.sock"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "teachcam.edge.cli", "run", "--bundle", args.bundle, "--store", str(tmp / name),
             "--source", f"images:{camera}", "--no-gpio", "--fps", "10"], stdout=subprocess.DEVNULL,
            stderr=open(tmp / f"{name}.log", "w"), env={**os.environ, "TEACHCAM_SOCKET": str(sockets[name])}))
    watcher = Subscriber(port, ["teachcam/#"])
    try:
        for name in sockets:
            for _ in range(600):
                try:
                    ControlClient(sockets[name]).connect().close()
                    break
                except Exception:
                    time.sleep(0.1)
        bridges = [bridge(port, name, sockets[name], tmp / f"bridge-{name}.log", "--fleet-group", "bench")
                   for name in sockets]
        procs += bridges
        watcher.wait(lambda: all([p for p, _ in watcher.on(f"teachcam/{n}/availability")][-1:] == [b"online"]
                                 for n in sockets))
        time.sleep(1.0)
        a, b = ControlClient(sockets["pia"]).connect(), ControlClient(sockets["pib"]).connect()
        delays = []
        for i in range(args.fleet):
            started = time.monotonic()
            example = a.request("enroll", label=f"class{i % 5}")["example"]
            source = f"fleet:pia:{example}"
            while True:
                held = {e["source"] for c in b.request("classes")["classes"] for e in c["examples"]}
                if source in held:
                    break
                if time.monotonic() - started > 30:
                    raise SystemExit("B never got an example: " + (tmp / "bridge-pib.log").read_text()[-2000:])
                time.sleep(0.005)
            delays.append(time.monotonic() - started)
        sizes = [len(p) for t, p, _ in watcher.messages if t.startswith("teachcam/fleet/bench/example/pia/") and p]
        fingerprint = a.request("status")["fingerprint"]
        example_data = a.request("example", example=example)
        a.close()
        b.close()
        out = {"delays_ms": [d * 1e3 for d in delays], "bytes_per_example": int(np.median(sizes)) if sizes else 0}

        # catch-up: many retained examples on the broker, then a fresh device joins
        for proc in bridges:
            stop(proc)
        stop(procs[1])  # B's daemon
        shutil.rmtree(tmp / "pib")
        procs[1] = subprocess.Popen(
            [sys.executable, "-m", "teachcam.edge.cli", "run", "--bundle", args.bundle, "--store", str(tmp / "pib"),
             "--source", f"images:{camera}", "--no-gpio", "--fps", "10"], stdout=subprocess.DEVNULL,
            stderr=open(tmp / "pib.log", "a"), env={**os.environ, "TEACHCAM_SOCKET": str(sockets["pib"])})
        publish_retained(port, args.catch_up, fingerprint, example_data)
        for _ in range(600):
            try:
                ControlClient(sockets["pib"]).connect().close()
                break
            except Exception:
                time.sleep(0.1)
        started = time.monotonic()
        late = bridge(port, "pib", sockets["pib"], tmp / "bridge-pib.log", "--fleet-group", "bench")
        procs.append(late)
        b = ControlClient(sockets["pib"]).connect()
        count, expected = 0, args.catch_up + len(delays)  # the synthetic device's and A's examples
        while time.monotonic() - started < 900:
            count = sum(c["count"] for c in b.request("classes")["classes"])
            if count >= expected:
                break
            time.sleep(0.2)
        out["catch_up_s"] = time.monotonic() - started
        out["caught_up"] = count
        b.close()
        return out
    finally:
        watcher.close()
        for proc in procs:
            stop(proc)


def publish_retained(port: int, count: int, fingerprint: str, example: dict) -> None:
    """``count`` retained examples from a device "pix" (as its bridge would publish them), 100 per class."""
    import paho.mqtt.client as paho
    from PIL import Image

    from teachcam.edge.apps.mqtt import fleet as fl

    with Image.open(io.BytesIO(base64.b64decode(example["png"]))) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=90)
    jpeg = base64.b64encode(out.getvalue()).decode()
    base = np.frombuffer(base64.b64decode(example["embedding"]), "<f4")
    rng = np.random.default_rng(0)
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = []
    for i in range(count):
        vector = (base + rng.normal(0, 0.01, base.shape)).astype("<f4")
        shared = fl.FleetExample("bench", "pix", f"x{i:05d}", f"class{i % 10}", fingerprint,
                                 base64.b64encode(vector.tobytes()).decode(), jpeg, time.time())
        infos.append(client.publish(fl.example_topic("bench", "pix", shared.id), shared.payload(), qos=1, retain=True))
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--frames", type=int, default=300, help="distinct demo frames, looped")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fleet", type=int, default=50, help="enrollments on A for the fleet latency")
    parser.add_argument("--catch-up", type=int, default=1000, help="retained examples a joining device catches up on")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(MOSQUITTO).exists():
        print("scripts/bench/mqtt.py needs mosquitto: apt-get install mosquitto", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker, port = start_broker(tmp / "broker")
        try:
            store = tmp / "store60"
            enroll(store, args.bundle, 60)
            frames = demo_frames(args.frames, (342, 256))
            rounds = []
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}…", file=sys.stderr)
                none = daemon_round(args, store, frames, port, tmp, False, r)
                attached = daemon_round(args, store, frames, port, tmp, True, r)
                rounds.append({"none": none["fps"], "bridge": attached["fps"], "ratio": attached["fps"] / none["fps"],
                               "latencies_ms": attached["latencies_ms"]})
            print("fleet…", file=sys.stderr)
            fleet_result = fleet(args, port, tmp)
        finally:
            broker.terminate()
            broker.wait(timeout=10)
    latencies = [x for r in rounds for x in r["latencies_ms"]]
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "frames": args.frames,
           "ratio": float(np.median([r["ratio"] for r in rounds])),
           "rounds": [{k: v for k, v in r.items() if k != "latencies_ms"} for r in rounds],
           "prediction_latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                                     "count": len(latencies)},
           "fleet_ms": {"p50": percentile(fleet_result["delays_ms"], 50),
                        "p95": percentile(fleet_result["delays_ms"], 95), "count": len(fleet_result["delays_ms"])},
           "bytes_per_example": fleet_result["bytes_per_example"],
           "catch_up": {"examples": fleet_result["caught_up"], "seconds": fleet_result["catch_up_s"]}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"MQTT bridge — {out['machine']}, demo frames of 342x256 looped, 60 examples, {args.seconds:.0f} s per round, "
          f"{args.rounds} alternating rounds")
    for r in out["rounds"]:
        print(f"  no bridge {r['none']:6.1f} fps | bridge attached {r['bridge']:6.1f} fps ({r['ratio']:.3f}×)")
    p = out["prediction_latency_ms"]
    print(f"  median ratio {out['ratio']:.3f}× (target ≥ 0.95); prediction change → subscriber p50 {p['p50']:.1f} ms, "
          f"p95 {p['p95']:.1f} ms ({p['count']} changes)")
    f = out["fleet_ms"]
    print(f"  fleet: enrollment on A → in B's store p50 {f['p50']:.0f} ms, p95 {f['p95']:.0f} ms ({f['count']} "
          f"enrollments); {out['bytes_per_example']:,} bytes per example on the wire")
    c = out["catch_up"]
    print(f"  catch-up: {c['examples']} retained examples in {c['seconds']:.1f} s "
          f"({c['examples'] / max(c['seconds'], 1e-9):.0f} examples/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
