#!/usr/bin/env python3
"""int8 vs float32 fidelity of the embedder, both recipes, on images the calibration never saw.

Converts the default embedder twice in one run — ``minmax`` (TensorFlow's calibration, the
previous default) and ``clipped`` (the default: histogram-clipped ranges + learned stem
rounding) — calibrated on the same photos (two thirds of the sample photos), then measures
on the device runtime:

  held-out   the other third of the sample photos, centre view + 5 crops/mirrors each;
  unseen     photos from other installed packages that teachcam never calibrates on
             (matplotlib's sample data, scikit-image textures and microscopy), same views.

For each: embedding cosine mean / min / 5th percentile, ImageNet top-1 agreement with
float32, and the conversion time.

Usage: scripts/bench/int8_fidelity.py [--samples 128] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np  # noqa: E402

UNSEEN = {
    "matplotlib": ("mpl-data/sample_data", ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")),
    "skimage": ("data", ("brick.png", "grass.png", "gravel.png", "cell.png", "clock_motion.png",
                         "microaneurysms.png", "logo.png")),
}


def unseen_photos() -> list[Path]:
    found = []
    for package, (sub, names) in UNSEEN.items():
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            folder = Path(list(spec.submodule_search_locations)[0]) / sub
            found += [folder / n for n in names if (folder / n).is_file()]
    return found


def measure(blob: bytes, float_model, head_kernel, head_bias, views) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from teachcam.convert.quantize import cosines

    it = Interpreter(model_content=blob, num_threads=2)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = out["quantization"]
    q = []
    for v in views:
        it.set_tensor(inp["index"], v[None].astype(np.uint8))
        it.invoke()
        q.append((it.get_tensor(out["index"])[0].astype(np.float64) - zero) * scale)
    q = np.array(q)
    f = np.concatenate([float_model(views[i : i + 16].astype(np.float32), training=False).numpy()
                        for i in range(0, len(views), 16)])
    c = cosines(f, q)
    top_f, top_q = np.argmax(f @ head_kernel + head_bias, 1), np.argmax(q @ head_kernel + head_bias, 1)
    return {"views": len(views), "mean_cosine": round(float(c.mean()), 4), "min_cosine": round(float(c.min()), 4),
            "p5_cosine": round(float(np.percentile(c, 5)), 4), "top1_agreement": round(float((top_f == top_q).mean()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=128, help="calibration samples (default 128, as convert)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from teachcam.convert import calibration
    from teachcam.convert.backbones import load_backbone
    from teachcam.convert.build import STEM_ROUNDING_LAYERS, evaluation_views, split_photos
    from teachcam.convert.export import to_tflite
    from teachcam.edge.model.preprocess import Preprocessor
    from teachcam.edge.samples import sample_photos

    backbone = load_backbone()
    pre = Preprocessor.from_manifest(backbone.manifest_preprocessing())
    calibrate, held = split_photos(sample_photos())
    samples = calibration.representative_pixels(calibrate, pre, per_image=max(1, args.samples // len(calibrate)),
                                                limit=args.samples)
    sets = {"held-out": held, "unseen": unseen_photos()}
    views = {name: evaluation_views(photos, pre, per_image=6, seed=11) for name, photos in sets.items()}
    results = {"calibration_photos": [p.name for p in calibrate], "calibration_samples": len(samples),
               "sets": {k: [p.name for p in v] for k, v in sets.items()}, "recipes": {}}
    for recipe in ("minmax", "clipped"):
        started = time.monotonic()
        details: dict = {}
        blob = to_tflite(backbone.embedder, int8=True, representative=lambda: iter(samples), recipe=recipe,
                         rounding_layers=STEM_ROUNDING_LAYERS if recipe == "clipped" else 0, details=details)
        entry = {"seconds": round(time.monotonic() - started, 1), "coverage": details.get("coverage")}
        for name, named in views.items():
            pixels = np.stack([v for _, v in named])
            entry[name] = measure(blob, backbone.embedder, backbone.classifier_kernel, backbone.classifier_bias, pixels)
        results["recipes"][recipe] = entry
        print(f"{recipe}: converted in {entry['seconds']} s", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"calibrated on {len(samples)} samples of {len(calibrate)} sample photos; "
          f"held-out: {', '.join(p.name for p in held)}; unseen: {', '.join(p.name for p in sets['unseen'])}")
    print(f"{'recipe':<8} {'set':<9} {'views':>5} {'cos mean':>9} {'cos min':>8} {'cos p5':>7} {'top-1 agree':>11} "
          f"{'convert s':>9}")
    for recipe, entry in results["recipes"].items():
        for name in sets:
            m = entry[name]
            print(f"{recipe:<8} {name:<9} {m['views']:>5} {m['mean_cosine']:>9.4f} {m['min_cosine']:>8.4f} "
                  f"{m['p5_cosine']:>7.4f} {m['top1_agreement'] * 100:>10.1f}% {entry['seconds']:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
