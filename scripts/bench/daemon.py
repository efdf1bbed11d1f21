#!/usr/bin/env python3
"""Daemon throughput, start-up time and memory, against the bare int8 embedder on the same frames.

1. bare invoke: the int8 embedder alone, on frames already preprocessed (the interpreter's limit);
2. daemon loop: the real Daemon (capture thread, preprocessing, invoke, KNN over an enrolled store,
   smoothing, outputs) on the same scenes, decoded in memory (a Pi camera's ISP delivers frames
   without CPU cost, so decoding video here would not be a fair stand-in) — at 342x256, the size
   teachcam asks picamera2's ISP for, with a store as buttons fill it (60 examples: 3 classes x 20)
   and with 1,000 examples; and at 640x480, resized on the CPU. Bare and daemon runs alternate
   (--rounds, default 3) and the ratios are medians over rounds: this machine is shared and noisy;
3. daemon on a file: source (MJPEG clip of the same frames): video decoding included;
4. time from process start to the first prediction, and resident memory, of `teachcam run`
   in a fresh process with 1,000 examples enrolled.

With --control: the control socket's cost instead (#11). Alternating rounds of the daemon (342x256,
60 examples) with no client, with three clients subscribed to events and preview frames — one of them
stalled, never reading — and with one preview-frame subscriber; frames/s as ratios to no client, and
the JPEG encode counter (none while nobody subscribes; one per due frame however many subscribe).

With --screen: the attached screen's cost (#16). Alternating rounds of the daemon with no screen and
with the framebuffer screen (1920x1080, 32 bits: a file standing for /dev/fb0, with its sysfs folder),
frames/s as a ratio; and the overlay's redraws per second while the prediction stays the same.

With --region: the focus region's cost (#28). Alternating rounds of the daemon (60 examples) without and with a
region, on 342x256 and 640x480 frames; frames/s as ratios.

Usage: scripts/bench/daemon.py [--bundle build/default-bundle] [--frames 600] [--rounds 3] [--json]
                               [--control | --screen | --region]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `teachcam` itself does (edge/cli.py)
import numpy as np
from PIL import Image

from teachcam.edge.config import load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.devices.camera import ArraySource
from teachcam.edge.devices.scenes import DemoSource
from teachcam.edge.devices.source import Source
from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.model.runtime import default_threads
from teachcam.edge.teaching.teacher import Teacher
from teachcam.edge.tools.bench import rss_mb


def demo_frames(n: int, size=(640, 480)) -> list[np.ndarray]:
    source = DemoSource(fps=30, size=size)
    source.open()
    return [source.read() for _ in range(n)]


@contextmanager
def background_daemon(bundle_path: str, store: Path, frames: list, threads: int, socket_path: Path, *,
                      fps: float = 1000.0, unpaced: bool = True, settings: dict | None = None):
    """The real Daemon on ``frames`` (looped) with its control socket, its loop in a thread; stopped on exit.
    ``unpaced``: frames as fast as the loop takes them, no change gate (throughput); else paced at ``fps``.
    ``settings``: more config (e.g. ``{"inbox": {"enabled": False}}``)."""
    config = load_config(None, {"bundle": bundle_path, "store": str(store), "classes": ["cat", "coffee", "rocket"],
                                "threads": threads, "camera": {"fps": fps, **({"gate": 0.0} if unpaced else {})},
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "on"}, "control": {"socket": str(socket_path)},
                                **(settings or {})})
    daemon = Daemon(config, source=ArraySource(frames, loop=True), keyboard=False, stdout=io.StringIO())
    daemon.start()
    if unpaced:
        daemon.grabber.interval = 0.0
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        loop.join(timeout=10)
        daemon.close()


def enroll(store: Path, bundle_path: str, examples: int) -> None:
    bundle = load_bundle(bundle_path)
    embedder, pre = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    frames = demo_frames(60)
    pixels = [pre(f) for f in frames]
    embeddings = [embedder.embed(p) for p in pixels]
    rng = np.random.default_rng(0)
    with Teacher.open(store, embedder, cap=10**6) as teacher:
        items = []
        for i in range(examples):
            j = int(rng.integers(0, len(pixels)))
            noisy = np.clip(pixels[j].astype(np.int16) + rng.integers(-3, 4, pixels[j].shape), 0, 255).astype(np.uint8)
            items.append((("cat", "coffee", "rocket")[i % 3], embeddings[j] + rng.normal(0, 0.01, embeddings[j].shape),
                          noisy, "bench"))
        teacher.add_many(items)


def daemon_rate(bundle_path: str, store: Path, source: Source, frames: int, threads: int,
                region: list | None = None) -> tuple[float, dict]:
    camera = {"fps": 1000.0, "gate": 0.0, **({"region": region} if region else {})}
    config = load_config(None, {"bundle": bundle_path, "store": str(store), "classes": ["cat", "coffee", "rocket"],
                                "threads": threads, "frames": frames, "camera": camera,
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "on"}, "control": {"enabled": False}})
    daemon = Daemon(config, source=source, keyboard=False, stdout=io.StringIO())
    daemon.start()
    daemon.grabber.interval = 0.0  # frames as fast as the loop takes them (one prefetched)
    started = time.perf_counter()
    daemon.run()
    elapsed = time.perf_counter() - started
    stages = {k: float(np.median(v)) * 1e3 for k, v in daemon.stats.stages.items()}
    done = daemon.stats.frames
    daemon.close()
    return done / elapsed, stages


def drain(client) -> None:
    """Read everything a subscribed client is sent, until the daemon goes away."""
    from teachcam.edge.errors import ControlError

    try:
        for _ in client.messages():
            pass
    except (ControlError, OSError, ValueError):
        pass


def control_rate(bundle_path: str, store: Path, frames: list, threads: int, clients: str, socket_path: Path) -> dict:
    """The daemon with its control socket and ``clients``: "none", "three" (events + frames, one stalled)
    or "preview" (one frame subscriber that reads)."""
    import threading

    from teachcam.edge.link.client import ControlClient

    config = load_config(None, {"bundle": bundle_path, "store": str(store), "classes": ["cat", "coffee", "rocket"],
                                "threads": threads, "frames": len(frames), "camera": {"fps": 1000.0, "gate": 0.0},
                                "buttons": {"enabled": False}, "leds": {"enabled": False},
                                "output": {"terminal": "off", "json": "on"},
                                "control": {"socket": str(socket_path)}})
    daemon = Daemon(config, source=ArraySource(frames), keyboard=False, stdout=io.StringIO())
    daemon.start()
    daemon.grabber.interval = 0.0
    connected = []
    if clients != "none":
        wanted = [("events+frames", True), ("events+frames", True), ("events+frames", False)] if clients == "three" \
            else [("frames", True)]
        for kind, reads in wanted:
            client = ControlClient(socket_path, timeout=None).connect()
            client.request("subscribe", events="events" in kind, frames=True)
            if reads:
                threading.Thread(target=drain, args=(client,), daemon=True).start()
            connected.append(client)  # the third of "three" never reads: it is stalled
    started = time.perf_counter()
    daemon.run()
    elapsed = time.perf_counter() - started
    box = next(b for b in daemon.mailboxes if b.port is daemon.control)
    box.wait_idle(5.0)
    result = {"fps": daemon.stats.frames / elapsed, "jpeg_encodes": daemon.control.jpeg_encodes,
              "frames_sent": daemon.control.frames_sent, "dropped_views": box.dropped_views,
              "seconds": elapsed}
    for client in connected:
        try:
            client.close()
        except OSError:
            pass
    daemon.close()
    return result


def alternating_rounds(args, measure) -> list:
    """``measure(store, folder, round)`` for each of ``args.rounds`` rounds, over one store of 60 examples."""
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store60"
        enroll(store, args.bundle, 60)
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}…", file=sys.stderr)
            rounds.append(measure(store, Path(tmp), r))
    return rounds


def control_main(args) -> int:
    lores_frames = demo_frames(args.frames, (342, 256))

    def measure(store: Path, folder: Path, r: int) -> dict:
        row = {kind: control_rate(args.bundle, store, lores_frames, args.threads, kind, folder / f"c{r}{kind}.sock")
               for kind in ("none", "three", "preview")}
        row["ratio_three"] = row["three"]["fps"] / row["none"]["fps"]
        row["ratio_preview"] = row["preview"]["fps"] / row["none"]["fps"]
        return row

    rounds = alternating_rounds(args, measure)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "frames": args.frames, "rounds": rounds,
           "ratio_three": float(np.median([r["ratio_three"] for r in rounds])),
           "ratio_preview": float(np.median([r["ratio_preview"] for r in rounds]))}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"control socket cost — {out['machine']}, {args.threads} threads, {args.frames} frames of 342x256, "
          f"60 examples, median of {args.rounds} alternating rounds")
    for r in rounds:
        print(f"  no client {r['none']['fps']:6.1f} fps (JPEG encodes {r['none']['jpeg_encodes']}) | "
              f"3 clients, 1 stalled {r['three']['fps']:6.1f} fps ({r['ratio_three']:.3f}×; encodes "
              f"{r['three']['jpeg_encodes']}, frames sent {r['three']['frames_sent']}) | "
              f"1 preview {r['preview']['fps']:6.1f} fps ({r['ratio_preview']:.3f}×; encodes "
              f"{r['preview']['jpeg_encodes']}, {r['preview']['jpeg_encodes'] / r['preview']['seconds']:.1f}/s)")
    print(f"  median: three clients (one stalled) {out['ratio_three']:.3f}× no client (target ≥ 0.95); "
          f"one preview subscriber {out['ratio_preview']:.3f}× (target ≥ 0.9)")
    return 0


SCREEN_FPS = [5.0]  # --screen-fps


def screen_rate(bundle_path: str, store: Path, frames: list, threads: int, folder: Path | None) -> dict:
    """The daemon (gate off: every frame) with the framebuffer screen in ``folder``, or with none."""
    output = {"terminal": "off", "json": "on"}
    if folder is not None:
        output.update(screen=True, screen_device=str(folder / "fb0"), screen_max_fps=SCREEN_FPS[0])
    config = load_config(None, {"bundle": bundle_path, "store": str(store), "classes": ["cat", "coffee", "rocket"],
                                "threads": threads, "frames": len(frames), "camera": {"fps": 1000.0, "gate": 0.0},
                                "buttons": {"enabled": False}, "leds": {"enabled": False}, "output": output,
                                "control": {"enabled": False}})
    import teachcam.edge.devices.screen as screen

    real = screen.Framebuffer.__init__
    if folder is not None:  # the fake framebuffer's sysfs folder sits beside it
        screen.Framebuffer.__init__ = lambda self, device, sysfs=None, max_fps=10.0: real(self, device,
                                                                                         str(folder / "sysfs"), max_fps)
    try:
        daemon = Daemon(config, source=ArraySource(frames), keyboard=False, stdout=io.StringIO())
        daemon.start()
    finally:
        screen.Framebuffer.__init__ = real
    daemon.grabber.interval = 0.0
    started = time.perf_counter()
    daemon.run()
    elapsed = time.perf_counter() - started
    port = next((b.port for b in daemon.mailboxes if b.port.name == "screen"), None)
    result = {"fps": daemon.stats.frames / elapsed, "seconds": elapsed,
              "redraws": port.redraws if port else 0, "written": port.backend.frames_written if port else 0}
    daemon.close()
    return result


class IspRegionSource(ArraySource):
    """A Pi 5 camera with a focus region: the whole lores picture to show and, beside it (``model_view``), the region
    at the lores size as its ISP delivers it — made before the run, as the ISP makes it, at no CPU cost."""

    def __init__(self, frames, region):
        super().__init__(frames)
        h, w = frames[0].shape[:2]
        box = (region[0] * w, region[1] * h, region[2] * w, region[3] * h)
        self.views = [np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR, box=box)) for f in frames]
        self.model_view = None

    def set_region(self, region) -> bool:
        return region is not None

    def read(self):
        frame = super().read()
        self.model_view = None if frame is None else self.views[self.position - 1]
        return frame


def region_main(args) -> int:
    """The focus region's cost (#28): alternating rounds of the daemon with and without a region (45 % x 45 %), for
    a Pi 5 (the region from the ISP at the lores size: ``IspRegionSource``), for 640x480 frames cropped in the
    preprocessing (a webcam, a file; a Pi 4 cuts its region from a 640x480 stream), and for 342x256 frames cropped
    in the preprocessing (no Pi camera takes this path any more; the worst case: a small box scaled up)."""
    region = [0.3, 0.3, 0.75, 0.75]
    lores, full = demo_frames(args.frames, (342, 256)), demo_frames(args.frames)
    cases = {"Pi 5 ISP 342x256": (lambda: ArraySource(lores), lambda: IspRegionSource(lores, region)),
             "640x480 software": (lambda: ArraySource(full), lambda: ArraySource(full)),
             "342x256 software": (lambda: ArraySource(lores), lambda: ArraySource(lores))}
    def measure(store: Path, folder: Path, r: int) -> dict:
        row = {}
        for case, (plain, focused_source) in cases.items():
            whole = daemon_rate(args.bundle, store, plain(), args.frames, args.threads)[0]
            focused = daemon_rate(args.bundle, store, focused_source(), args.frames, args.threads, region)[0]
            row[case] = {"whole": whole, "region": focused, "ratio": focused / whole}
        return row

    rounds = alternating_rounds(args, measure)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "region": region, "rounds": rounds,
           "ratio": {case: float(np.median([r[case]["ratio"] for r in rounds])) for case in cases}}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"focus region cost — {out['machine']}, {args.threads} threads, {args.frames} frames, region {region}, "
          f"median of {args.rounds} alternating rounds")
    for r in rounds:
        print("  " + " | ".join(f"{case}: {v['whole']:5.1f} → {v['region']:5.1f} fps ({v['ratio']:.3f}×)"
                                for case, v in r.items()))
    print("  median: " + ", ".join(f"{case} {ratio:.3f}×" for case, ratio in out["ratio"].items()) + " (target ≥ 0.97)")
    return 0


def screen_main(args) -> int:
    lores_frames = demo_frames(args.frames, (342, 256))
    still = [np.clip(lores_frames[0] + np.random.default_rng(i).normal(0, 5, lores_frames[0].shape), 0, 255)
             .astype(np.uint8) for i in range(args.frames)]
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        store, steady_store = Path(tmp) / "store60", Path(tmp) / "steady"
        enroll(store, args.bundle, 60)
        bundle = load_bundle(args.bundle)
        embedder, pre = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
        with Teacher.open(steady_store, embedder) as teacher:  # the still scene is taught: its label holds
            for label, frame in (("cat", still[0]), ("coffee", lores_frames[len(lores_frames) // 2])):
                teacher.add(label, embedder.embed(pre(frame)), pre(frame), source="bench")
        folder = Path(tmp) / "fb"
        (folder / "sysfs").mkdir(parents=True)
        (folder / "sysfs" / "virtual_size").write_text("1920,1080\n")
        (folder / "sysfs" / "bits_per_pixel").write_text("32\n")
        (folder / "sysfs" / "stride").write_text(f"{1920 * 4}\n")
        (folder / "fb0").write_bytes(bytes(1920 * 4 * 1080))
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}…", file=sys.stderr)
            row = {"off": screen_rate(args.bundle, store, lores_frames, args.threads, None),
                   "on": screen_rate(args.bundle, store, lores_frames, args.threads, folder)}
            row["ratio"] = row["on"]["fps"] / row["off"]["fps"]
            rounds.append(row)
        steady = screen_rate(args.bundle, steady_store, still, args.threads, folder)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rounds": rounds,
           "ratio": float(np.median([r["ratio"] for r in rounds])),
           "steady_redraws_after_first_per_s": (steady["redraws"] - 1) / steady["seconds"], "steady": steady}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"attached screen cost — {out['machine']}, {args.threads} threads, {args.frames} frames of 342x256, "
          f"framebuffer 1920x1080x32 at ≤ {SCREEN_FPS[0]:g} frames/s, median of {args.rounds} alternating rounds")
    for r in rounds:
        print(f"  no screen {r['off']['fps']:6.1f} fps | framebuffer screen {r['on']['fps']:6.1f} fps "
              f"({r['ratio']:.3f}×; {r['on']['written']} screen frames written, {r['on']['redraws']} overlay redraws)")
    print(f"  median: {out['ratio']:.3f}× (target ≥ 0.9); a steady prediction over {steady['seconds']:.1f} s: "
          f"{steady['redraws']} overlay redraw(s) in all, {out['steady_redraws_after_first_per_s']:.2f}/s after the "
          f"first (target 0)")
    return 0


def startup_and_memory(bundle_path: str, store: Path, folder: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "teachcam.edge.cli", "run", "--bundle", bundle_path, "--store", str(store),
                             "--classes", "cat,coffee,rocket", "--source", f"images:{folder}", "--json", "--no-gpio",
                             "--frames", "1500", "--fps", "60"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env)
    first = proc.stdout.readline()
    to_first = time.perf_counter() - started
    assert first.startswith("{"), first
    samples = []
    while proc.poll() is None:
        try:
            rss = rss_mb(proc.pid)
        except ProcessLookupError:
            break
        if rss is None:
            break
        samples.append(rss)
        time.sleep(0.5)
    proc.communicate()
    return {"first_prediction_s": to_first, "rss_start_mb": samples[0] if samples else 0.0,
            "rss_end_mb": samples[-1] if samples else 0.0, "rss_peak_mb": max(samples) if samples else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--control", action="store_true", help="measure the control socket's cost instead")
    parser.add_argument("--screen", action="store_true", help="measure the attached screen's cost instead")
    parser.add_argument("--region", action="store_true", help="measure the focus region's cost instead")
    parser.add_argument("--screen-fps", type=float, default=5.0,
                        help="with --screen: its frames/s cap (default 5, as teachcam's)")
    args = parser.parse_args()
    if args.control:
        return control_main(args)
    if args.screen:
        SCREEN_FPS[0] = args.screen_fps
        return screen_main(args)
    if args.region:
        return region_main(args)

    frames = demo_frames(args.frames)
    lores_frames = demo_frames(args.frames, (342, 256))  # what picamera2's ISP-scaled lores stream delivers
    bundle = load_bundle(args.bundle)
    pre = Preprocessor.from_manifest(bundle.preprocessing)
    pixels = [pre(f) for f in frames]

    def bare_rate() -> float:
        embedder = Embedder.create(bundle, "int8", num_threads=args.threads)
        for p in pixels[:20]:
            embedder.embed(p)
        started = time.perf_counter()
        for p in pixels:
            embedder.embed(p)
        return len(pixels) / (time.perf_counter() - started)

    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
           "threads": args.threads, "frames": args.frames, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "store60", Path(tmp) / "store1000"
        enroll(small, args.bundle, 60)
        enroll(large, args.bundle, 1000)
        rounds = []
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}…", file=sys.stderr)
            row = {"bare": bare_rate()}
            row["daemon60"], row["stages60"] = daemon_rate(args.bundle, small, ArraySource(lores_frames), args.frames,
                                                           args.threads)
            row["daemon1000"], row["stages1000"] = daemon_rate(args.bundle, large, ArraySource(lores_frames),
                                                               args.frames, args.threads)
            row["bare_after"] = bare_rate()
            reference = (row["bare"] + row["bare_after"]) / 2
            row["ratio60"], row["ratio1000"] = row["daemon60"] / reference, row["daemon1000"] / reference
            rounds.append(row)
        out["rounds_detail"] = rounds
        out["bare_invoke_fps"] = float(np.median([(r["bare"] + r["bare_after"]) / 2 for r in rounds]))
        for key in ("daemon60", "daemon1000", "ratio60", "ratio1000"):
            out[key] = float(np.median([r[key] for r in rounds]))
        middle = sorted(rounds, key=lambda r: r["ratio1000"])[len(rounds) // 2]
        out["stage_ms_60"], out["stage_ms_1000"] = middle["stages60"], middle["stages1000"]
        bare = out["bare_invoke_fps"]
        out["daemon_640_fps"], _ = daemon_rate(args.bundle, large, ArraySource(frames), args.frames, args.threads)
        import cv2

        clip = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        writer.release()
        from teachcam.edge.devices.camera import OpenCVSource

        out["daemon_file_fps"], _ = daemon_rate(args.bundle, large, OpenCVSource(str(clip), loop=False), args.frames,
                                                args.threads)
        folder = Path(tmp) / "images"
        folder.mkdir()
        from PIL import Image

        for i, f in enumerate(frames[:60]):
            Image.fromarray(f).save(folder / f"{i:03d}.jpg", quality=90)
        out.update(startup_and_memory(args.bundle, large, folder))
    out["ratio_640_to_bare"] = out["daemon_640_fps"] / bare
    out["ratio_file_to_bare"] = out["daemon_file_fps"] / bare
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"teachcam daemon vs bare int8 invoke — {out['machine']}, Python {out['python']}, {args.threads} "
          f"interpreter threads, {args.frames} frames per run, median of {args.rounds} alternating rounds")
    print(f"  bare int8 invoke (preprocessed frames)        {bare:7.1f} frames/s")
    print(f"  daemon, 342x256 in memory,    60 examples     {out['daemon60']:7.1f} frames/s   "
          f"({out['ratio60']:.2f}× bare)   <- picamera2's ISP-scaled lores stream, a store taught by buttons")
    print(f"  daemon, 342x256 in memory, 1,000 examples     {out['daemon1000']:7.1f} frames/s   ({out['ratio1000']:.2f}× bare)")
    print("     per round (60 / 1,000 examples): " + ", ".join(f"{r['ratio60']:.2f} / {r['ratio1000']:.2f}"
                                                             for r in out["rounds_detail"]))
    print(f"  daemon, 640x480 in memory, 1,000 examples     {out['daemon_640_fps']:7.1f} frames/s   "
          f"({out['ratio_640_to_bare']:.2f}× bare)   (resize on the CPU)")
    print(f"  daemon, file: source (MJPEG decode), 1,000    {out['daemon_file_fps']:7.1f} frames/s   "
          f"({out['ratio_file_to_bare']:.2f}× bare)")
    for n in ("60", "1000"):
        print(f"  daemon stages, {n} examples (median ms): "
              + ", ".join(f"{k} {v:.3f}" for k, v in out[f"stage_ms_{n}"].items()))
    print(f"  process start → first prediction        {out['first_prediction_s']:7.2f} s")
    print(f"  resident memory (teachcam run)          {out['rss_start_mb']:.0f} MB at start, "
          f"{out['rss_end_mb']:.0f} MB at end, {out['rss_peak_mb']:.0f} MB peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
