#!/usr/bin/env python3
"""What change-gated inference saves: the daemon's CPU on a still scene and on a busy one, gate on vs off.

The real Daemon at the camera's 30 frames/s pacing, on 342x256 frames held in memory (what
picamera2's ISP delivers at no CPU cost): a *still* scene (one photo, a fresh sensor noise on every
frame) and a *busy* one (the demo camera's moving framing). For each, gate on (the default) and
off, in alternating rounds; the daemon process's CPU seconds per minute of wall time
(``time.process_time``: every thread), frames handled per second, and model runs. Then the reaction
time: a still scene that changes to another object, in frames from the change to the new label.

Targets (issue #15): still scene ≤ 0.2× the CPU of gate off; busy scene ≥ 0.95× the frames/s of
gate off; reaction no more than one frame later.

Usage: scripts/bench/frugal.py [--bundle build/default-bundle] [--seconds 10] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `teachcam` itself does
import numpy as np

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import ArraySource
from teachcam.edge.devices.scenes import DemoSource
from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.teaching.teacher import Teacher

SIZE = (342, 256)


def demo_frames(n: int, start: int = 0) -> list[np.ndarray]:
    source = DemoSource(fps=30, size=SIZE)
    source.open()
    return [source.read() for _ in range(start + n)][start:]


def noisy(frame: np.ndarray, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(frame + rng.normal(0, 5, frame.shape), 0, 255).astype(np.uint8) for _ in range(n)]


def teach(bundle_path: str, store: Path, frames: dict[str, np.ndarray]) -> None:
    bundle = load_bundle(bundle_path)
    embedder, pre = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    with Teacher.open(store, embedder) as teacher:
        for label, frame in frames.items():
            teacher.add(label, embedder.embed(pre(frame)), pre(frame), source="bench")


def run(bundle_path: str, store: Path, frames: list[np.ndarray], gate: float, seconds: float) -> dict:
    config = load_config(None, {"bundle": bundle_path, "store": str(store), "classes": ["cat", "coffee", "rocket"],
                                "frames": int(30 * seconds), "camera": {"fps": 30.0, "gate": gate},
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "on"}, "control": {"enabled": False}})
    daemon = Daemon(config, source=ArraySource(frames, loop=True), keyboard=False, stdout=io.StringIO()).start()
    cpu, wall = time.process_time(), time.perf_counter()
    daemon.run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {"cpu_s_per_min": 60 * cpu / wall, "fps": daemon.stats.frames / wall, **daemon.gate.counts()}
    daemon.close()
    return result


def reaction(bundle_path: str, store: Path, before: np.ndarray, after: np.ndarray, gate: float) -> int:
    """Frames from the first frame of the new object to the first view that names it."""
    frames = noisy(before, 60, 1) + noisy(after, 30, 2)
    config = load_config(None, {"bundle": bundle_path, "store": str(store), "classes": ["cat", "coffee", "rocket"],
                                "smoothing": 1, "frames": len(frames), "camera": {"fps": 0.0, "gate": gate},
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "off"}, "control": {"enabled": False}})
    daemon = Daemon(config, source=ArraySource(frames), keyboard=False, stdout=io.StringIO()).start()
    seen, step = [], daemon.step
    daemon.step = lambda *a, **k: seen.append(step(*a, **k)) or seen[-1]
    daemon.run()
    daemon.close()
    return next(v.frame for v in seen if v.raw_label == "coffee" and v.frame > 60) - 61


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    busy = demo_frames(300)  # the demo's hand-held camera: the framing wanders, the light drifts
    cat_still, coffee_still = busy[20], demo_frames(1, start=200)[0]
    still = noisy(cat_still, 60, 0)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        teach(args.bundle, store, {"cat": busy[10], "coffee": demo_frames(1, start=190)[0], "rocket": busy[-1]})
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}…", file=sys.stderr)
            row = {}
            for scene, frames in (("still", still), ("busy", busy)):
                for gate in (0.0, 3.0):
                    row[f"{scene}_{'on' if gate else 'off'}"] = run(args.bundle, store, frames, gate, args.seconds)
            row["still_cpu_ratio"] = row["still_on"]["cpu_s_per_min"] / row["still_off"]["cpu_s_per_min"]
            row["busy_cpu_ratio"] = row["busy_on"]["cpu_s_per_min"] / row["busy_off"]["cpu_s_per_min"]
            row["busy_fps_ratio"] = row["busy_on"]["fps"] / row["busy_off"]["fps"]
            rounds.append(row)
        react = {"off": reaction(args.bundle, store, cat_still, coffee_still, 0.0),
                 "on": reaction(args.bundle, store, cat_still, coffee_still, 3.0)}
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "seconds": args.seconds, "rounds": rounds, "reaction_frames": react,
           **{k: float(np.median([r[k] for r in rounds])) for k in ("still_cpu_ratio", "busy_cpu_ratio",
                                                                     "busy_fps_ratio")}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"change-gated inference — {out['machine']}, 342x256 frames at 30 frames/s, {args.seconds:g} s per run, "
          f"median of {args.rounds} alternating rounds")
    for r in rounds:
        print("  " + " | ".join(f"{k} {v['cpu_s_per_min']:5.1f} CPU s/min {v['fps']:4.1f} fps "
                                f"({v['embedded']} model runs, {v['gated']} gated)"
                                for k, v in r.items() if isinstance(v, dict)))
    print(f"  still scene: gate on uses {out['still_cpu_ratio']:.3f}× the CPU of gate off (target ≤ 0.2)")
    print(f"  busy scene:  gate on {out['busy_fps_ratio']:.3f}× the frames/s of gate off (target ≥ 0.95), "
          f"{out['busy_cpu_ratio']:.3f}× the CPU")
    print(f"  reaction to a new object: {react['on']} frame(s) after it appears with the gate, {react['off']} without")
    return 0


if __name__ == "__main__":
    sys.exit(main())
