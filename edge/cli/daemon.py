"""CLI handlers for the daemon: ``run`` (the service) and ``demo`` (the live demo on any machine)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from teachcam.edge.cli.common import DEFAULT_BUNDLE
from teachcam.edge.daemon import MODES
from teachcam.edge.errors import TeachcamError
from teachcam.edge.model.runtime import PRECISIONS

log = logging.getLogger("teachcam")


def _flag_overrides(args) -> dict:
    """CLI flags as dotted config keys (only the ones given)."""
    mapping = {"bundle": "bundle", "store": "store", "mode": "mode", "precision": "precision", "threads": "threads",
               "source": "camera.source", "fps": "camera.fps", "frames": "frames", "smoothing": "smoothing",
               "k": "knn.k", "threshold": "knn.threshold", "region": "camera.region"}
    out = {}
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = str(value) if isinstance(value, Path) else value
    if getattr(args, "classes", None):
        out["classes"] = [c.strip() for c in args.classes.split(",")]
    if getattr(args, "no_loop", False):
        out["camera.loop"] = False
    if getattr(args, "no_gpio", False):
        out["buttons.enabled"] = False
        out["leds.enabled"] = False
    if getattr(args, "json", False):
        out["output.json"] = "on"
        out["output.terminal"] = "off"
    if getattr(args, "preview", False):
        out["output.preview"] = True
    if getattr(args, "screen", False):
        out["output.screen"] = True
    return out


def register(sub) -> None:
    def common(p):
        p.add_argument("-b", "--bundle", type=Path, default=None, help="bundle folder (overrides the config)")
        p.add_argument("--precision", default=None, choices=PRECISIONS)
        p.add_argument("--threads", type=int, default=None, help="interpreter threads")
        p.add_argument("--fps", type=float, default=None, help="camera frame rate to ask for (default 30)")

    p = sub.add_parser("run", help="(device) the daemon: camera in, buttons to teach, LEDs/display/stdout out",
                       description="Run until stopped. Every option can be set in the TOML config "
                                   "(see systemd/teachcam.toml) and overridden by a flag. SIGTERM/SIGINT stop cleanly; "
                                   "SIGHUP reloads the config and the bundle, keeping enrollments.")
    p.add_argument("-c", "--config", type=Path, default=None, help="TOML config file")
    common(p)
    p.add_argument("-s", "--store", type=Path, default=None, help="enrollment store folder")
    p.add_argument("--source", default=None,
                   help="camera: picamera2, opencv:N, file:PATH, images:DIR_OR_GLOB or demo (default: demo)")
    p.add_argument("--no-loop", action="store_true", help="stop at the end of a file: or images: source")
    p.add_argument("--region", type=_region, default=None, metavar="X0,Y0,X1,Y1",
                   help="focus region: the part of the picture the model looks at, as fractions of the whole "
                        "(0.25,0.25,0.75,0.75: the middle); a region set from the page or `teachcam region` wins")
    p.add_argument("--mode", default=None, choices=MODES, help="what classifies (default knn)")
    p.add_argument("--classes", default=None, help="comma-separated class names, one per button (default one,two,...)")
    p.add_argument("--k", type=int, default=None, help="KNN neighbours per class")
    p.add_argument("--threshold", type=float, default=None, help="KNN similarity below which it says unknown")
    p.add_argument("--smoothing", type=int, default=None, help="vote window in frames (1 = off)")
    p.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--no-gpio", action="store_true", help="no buttons or LEDs, even on a Pi (keys still work on a TTY)")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout even on a terminal")
    p.add_argument("--preview", action="store_true", help="a preview window (OpenCV with a GUI only)")
    p.add_argument("--screen", action="store_true",
                   help="the attached HDMI/DSI screen: the camera picture with the prediction over it, no desktop "
                        "needed (picamera2's DRM preview for the Pi camera, else the framebuffer /dev/fb0)")

    p = sub.add_parser("doctor", help="(device) check camera, GPIO, runtime, Edge TPU, bundle, store and permissions",
                       description="Check everything `teachcam run` needs, with the same config, and say how to fix "
                                   "what is wrong. Exit 1 if anything would stop the daemon.")
    p.add_argument("-c", "--config", type=Path, default=None, help="TOML config file (default: built-in defaults)")
    p.add_argument("-b", "--bundle", type=Path, default=None)
    p.add_argument("-s", "--store", type=Path, default=None)
    p.add_argument("--source", default=None, help="camera spec to test")
    p.add_argument("--no-camera", action="store_true", help="do not open the camera (e.g. while the service runs)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="(device) per-stage timings, frames/s, runtime, threads, model size, memory",
                       description="Run the real daemon (no outputs, no GPIO) on a camera source and report, for this "
                                   "machine: per-stage p50/p95 (capture, preprocess, invoke, classify, output), "
                                   "end-to-end frames per second, interpreter and delegate, threads, model size and "
                                   "resident memory. On a Pi with a Coral and a compiled bundle, the Edge TPU numbers.")
    p.add_argument("-b", "--bundle", type=Path, default=None)
    p.add_argument("--source", default="demo", help="camera spec (default: demo)")
    p.add_argument("--frames", type=int, default=300, help="frames to measure (after 20 warm-up frames)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--mode", default="knn", choices=MODES)
    p.add_argument("-s", "--store", type=Path, default=None, help="an enrollment store to classify against")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="the live demo on any machine: teach three objects by (mock) buttons, then recognise",
                       description="A synthetic camera films sample photos with jitter, lighting drift and noise; "
                                   "scripted presses on gpiozero mock pins teach three objects; the daemon then "
                                   "recognises them (and an untaught scene as unknown). Prints what a person would "
                                   "see, then the accuracy and frame rate. Needs no hardware. With --web: the "
                                   "teaching page instead, on this machine, against the demo camera (prints its URL).")
    common(p)
    p.add_argument("--web", action="store_true", help="serve the teaching page against the demo camera until Ctrl-C")
    p.add_argument("--port", type=int, default=8080, help="with --web: the page's port on 127.0.0.1 (default 8080)")

    p = sub.add_parser("status", help="(device) what the running daemon is doing: camera, fps, classes, uptime",
                       description="Ask the running daemon, through its control socket ($TEACHCAM_SOCKET, "
                                   "/run/teachcam/control.sock under systemd, else $XDG_RUNTIME_DIR/teachcam): "
                                   "camera, mode, frames/s, inference ms, classes and counts, Edge TPU or CPU, "
                                   "uptime. Exit 1 when no daemon answers.")
    p.add_argument("--json", action="store_true", help="print the daemon's status as JSON")

    p = sub.add_parser("region", help="(device) the focus region: the part of the picture the model looks at",
                       description="Show or set the running daemon's focus region: fractions X0,Y0,X1,Y1 of the whole "
                                   "picture (0,0 top left). The model then sees only that part, at its full input "
                                   "resolution. Applied at once and kept through restarts; examples taken with "
                                   "another region are counted (keep them, or delete and re-take them).")
    p.add_argument("region", nargs="?", type=_region, default=None, metavar="X0,Y0,X1,Y1",
                   help="the new region (omit to show the current one)")
    p.add_argument("--whole", action="store_true", help="look at the whole picture again")
    p.add_argument("--reset", action="store_true", help="back to the config's [camera] region")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = sub.add_parser("watch", help="(device) live events from the running daemon (predictions, enrollments …)",
                       description="Print the running daemon's events as they happen, until Ctrl-C: shown class "
                                   "changes, enrollments, undo, renames, camera trouble, periodic stats.")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as the daemon sends them")
    p.add_argument("--count", type=int, default=None, help="stop after this many events")


def cmd_run(args) -> int:
    from teachcam.edge.config import load_config
    from teachcam.edge.daemon.loop import Daemon

    config = load_config(args.config, _flag_overrides(args))
    daemon = Daemon(config, config_path=args.config)
    daemon.install_signal_handlers()
    try:
        daemon.start()
        # One line on stderr (the journal under systemd) saying what runs and how to teach it.
        kernels = {"xnnpack": "XNNPACK", "edgetpu": "Edge TPU", "reference": "reference kernels, no XNNPACK"}
        model = f"{daemon.embedder.variant} ({kernels.get(daemon.embedder.kernels, daemon.embedder.kernels)})"
        if daemon.teacher is not None:
            what = f"{model} embedder, {len(daemon.teacher)} enrolled examples"
        else:
            what = f"{model} standalone classifier {daemon.head.name!r}"
        print(f"teachcam: running — camera {config.camera.source}, mode {config.mode}, {what}; {daemon.controls_hint}",
              file=sys.stderr, flush=True)
        code = daemon.run()
    finally:
        daemon.close()
    return code


def cmd_demo(args) -> int:
    from teachcam.edge.config import load_config
    from teachcam.edge.tools.demo import run_demo

    overrides = _flag_overrides(args)
    overrides.setdefault("bundle", str(DEFAULT_BUNDLE))
    config = load_config(None, overrides)
    if not (Path(config.bundle) / "manifest.json").is_file():
        raise TeachcamError(f"no bundle at {config.bundle}: run ./scripts/demo (it builds one), or "
                            f"`teachcam convert --out {config.bundle}`")
    if args.web:
        from teachcam.edge.tools.demo import run_web_demo

        return run_web_demo(config, port=args.port, stream=sys.stdout)
    figures = run_demo(config, stream=sys.stdout)
    return 0 if figures["frames"] > 0 else 1


def cmd_doctor(args) -> int:
    import json

    from teachcam.edge.config import load_config
    from teachcam.edge.tools.doctor import as_json, run_checks

    overrides = {k: v for k, v in _flag_overrides(args).items() if k in ("bundle", "store", "camera.source")}
    config = load_config(args.config, overrides)
    checks = run_checks(config, camera=not args.no_camera)
    if args.json:
        print(json.dumps(as_json(checks), indent=2))
    else:
        marks = {"ok": "✓", "warn": "!", "fail": "✗"}
        for check in checks:
            print(f"{marks[check.status]} {check.name:<12} {check.detail}")
            if check.fix:
                print(f"  {'':<12} fix: {check.fix}")
    return 1 if any(c.status == "fail" for c in checks) else 0


def cmd_bench(args) -> int:
    import json

    from teachcam.edge.tools.bench import bench_config, format_report, run_bench

    config = bench_config(str(args.bundle or DEFAULT_BUNDLE), args.source, args.threads, args.mode,
                          str(args.store) if args.store else None)
    result = run_bench(config, args.frames)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def _region(text: str) -> list[float]:
    """``--region`` / ``teachcam region``'s argument, checked (argparse turns the ValueError into one line)."""
    from teachcam.edge.region import check_region

    try:
        region = check_region(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if region is None:
        raise argparse.ArgumentTypeError("give four numbers X0,Y0,X1,Y1 (or --whole for the whole picture)")
    return list(region)


def cmd_region(args) -> int:
    from teachcam.edge.link.client import ControlClient

    with ControlClient() as client:
        if args.reset:
            result = client.request("set_region", reset=True)
        elif args.whole or args.region is not None:
            result = client.request("set_region", region=None if args.whole else args.region)
        else:
            result = {"region": client.request("status").get("region")}
    if args.json:
        print(json.dumps(result))
        return 0
    region = result["region"]
    print("focus region: " + ("the whole picture" if not region else
                              f"{region[0]:g},{region[1]:g} to {region[2]:g},{region[3]:g} "
                              f"({(region[2] - region[0]) * (region[3] - region[1]):.0%} of the picture)"))
    if result.get("other_region"):
        print(f"{result['other_region']} example(s) were taken with another region: keep them, or delete and "
              "re-take them (the page's All examples, or `teachcam store`)")
    return 0


def cmd_status(args) -> int:
    from teachcam.edge.link.client import ControlClient

    with ControlClient() as client:
        status = client.request("status")
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return 0
    camera = "ok" if status["camera_ok"] else f"TROUBLE: {status['camera_error']}"
    runs_on = {"edgetpu": "Edge TPU", "xnnpack": "CPU (XNNPACK)"}.get(status["kernels"], "CPU (reference kernels)")
    hours, rest = divmod(int(status["uptime_s"]), 3600)
    print(f"camera    {status['camera']} — {camera}{'  (paused)' if status['paused'] else ''}; "
          f"delivers {status.get('camera_fps', 0.0):.1f} frames/s")
    print(f"model     {status['model']} on {runs_on}, {status['runtime']}; mode {status['mode']}")
    print(f"speed     the model could classify {status.get('model_fps', status['fps']):.1f} frames/s "
          f"(inference {status['inference_ms']:.1f} ms); {status['frames']} frames in "
          f"{hours}:{rest // 60:02d}:{rest % 60:02d}")
    print(f"showing   {status['shown']}")
    print(f"store     {status['store']}: {status['examples']} example(s)")
    if status.get("inbox"):
        print(f"inbox     {status['inbox']} moment(s) it was unsure about, to label: teachcam inbox")
    for label, count in status["classes"].items():
        print(f"  {count:5d}  {label}")
    return 0


def cmd_watch(args) -> int:
    from teachcam.edge.link.client import ControlClient

    with ControlClient(timeout=None) as client:
        client.request("subscribe", events=True, frames=False)
        seen = 0
        try:
            for message in client.messages():
                if "event" not in message:
                    continue
                print(json.dumps(message, ensure_ascii=False) if args.json else _describe(message), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def _describe(message: dict) -> str:
    """One line for a person: the typed event (link.protocol.event_from_json), matched on its type."""
    from teachcam.edge import messages as m
    from teachcam.edge.link.protocol import event_from_json

    event = event_from_json(message)
    when = time.strftime("%H:%M:%S", time.localtime(message.get("time", time.time())))
    if isinstance(event, m.PredictionChanged):
        text = f"now {event.label} (similarity {event.score:.2f})"
    elif isinstance(event, m.Enrolled):
        text = f"enrolled an example of {event.label} ({event.count} now, via {event.via})"
    elif isinstance(event, m.Stats):
        text = (f"camera {event.camera_fps:.1f} frames/s, model capacity {event.model_fps or event.fps:.1f} frames/s "
                f"(inference {event.inference_ms:.1f} ms), {event.examples} examples")
    elif isinstance(event, m.InboxChanged):
        what = (f"kept a moment to label ({event.reason})" if event.added else
                f"labelled {event.removed} as {event.label}" if event.label else f"discarded {event.removed}")
        text = f"inbox: {what}; {event.count} to label"
    else:  # every other kind (and a newer daemon's) as its fields
        fields = {k: v for k, v in message.items() if k not in ("event", "time")}
        text = f"{message.get('event')} {json.dumps(fields, ensure_ascii=False)}"
    return f"{when}  {text}"


COMMANDS = {"region": cmd_region,
            "status": cmd_status, "watch": cmd_watch, "run": cmd_run, "demo": cmd_demo, "doctor": cmd_doctor, "bench": cmd_bench}
