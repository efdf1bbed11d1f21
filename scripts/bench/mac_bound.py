#!/usr/bin/env python3
"""The int8 embedder's invoke time against a simple physical bound (needs the host extra).

bound = the embedder's multiply-accumulates / the best int8 MAC rate the same interpreter
(same runtime, same threads) reaches on large, compute-bound int8 1x1 convolutions (GEMMs:
28x28x512->512, 14x14x1024->1024, 7x7x2048->2048 and 16x16x1024->1024). It also times
layers shaped like MobileNetV2's own — a 1x1 convolution with few channels at high
resolution, a 3x3 depthwise convolution, a small 7x7 one — to show where the gap comes from.
Each layer's rate is measured as the difference between a stack of 4 and a stack of 1 of
that layer (3 x its MACs / the extra time), so the model's fixed costs — input/output
(de)quantization, the invoke call itself — do not count against the kernel.

MACs of the embedder are counted from the TFLite graph itself (CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED: output elements x kernel taps x input channels per output), not quoted.

Usage: scripts/bench/mac_bound.py [--bundle build/default-bundle] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

from teachcam.edge.model.runtime import default_threads, interpreter_module  # noqa: E402

# (name, input side, input channels, output channels, kind) — kind: conv1x1 | depthwise3x3
GEMMS = [("1x1 conv 28x28x512->512", 28, 512, 512, "conv1x1"), ("1x1 conv 14x14x1024->1024", 14, 1024, 1024, "conv1x1"),
         ("1x1 conv 7x7x2048->2048", 7, 2048, 2048, "conv1x1"), ("1x1 conv 16x16x1024->1024", 16, 1024, 1024, "conv1x1")]
MOBILENET_LIKE = [("1x1 conv 56x56x24->24", 56, 24, 24, "conv1x1"),
                  ("1x1 conv 56x56x144->144", 56, 144, 144, "conv1x1"),
                  ("depthwise 3x3 56x56x144", 56, 144, 144, "depthwise3x3"),
                  ("depthwise 3x3 7x7x960", 7, 960, 960, "depthwise3x3"),
                  ("1x1 conv 7x7x320->320", 7, 320, 320, "conv1x1")]
STACK = 4


def macs_of(side, cin, cout, kind) -> float:
    return side * side * (cout * cin if kind == "conv1x1" else cin * 9)


def kernel_model(side, cin, cout, kind, depth):
    """``depth`` copies of the layer in a row (cin == cout, so they stack), ReLU between them."""
    import keras

    inputs = keras.Input((side, side, cin))
    x = inputs
    for _ in range(depth):
        layer = (keras.layers.Conv2D(cout, 1, use_bias=True, activation="relu") if kind == "conv1x1"
                 else keras.layers.DepthwiseConv2D(3, padding="same", use_bias=True, activation="relu"))
        x = layer(x)
    return keras.Model(inputs, x)


def time_invoke(interpreter, seconds: float = 1.0) -> float:
    """Median seconds per invoke over ~``seconds`` of repeated calls."""
    for _ in range(3):
        interpreter.invoke()
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 10:
        started = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def stack_seconds(side, cin, cout, kind, depth, threads) -> float:
    from teachcam.convert.export import to_tflite

    rng = np.random.default_rng(0)
    blob = to_tflite(kernel_model(side, cin, cout, kind, depth), int8=True,
                     representative=lambda: (rng.normal(size=(side, side, cin)).astype(np.float32) for _ in range(4)))
    path = Path(tempfile.mkdtemp()) / "kernel.tflite"
    path.write_bytes(blob)
    interpreter = interpreter_module().Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return time_invoke(interpreter)


def kernel_rate(side, cin, cout, kind, threads) -> float:
    """MACs per second of one layer: (STACK - 1) layers' MACs / (time of STACK layers - time of 1)."""
    one = stack_seconds(side, cin, cout, kind, 1, threads)
    many = stack_seconds(side, cin, cout, kind, STACK, threads)
    return (STACK - 1) * macs_of(side, cin, cout, kind) / max(many - one, 1e-9)


def graph_macs(path: Path) -> tuple[float, dict[str, float]]:
    """MACs per op type of a TFLite model, from its tensors' shapes."""
    interpreter = interpreter_module().Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    by_op: dict[str, float] = {}
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only way to read the graph from Python
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out = tensors[op["outputs"][0]]["shape"]
        weights = tensors[op["inputs"][1]]["shape"]
        if name == "CONV_2D":  # weights [cout, kh, kw, cin]
            macs = np.prod(out) * weights[1] * weights[2] * weights[3]
        elif name == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, channels]
            macs = np.prod(out) * weights[1] * weights[2]
        else:  # weights [cout, cin]
            macs = np.prod(out) * weights[1]
        by_op[name] = by_op.get(name, 0.0) + float(macs)
    return sum(by_op.values()), by_op


def measure(bundle_path: str, threads: int, progress=lambda _: None) -> dict:
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.models import Embedder

    bundle = load_bundle(bundle_path)
    embedder = Embedder.create(bundle, "int8", num_threads=threads)
    total, by_op = graph_macs(embedder.model.path)
    pixels = np.zeros(embedder.model.input.shape[1:], np.uint8)
    embedder.embed(pixels)
    invoke_s = time_invoke(embedder.model.interpreter, 2.0)
    rates = {}
    for name, side, cin, cout, kind in GEMMS + MOBILENET_LIKE:
        progress(name)
        rates[name] = kernel_rate(side, cin, cout, kind, threads)
    peak_name = max((g[0] for g in GEMMS), key=rates.get)
    peak = rates[peak_name]
    # Where the time goes: the depthwise MACs at the depthwise layers' rate, the rest at the rate of
    # MobileNet-shaped 1x1 convolutions (an estimate from single-layer rates, not a profile).
    depthwise_rate = float(np.mean([rates[m[0]] for m in MOBILENET_LIKE if m[4] == "depthwise3x3"]))
    conv_rate = float(np.mean([rates[m[0]] for m in MOBILENET_LIKE if m[4] == "conv1x1"]))
    estimate = {"DEPTHWISE_CONV_2D": by_op.get("DEPTHWISE_CONV_2D", 0.0) / depthwise_rate,
                "CONV_2D+FULLY_CONNECTED": (by_op.get("CONV_2D", 0.0) + by_op.get("FULLY_CONNECTED", 0.0)) / conv_rate}
    return {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "runtime": interpreter_module().name,
            "threads": threads, "embedder_macs": total, "macs_by_op": by_op, "invoke_ms": invoke_s * 1e3,
            "embedder_gmacs": total / invoke_s / 1e9, "kernel_gmacs": {k: v / 1e9 for k, v in rates.items()},
            "peak_kernel": peak_name, "peak_gmacs": peak / 1e9, "bound_ms": total / peak * 1e3,
            "times_bound": invoke_s / (total / peak), "estimate_ms": {k: v * 1e3 for k, v in estimate.items()}}


def report(r: dict) -> str:
    lines = [f"int8 embedder vs the interpreter's int8 MAC rate — {r['machine']}, {r['runtime']}, {r['threads']} threads",
             f"  embedder: {r['embedder_macs'] / 1e6:.0f}M MACs ("
             + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in r["macs_by_op"].items())
             + f"), invoke {r['invoke_ms']:.2f} ms = {r['embedder_gmacs']:.1f} GMAC/s",
             "  the same interpreter on single int8 layers (GMAC/s):"]
    for name, rate in r["kernel_gmacs"].items():
        lines.append(f"    {name:<28} {rate:7.1f}" + ("   <- peak" if name == r["peak_kernel"] else ""))
    lines.append(f"  bound = {r['embedder_macs'] / 1e6:.0f}M MACs / {r['peak_gmacs']:.1f} GMAC/s = {r['bound_ms']:.2f} ms; "
                 f"the embedder takes {r['times_bound']:.2f}× the bound")
    lines.append(f"  (layer rates: {STACK} stacked minus 1, so model input/output and invoke overhead do not count)")
    e = r["estimate_ms"]
    lines.append(f"  why: at the rates above, the depthwise layers' {r['macs_by_op'].get('DEPTHWISE_CONV_2D', 0) / 1e6:.0f}M "
                 f"MACs take ≈{e['DEPTHWISE_CONV_2D']:.2f} ms and the 1x1/3x3 convolutions ≈"
                 f"{e['CONV_2D+FULLY_CONNECTED']:.2f} ms (≈{sum(e.values()):.2f} ms in all, invoke {r['invoke_ms']:.2f} ms):"
                 " depthwise layers do 9 MACs per value loaded (memory-bound) and MobileNet's 1x1 layers are narrow")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.bundle, args.threads, lambda name: print(f"timing {name}…", file=sys.stderr))
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
