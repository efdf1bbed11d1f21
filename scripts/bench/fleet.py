#!/usr/bin/env python3
"""A fleet of many Pis (#25): what one example costs on the wire, what the smaller thumbnail costs in accuracy, and
what a Pi joining a big fleet late goes through. Needs Debian's mosquitto for part 2.

1. Accuracy (in this process, the bundle's int8 embedder and teachcam's KNN): scenes of 640x480 composed from
   sample photos as scripts/bench/region.py makes them (5 classes, the object ~20 % of the frame, clutter,
   lighting, sensor noise); per seed 5 examples per class are taught on "the Pi that saw them" and 40 other scenes
   per class are tested. A receiving Pi with another bundle re-embeds each example from its thumbnail, so the
   examples are taught four ways: the teaching Pi's own embeddings; the float16 embeddings of format 2 (same
   bundle); re-embedded from format 1's thumbnail (224 px JPEG, quality 90); re-embedded from format 2's (fitted
   to the 8 KB message). Bytes per message of both formats, on these noisy frames.
2. Joining late: N simulated devices publish M examples each (real format-2 messages: thumbnails of composed
   scenes, their embeddings; 10 classes) retained on a real Mosquitto (max_queued_messages 20000, as docs/mqtt.md
   says a fleet's broker needs); then a real `teachcam run` (empty store)
   and its `teachcam mqtt --fleet-group` start: time until its store holds what the fleet has (within the
   per-class cap, knn.cap = 200), the broker's RSS, the daemon's RSS and store size; then the real Daemon's
   frames/s (unpaced, in this process) with that store against an empty one, alternating rounds.

Usage: scripts/bench/fleet.py [--bundle build/default-bundle] [--seeds 3] [--devices 100] [--examples 100] [--json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `teachcam` itself does (edge/cli); before numpy is imported

import argparse
import base64
import io
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt import MOSQUITTO, bridge, start_broker, stop  # noqa: E402  (scripts/bench/mqtt.py)
from region import BACKGROUNDS, CLUTTER, OBJECTS, accuracy, compose, photos  # noqa: E402  (scripts/bench/region.py)

from teachcam.edge.apps.mqtt import fleet as fl  # noqa: E402
from teachcam.edge.link.client import ControlClient  # noqa: E402
from teachcam.edge.model.bundle import load_bundle  # noqa: E402
from teachcam.edge.model.images import read_image_bytes  # noqa: E402
from teachcam.edge.model.models import Embedder  # noqa: E402
from teachcam.edge.model.preprocess import Preprocessor  # noqa: E402
from teachcam.edge.teaching.teacher import Teacher  # noqa: E402

WHOLE = (0.0, 0.0, 1.0, 1.0)
FRACTION = 0.2


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def message(thumb: np.ndarray, embedding: np.ndarray, i: int, device: str = "pi-000", label: str = "class0",
            fingerprint: str = "0" * 64, *, v1: bool = False) -> bytes:
    """One example's retained message as the bridge publishes it (format 2, or format 1 with ``v1``)."""
    bare = fl.FleetExample("bench", device, f"{i:013x}-{i:08x}", label, fingerprint,
                           base64.b64encode(np.asarray(embedding, "<f4").tobytes()).decode(), "", time.time())
    image = Image.fromarray(thumb)
    if v1:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=90)
        jpeg = out.getvalue()
    else:
        jpeg = fl.fit_jpeg(image, fl.jpeg_budget(bare))
    shared = fl.FleetExample(**{**bare.__dict__, "jpeg": base64.b64encode(jpeg).decode()})
    return shared.payload_v1() if v1 else shared.payload()


def reembedded(embedder, preprocess, payload: bytes) -> np.ndarray:
    """What a Pi with another bundle does with a message: decode it, take the thumbnail as the daemon's control
    socket does (the model input as is when it is that size, else preprocessed), embed it."""
    example = fl.decode(fl.example_topic("bench", "pi-000", json_id(payload)), payload, "bench")
    image = read_image_bytes(base64.b64decode(example.jpeg))
    if image.shape[:2] != (preprocess.crop_height, preprocess.crop_width):
        image = preprocess(image)
    return embedder.embed(np.ascontiguousarray(image[..., :3]))


def json_id(payload: bytes) -> str:
    if payload.startswith(fl.MAGIC):
        size = int.from_bytes(payload[4:6], "little")
        return json.loads(payload[6:6 + size])["id"]
    return json.loads(payload)["id"]


def scenery():
    objects, backgrounds, clutter = photos(OBJECTS.values()), photos(BACKGROUNDS), photos(CLUTTER)
    return {label: objects[name] for label, name in OBJECTS.items()}, backgrounds, clutter


def accuracy_part(args, embedder, preprocess) -> dict:
    objects, backgrounds, clutter = scenery()
    labels = list(OBJECTS)
    ways = {"own": [], "float16": [], "v1_reembedded": [], "v2_reembedded": []}
    sizes = {"v1": [], "v2": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(1000 + seed)
        train, train_labels, test, test_labels = {k: [] for k in ways}, [], [], []
        for label in labels:
            for n in range(5 + 40):
                scene = compose(rng, objects, backgrounds, clutter, label, FRACTION, WHOLE)
                thumb = preprocess(scene)
                own = embedder.embed(thumb)
                if n >= 5:
                    test.append(own)
                    test_labels.append(label)
                    continue
                v1 = message(thumb, own, n, v1=True)
                v2 = message(thumb, own, n)
                sizes["v1"].append(len(v1))
                sizes["v2"].append(len(v2))
                train["own"].append(own)
                train["float16"].append(np.asarray(own, np.float16).astype(np.float32))
                train["v1_reembedded"].append(reembedded(embedder, preprocess, v1))
                train["v2_reembedded"].append(reembedded(embedder, preprocess, v2))
                train_labels.append(label)
        tests = unit(np.stack(test))
        for way in ways:
            ways[way].append(accuracy(unit(np.stack(train[way])), train_labels, tests, test_labels))
        print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in ways.items()), file=sys.stderr)
    return {"accuracy": {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v} for k, v in ways.items()},
            "bytes": {k: {"median": int(np.median(v)), "max": int(max(v))} for k, v in sizes.items()}}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def start_daemon(args, tmp: Path, name: str, camera: Path) -> tuple[subprocess.Popen, Path]:
    socket_path = tmp / f"{name}.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "teachcam.edge.cli", "run", "--bundle", args.bundle, "--store", str(tmp / name),
         "--source", f"images:{camera}", "--no-gpio", "--fps", "10"], stdout=subprocess.DEVNULL,
        stderr=open(tmp / f"{name}.log", "w"), env={**os.environ, "TEACHCAM_SOCKET": str(socket_path)})
    for _ in range(600):
        try:
            ControlClient(socket_path).connect().close()
            return proc, socket_path
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"the daemon {name} did not start: " + (tmp / f"{name}.log").read_text()[-2000:])


def capacity(args, store: Path, tmp: Path) -> dict:
    """Frames/s of the real Daemon (unpaced, demo frames, in this process) with the joiner's store vs an empty one,
    alternating rounds; the ratio of the medians."""
    from daemon import background_daemon, demo_frames  # scripts/bench/daemon.py

    empty = tmp / "empty-store"
    Teacher.open(empty, Embedder.create(load_bundle(args.bundle), "int8")).close()
    frames, rounds = demo_frames(200, (342, 256)), {"empty": [], "fleet": []}
    for r in range(args.rounds):
        for name, folder in (("empty", empty), ("fleet", store)):
            with background_daemon(args.bundle, folder, frames, 2, tmp / f"cap{r}{name}.sock") as daemon:
                time.sleep(1.5)  # the index built, caches warm
                frames0, started = daemon.stats.frames, time.perf_counter()
                time.sleep(args.seconds)
                rounds[name].append((daemon.stats.frames - frames0) / (time.perf_counter() - started))
    empty_fps, fleet_fps = float(np.median(rounds["empty"])), float(np.median(rounds["fleet"]))
    return {"empty": round(empty_fps, 1), "fleet": round(fleet_fps, 1), "ratio": round(fleet_fps / empty_fps, 3),
            "rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()}}


def joining_part(args, embedder, preprocess, fingerprint: str, tmp: Path) -> dict:
    objects, backgrounds, clutter = scenery()
    rng = np.random.default_rng(7)
    pool = []  # real thumbnails and embeddings: 10 classes (5 objects, each at two sizes)
    for k in range(args.pool):
        label = list(OBJECTS)[k % 5]
        thumb = preprocess(compose(rng, objects, backgrounds, clutter, label, 0.2 if k % 10 < 5 else 0.4, WHOLE))
        pool.append((f"{label}-{'near' if k % 10 >= 5 else 'far'}", thumb, embedder.embed(thumb)))
    camera = tmp / "camera"
    camera.mkdir()
    Image.fromarray(compose(rng, objects, backgrounds, clutter, "cat", 0.3, WHOLE)).save(camera / "a.jpg")

    # the fleet: N devices x M examples, retained (as their bridges publish them)
    import paho.mqtt.client as paho

    # Mosquitto drops what a subscriber has not taken beyond max_queued_messages (1,000 by default, QoS 0 too): a
    # fleet's broker must hold the whole replay for a joining Pi (docs/mqtt.md); --default-queue measures without
    broker, port = start_broker(tmp / "broker", "" if args.default_queue else "max_queued_messages 20000\n")
    try:
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-fleet")
        client.connect("127.0.0.1", port)
        client.loop_start()
        started, sizes, infos = time.monotonic(), [], []
        for d in range(args.devices):
            for e in range(args.examples):
                label, thumb, embedding = pool[(d * 7 + e) % len(pool)]
                noisy = embedding + rng.normal(0, 0.02 * float(np.abs(embedding).mean()), embedding.shape)
                payload = message(thumb, noisy, d * 100_000 + e, f"pi-{d:03d}", label, fingerprint)
                sizes.append(len(payload))
                topic = fl.example_topic("bench", f"pi-{d:03d}", json_id(payload))
                infos.append(client.publish(topic, payload, qos=1, retain=True))
            for info in infos:
                info.wait_for_publish(60)
            infos = []
        published_s = time.monotonic() - started
        client.loop_stop()
        client.disconnect()
        time.sleep(2.0)
        broker_rss = rss_mb(broker.pid)
        total = args.devices * args.examples
        classes = len({p[0] for p in pool})
        expected = min(total, classes * args.cap)
        print(f"  {total} examples published in {published_s:.1f} s; broker RSS {broker_rss:.0f} MB", file=sys.stderr)

        daemon, socket_path = start_daemon(args, tmp, "joiner", camera)
        rss_before = rss_mb(daemon.pid)
        started = time.monotonic()
        late = bridge(port, "joiner", socket_path, tmp / "bridge.log", "--fleet-group", "bench")
        count, peak_rss, filled_s = 0, rss_before, None
        log = tmp / "bridge.log"
        try:
            with ControlClient(socket_path) as c:
                while time.monotonic() - started < args.timeout:  # until the bridge says the replay is taken in
                    count = sum(c.request("status")["classes"].values())
                    peak_rss = max(peak_rss, rss_mb(daemon.pid))
                    if filled_s is None and count >= expected:
                        filled_s = time.monotonic() - started
                    if log.exists() and "caught up" in log.read_text():
                        break
                    time.sleep(0.25)
            catch_up_s = time.monotonic() - started
            count = sum(ControlClient(socket_path).connect().request("status")["classes"].values())
            out = {"devices": args.devices, "examples_per_device": args.examples, "published": total,
                   "classes": classes, "expected_in_store": expected, "in_store": count,
                   "caught_up": count >= expected, "catch_up_s": round(catch_up_s, 1),
                   "store_filled_s": round(filled_s, 1) if filled_s is not None else None,
                   "bytes_per_example": {"median": int(np.median(sizes)), "max": int(max(sizes))},
                   "broker_rss_mb": round(broker_rss, 1), "daemon_rss_mb": {"empty": round(rss_before, 1),
                                                                         "peak": round(peak_rss, 1)},
                   "store_mb": round(folder_mb(tmp / "joiner"), 1)}
        finally:
            stop(late)
            stop(daemon)
            if log.exists():
                shutil.copy(log, Path(tempfile.gettempdir()) / "fleet-bench-bridge.log")  # for a look afterwards
        out["capacity_fps"] = capacity(args, tmp / "joiner", tmp)
        return out
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--examples", type=int, default=100, help="examples each simulated device publishes")
    parser.add_argument("--pool", type=int, default=100, help="distinct composed scenes the devices' examples use")
    parser.add_argument("--cap", type=int, default=200, help="the joining daemon's knn.cap (its default)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured seconds per capacity round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating capacity rounds (empty store, fleet's)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on the catch-up after this long")
    parser.add_argument("--default-queue", action="store_true",
                        help="Mosquitto's default max_queued_messages (1000): a joining Pi misses most of the replay")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-join", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    embedder, preprocess = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    if not args.skip_accuracy:
        print("accuracy…", file=sys.stderr)
        out["accuracy"] = accuracy_part(args, embedder, preprocess)
    if not args.skip_join:
        if not Path(MOSQUITTO).exists():
            print("scripts/bench/fleet.py needs mosquitto: apt-get install mosquitto", file=sys.stderr)
            return 2
        print("a Pi joining the fleet late…", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            out["join"] = joining_part(args, embedder, preprocess, embedder.fingerprint, Path(tmp))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"fleet — {out['machine']}")
    if "accuracy" in out:
        a, b = out["accuracy"]["accuracy"], out["accuracy"]["bytes"]
        print(f"  one example on the wire: format 1 {b['v1']['median']:,} B (max {b['v1']['max']:,}), format 2 "
              f"{b['v2']['median']:,} B (max {b['v2']['max']:,}; budget {fl.WIRE_BUDGET:,})")
        print(f"  5-shot accuracy, 5 classes, {args.seeds} seeds (mean ± std):")
        for way, r in a.items():
            print(f"    {way:<15} {r['mean']:.3f} ± {r['std']:.3f}")
    if "join" in out:
        j = out["join"]
        print(f"  {j['devices']} devices x {j['examples_per_device']} examples ({j['published']} messages, "
              f"{j['bytes_per_example']['median']:,} B each): broker RSS {j['broker_rss_mb']} MB")
        print(f"  a Pi joining late: caught up on all {j['published']} in {j['catch_up_s']} s (its store full at "
              f"{j['store_filled_s']} s): {j['in_store']}/{j['expected_in_store']} examples kept (cap "
              f"{args.cap} per class, {j['classes']} classes); daemon RSS "
              f"{j['daemon_rss_mb']['empty']} → {j['daemon_rss_mb']['peak']} MB (peak); store {j['store_mb']} MB; "
              f"frames/s {j['capacity_fps']['fleet']} vs {j['capacity_fps']['empty']} with an empty store "
              f"({j['capacity_fps']['ratio']}×, {args.rounds} alternating rounds: {j['capacity_fps']['rounds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
