#!/usr/bin/env python3
"""Classify the same frames three ways, in one run, and print times and ratios (needs the host extra).

  keras      the tutorials' way: the Keras model called on every frame (and model.predict per frame),
             float preprocessing in numpy;
  tflite-f32 the common Pi example: a float32 TFLite classifier, per-frame cv2.resize + float
             normalization in numpy, default interpreter settings;
  teachcam   the daemon in imagenet mode: int8 bundle (normalization folded into the model),
             capture + preprocessing ahead of inference, tuned threads.
All do the same job (frame -> ImageNet top-1) on the same 640x480 frames, decoded in memory;
teachcam also on 342x256 frames (what it asks picamera2's ISP for). Then the int8 embedder's
invoke time against a physical bound (scripts/bench/mac_bound.py): its multiply-accumulates /
the best MAC rate this interpreter reaches on large int8 1x1 convolutions.

Usage: scripts/bench/compare.py [--bundle build/default-bundle] [--frames 200] [--json]
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `teachcam` itself does (edge/cli.py)
import numpy as np  # noqa: E402

from teachcam.edge.model.runtime import default_threads, interpreter_module  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def frames_of(n, size):
    from teachcam.edge.devices.scenes import DemoSource

    source = DemoSource(fps=30, size=size)
    source.open()
    return [source.read() for _ in range(n)]


def time_loop(fn, frames, warmup=5):
    for f in frames[:warmup]:
        fn(f)
    started = time.perf_counter()
    for f in frames:
        fn(f)
    return (time.perf_counter() - started) / len(frames)


def keras_way(frames, calls):
    import keras
    from PIL import Image

    from teachcam.convert.backbones import build_torchvision_mobilenet_v2, find_offline_weights
    from teachcam.convert.torch_weights import read_state_dict

    state = read_state_dict(find_offline_weights())
    embedder, kernel, bias = build_torchvision_mobilenet_v2(state, normalize=False)
    dense = keras.layers.Dense(1000)
    model = keras.Model(embedder.inputs, dense(embedder.output))
    dense.set_weights([kernel, bias])

    def preprocess(frame):
        image = Image.fromarray(frame)
        w, h = image.size
        image = image.resize((int(256 * w / h), 256), Image.Resampling.BILINEAR)
        left = (image.width - 224) // 2
        x = np.asarray(image.crop((left, 16, left + 224, 240)), np.float32) / 255.0
        return ((x - MEAN) / STD)[None]

    call = {"call": lambda f: model(preprocess(f), training=False).numpy().argmax(),
            "predict": lambda f: model.predict(preprocess(f), verbose=0).argmax()}[calls]
    return time_loop(call, frames), model


def float_tflite_way(frames, model):
    import cv2

    from teachcam.convert.export import to_tflite

    path = Path(tempfile.mkdtemp()) / "mobilenet_v2_float32.tflite"
    path.write_bytes(to_tflite(model, int8=False))
    runtime = interpreter_module()
    interpreter = runtime.Interpreter(model_path=str(path))  # default settings, as the examples do
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def classify(frame):
        x = cv2.resize(frame, (224, 224)).astype(np.float32) / 255.0
        interpreter.set_tensor(inp, ((x - MEAN) / STD)[None])
        interpreter.invoke()
        return interpreter.get_tensor(out).argmax()

    return time_loop(classify, frames), path.stat().st_size


def teachcam_way(frames, bundle, threads):
    from teachcam.edge.config import load_config
    from teachcam.edge.daemon.loop import Daemon
    from teachcam.edge.devices.camera import ArraySource

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(None, {"bundle": bundle, "store": str(Path(tmp) / "s"), "mode": "imagenet",
                                    "threads": threads, "frames": len(frames), "camera": {"fps": 1000.0, "gate": 0.0},
                                    "buttons": {"enabled": False}, "leds": {"enabled": False},
                                    "output": {"terminal": "off", "json": "off"}})
        daemon = Daemon(config, source=ArraySource(frames), keyboard=False, stdout=io.StringIO())
        daemon.start()
        daemon.grabber.interval = 0.0
        started = time.perf_counter()
        daemon.run()
        elapsed = time.perf_counter() - started
        invoke = float(np.median(daemon.stats.stages["invoke"]))
        done = daemon.stats.frames
        daemon.close()
    return elapsed / done, invoke


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    frames = frames_of(args.frames, (640, 480))
    lores = frames_of(args.frames, (342, 256))
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "frames": args.frames, "threads": args.threads}
    print("measuring keras (per-frame call)…", file=sys.stderr)
    out["keras_call_s"], model = keras_way(frames[: max(20, args.frames // 4)], "call")
    print("measuring keras (model.predict per frame)…", file=sys.stderr)
    out["keras_predict_s"], _ = keras_way(frames[:20], "predict")
    print("measuring the float32 TFLite example loop…", file=sys.stderr)
    out["tflite_f32_s"], out["tflite_f32_bytes"] = float_tflite_way(frames, model)
    print("measuring teachcam…", file=sys.stderr)
    out["teachcam_s"], out["teachcam_invoke_s"] = teachcam_way(frames, args.bundle, args.threads)
    out["teachcam_lores_s"], _ = teachcam_way(lores, args.bundle, args.threads)
    print("measuring the MAC bound…", file=sys.stderr)
    sys.path.insert(0, str(Path(__file__).parent))
    import mac_bound

    out["bound"] = mac_bound.measure(args.bundle, args.threads)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    fps = {k: 1.0 / out[k] for k in ("keras_call_s", "keras_predict_s", "tflite_f32_s", "teachcam_s", "teachcam_lores_s")}
    print(f"frame -> ImageNet top-1, {args.frames} frames of 640x480 in memory — {out['machine']}, "
          f"{interpreter_module().name} {interpreter_module().version}")
    rows = [("keras, model(x) per frame", "keras_call_s"), ("keras, model.predict per frame", "keras_predict_s"),
            ("float32 TFLite example loop", "tflite_f32_s"), ("teachcam (int8, 640x480 frames)", "teachcam_s"),
            ("teachcam (int8, 342x256 ISP-size frames)", "teachcam_lores_s")]
    for name, key in rows:
        print(f"  {name:<42} {out[key] * 1e3:8.2f} ms/frame {fps[key]:8.1f} frames/s")
    print(f"  teachcam ÷ keras call: {fps['teachcam_s'] / fps['keras_call_s']:.1f}×   "
          f"÷ keras predict: {fps['teachcam_s'] / fps['keras_predict_s']:.1f}×   "
          f"÷ float32 TFLite: {fps['teachcam_s'] / fps['tflite_f32_s']:.2f}×")
    print(mac_bound.report(out["bound"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
