"""``teachcam bench``: what this machine does per frame, stage by stage, with the real daemon.

Runs the daemon (no outputs, no GPIO) on a camera source for N frames, then reports per-stage
times (p50/p95) — capture and preprocessing in the capture thread, invoke, KNN/head,
output — end-to-end frames per second, the interpreter and delegate in use, threads, model
size and resident memory.
"""

from __future__ import annotations

import io
import os
import platform
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from teachcam.edge.config import DaemonConfig, load_config
from teachcam.edge.daemon.loop import Daemon
from teachcam.edge.errors import CameraError
from teachcam.edge.model.runtime import default_threads, interpreter_module


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB (Linux /proc), or None once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return None if pid != "self" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": 0.0, "p95_ms": 0.0}
    array = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(array, 50)), 3), "p95_ms": round(float(np.percentile(array, 95)), 3)}


FIRST_FRAME_TIMEOUT = 15.0


def run_bench(config: DaemonConfig, frames: int, warmup: int = 20) -> dict:
    with tempfile.TemporaryDirectory(prefix="teachcam-bench-") as tmp:
        store = config.store if Path(config.store).exists() else str(Path(tmp) / "store")
        config = replace(config, store=store,
                         buttons=replace(config.buttons, enabled=False), leds=replace(config.leds, enabled=False),
                         output=replace(config.output, terminal="off", json="on", oled=False, preview=False))
        daemon = Daemon(replace(config, frames=warmup), keyboard=False, stdout=io.StringIO())
        started = time.perf_counter()
        daemon.start()
        if not daemon.grabber.source.paced:
            daemon.grabber.interval = 0.0  # a file or the demo: frames as fast as the loop takes them
        if not daemon.grabber.wait_for_first(FIRST_FRAME_TIMEOUT):  # the service waits for a camera; a bench does not
            reason = daemon.grabber.last_error or "it delivered nothing"
            daemon.close()
            raise CameraError(f"no frame from {config.camera.source} in {FIRST_FRAME_TIMEOUT:.0f} s ({reason}); "
                              "check the --source (`teachcam doctor` tests the camera)")
        daemon.run()  # warm-up: caches, the interpreter's first invocations
        for values in [*daemon.stats.stages.values(), *daemon.grabber.timings.values()]:
            values.clear()
        counted = daemon.stats.frames
        daemon.config = replace(config, frames=counted + frames)
        measured_from = time.perf_counter()
        daemon.run()
        elapsed = time.perf_counter() - measured_from
        done = daemon.stats.frames - counted
        stages = {"capture": percentiles(daemon.grabber.timings["capture"]),
                  "preprocess": percentiles(daemon.grabber.timings["preprocess"]),
                  **{k: percentiles(v) for k, v in daemon.stats.stages.items() if k != "preprocess"}}
        runtime = interpreter_module()
        model = getattr(daemon.embedder, "rpk", None) or daemon.embedder.model.path  # the AI Camera's: its network
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "source": config.camera.source, "frames": done, "fps": round(done / max(elapsed, 1e-9), 1),
            # the source is not throttled, so "fps" is the pipeline's capacity; the model's alone, as status says it
            "model_fps": round(daemon.model_fps(), 1),
            "stages": stages, "interpreter": f"{runtime.name} {runtime.version}",
            "delegate": {"edgetpu": "edgetpu", "xnnpack": "cpu (XNNPACK)", "imx500": "the AI Camera's sensor"}.get(
                daemon.embedder.kernels, "cpu (reference kernels: no XNNPACK)"),
            "kernels": daemon.embedder.kernels,
            "gate": daemon.gate.counts(),
            "embedder": daemon.embedder.variant, "model": "embedder" if daemon.teacher is not None else "classifier",
            "threads": config.threads or default_threads(),
            "model_mb": round(model.stat().st_size / 1e6, 2), "mode": config.mode,
            "examples": len(daemon.teacher) if daemon.teacher is not None else 0,
            "startup_s": round(daemon.stats.first_prediction - daemon.stats.started, 3)
            if daemon.stats.first_prediction else None,
            "rss_mb": round(rss_mb(), 1), "seconds": round(time.perf_counter() - started, 1),
            **{k: v for k, v in daemon.status().items() if k == "sensor"},
        }
        daemon.close()
    return result


def bench_config(bundle: str, source: str, threads: int | None, mode: str, store: str | None) -> DaemonConfig:
    overrides = {"bundle": bundle, "camera": {"source": source, "fps": 1000.0, "loop": True}, "mode": mode}
    if threads:
        overrides["threads"] = threads
    if store:
        overrides["store"] = store
    return load_config(None, overrides)


def format_report(r: dict) -> str:
    lines = [f"teachcam bench — {r['machine']}",
             f"  {r['interpreter']}, {r['embedder']} {r['model']} on {r['delegate']}, {r['threads']} threads, "
             f"model {r['model_mb']} MB, mode {r['mode']} ({r['examples']} enrolled examples)",
             f"  source {r['source']} (not throttled): {r['frames']} frames, capacity {r['fps']} frames/s end to end "
             f"(the model alone: {r['model_fps']} frames/s; a camera delivers at most its own rate); change gate: "
             f"{r['gate']['embedded']} embedded, {r['gate']['gated']} unchanged (no model run), "
             f"{r['gate']['capped']} over the inference cap",
             "  stage        p50 ms   p95 ms"]
    for stage, p in r["stages"].items():
        lines.append(f"  {stage:<11} {p['p50_ms']:7.3f}  {p['p95_ms']:7.3f}")
    lines.append(f"  resident memory {r['rss_mb']} MB")
    sensor = r.get("sensor") or {}
    if "frames" in sensor:
        lines.append(f"  AI Camera: {sensor['frames']} frames embedded on the sensor, {sensor['skipped']} without output "
                     f"(skipped), {sensor['uploading']} while its network was uploaded")
    elif sensor.get("refused"):
        lines.append(f"  AI Camera: not used ({sensor['refused']})")
    return "\n".join(lines)
