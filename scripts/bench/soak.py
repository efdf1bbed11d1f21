#!/usr/bin/env python3
"""Does the daemon hold more the longer it is taught? Resident memory per example, file descriptors, errors (#23).

A real `teachcam run` (the demo camera at 30 frames/s, a control socket in a temporary folder) is taught one
example at a time through its control socket — what `teachcam enroll` and the web page send: a JPEG, `enroll_image`
— while a preview-frame subscriber reads as the page's live view does, and every ``--undo-every``-th example is
undone (what MQTT's undo button sends). The daemon's resident memory (VmRSS) is sampled after each example; the
figure is the slope of a straight line fitted to memory against examples held, after the first ``--warmup``
(imports, first index, caches: once per process). The daemon holds ~12 KB per example by design (its embedding
twice, in the store's generation and the KNN index); the target is <= 50 KB.

Usage: scripts/bench/soak.py [--bundle build/default-bundle] [--examples 300] [--undo-every 10] [--pace 0]
                             [--json]
       (the daemon is `python -m teachcam.edge.cli run` with this interpreter and PYTHONPATH: point PYTHONPATH at
       another checkout to measure it in the same way)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from teachcam.edge.devices.scenes import DemoSource
from teachcam.edge.errors import TeachcamError
from teachcam.edge.link.client import ControlClient
from teachcam.edge.tools.bench import rss_mb


def pictures(n: int, seed: int = 0) -> list[str]:
    """``n`` different JPEGs (base64) of the demo's scenes, each with its own noise, as a phone would send."""
    source = DemoSource(fps=30, size=(640, 480))
    source.open()
    frames = [source.read() for _ in range(240)]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        frame = np.clip(frames[(i * 37) % len(frames)].astype(np.int16) + rng.integers(-12, 13, frames[0].shape), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(frame.astype(np.uint8)).save(buffer, format="JPEG", quality=88)
        out.append(base64.b64encode(buffer.getvalue()).decode())
    return out


def watch(socket: Path, stop: threading.Event, counts: dict) -> None:
    """A preview-frame and event subscriber that reads everything, like the page's live view."""
    try:
        client = ControlClient(socket, timeout=None).connect()
        client.request("subscribe", events=True, frames=True)
        for message in client.messages():
            counts["frames" if "frame" in message else "events"] += 1
            if stop.is_set():
                break
        client.close()
    except (TeachcamError, OSError, ValueError):
        pass


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--examples", type=int, default=300, help="examples to teach (default 300)")
    parser.add_argument("--undo-every", type=int, default=10, help="undo every n-th example (0: never)")
    parser.add_argument("--pace", type=float, default=0.0,
                        help="seconds between examples (default 0; 8 makes the 40-minute soak of #23)")
    parser.add_argument("--warmup", type=int, default=30, help="examples left out of the slope (default 30)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    images = pictures(args.examples)
    with tempfile.TemporaryDirectory() as tmp:
        socket, config = Path(tmp) / "control.sock", Path(tmp) / "teachcam.toml"
        config.write_text(f'classes = ["cat", "coffee", "rocket"]\n[knn]\ncap = {args.examples}\n'
                          f'[control]\nsocket = "{socket}"\n')
        log = Path(tmp) / "daemon.log"
        with open(log, "w") as stderr:  # the daemon keeps its own copy of the descriptor
            daemon = subprocess.Popen([sys.executable, "-m", "teachcam.edge.cli", "run", "-c", str(config), "--bundle",
                                       args.bundle, "--store", str(Path(tmp) / "store"), "--source", "demo",
                                       "--no-gpio", "--json"], stdout=subprocess.DEVNULL, stderr=stderr,
                                      stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not socket.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print(f"soak: the daemon did not start: {log.read_text()[-400:]}", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            client = ControlClient(socket, timeout=30).connect()
            stop, seen = threading.Event(), {"frames": 0, "events": 0}
            viewer = threading.Thread(target=watch, args=(socket, stop, seen), daemon=True)
            viewer.start()
            time.sleep(2.0)
            start = {"rss_mb": rss_mb(daemon.pid), "fds": fds(daemon.pid)}
            held, samples, errors, started = 0, [], 0, time.monotonic()
            for i, image in enumerate(images):
                try:
                    client.request("enroll_image", label=("cat", "coffee", "rocket")[i % 3], image=image,
                                   name=f"soak{i}.jpg")
                    held += 1
                    if args.undo_every and (i + 1) % args.undo_every == 0:
                        client.request("undo")
                        held -= 1
                except TeachcamError as exc:
                    errors += 1
                    print(f"soak: {exc}", file=sys.stderr)
                samples.append((held, rss_mb(daemon.pid)))
                time.sleep(args.pace)
                if not args.json and (i + 1) % 50 == 0:
                    print(f"  {i + 1:4d} taught, {held:4d} held: {samples[-1][1]:6.1f} MB, {fds(daemon.pid)} fds",
                          file=sys.stderr)
            time.sleep(1.0)
            end = {"rss_mb": rss_mb(daemon.pid), "fds": fds(daemon.pid)}
            status = client.request("status")
            client.close()
            stop.set()
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
        journal_errors = [line for line in log.read_text().splitlines() if " ERROR " in line or "Traceback" in line]
    fit = np.array(samples[args.warmup:], float)
    slope_kb = float(np.polyfit(fit[:, 0], fit[:, 1], 1)[0] * 1024) if len(fit) > 2 else float("nan")
    out = {"examples_taught": args.examples, "examples_held": held, "undos": args.examples - held,
           "minutes": round((time.monotonic() - started) / 60, 1), "rss_start_mb": start["rss_mb"],
           "rss_end_mb": end["rss_mb"], "kb_per_example": round(slope_kb, 1),
           "kb_per_example_overall": round((end["rss_mb"] - start["rss_mb"]) * 1024 / max(held, 1), 1),
           "fds_start": start["fds"], "fds_end": end["fds"], "request_errors": errors,
           "journal_errors": len(journal_errors), "preview_frames_read": seen["frames"], "events_read": seen["events"],
           "store_examples": status.get("examples")}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"soak: {args.examples} examples taught one at a time through the control socket, {out['undos']} undone, "
          f"a live-view subscriber reading ({seen['frames']} preview frames), {out['minutes']} min")
    print(f"  resident memory   {out['rss_start_mb']:.1f} MB -> {out['rss_end_mb']:.1f} MB for {held} examples held: "
          f"{out['kb_per_example']:.1f} KB per example (slope after {args.warmup}; target <= 50), "
          f"{out['kb_per_example_overall']:.1f} KB overall")
    print(f"  file descriptors  {out['fds_start']} -> {out['fds_end']}")
    print(f"  errors            {errors} refused requests, {len(journal_errors)} error lines in the daemon's log"
          + (f" (first: {journal_errors[0][:160]})" if journal_errors else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
