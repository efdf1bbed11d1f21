#!/usr/bin/env python3
"""What a focus region buys: few-shot KNN accuracy when the taught object is a small part of a cluttered frame.

Scenes of 640x480 are composed from sample photos: a background (a random crop of one of several photos, random
lighting), 3-6 clutter patches (other photos), and one object — one of 5 classes (cat, coffee, rocket, motorcycle,
astronaut) — scaled to cover a fraction ``f`` of the frame (5, 10, 20 %, ±15 %), placed at a random spot inside a
fixed region (45 % x 45 % of the frame, at a random place per seed), under its own lighting. Each seed teaches 5
scenes per class and tests 40 others, with the bundle's int8 embedder and teachcam's own KNN (the nearest class,
closed set), once on the whole frame and once on the region (``Preprocessor.region``: the region is the frame) —
the same scenes, the same examples count.

Target (#28): at f = 10 % the region at least halves the error. Also the cost: frames/s of preprocess + invoke with
the region vs without, alternating rounds on the same frames (target ≥ 0.97x).

Usage: scripts/bench/region.py [--bundle build/default-bundle] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import numpy as np
from PIL import Image, ImageEnhance

from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.images import read_image
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.samples import sample_photos
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex

OBJECTS = {"cat": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg", "motorcycle": "motorcycle_left.png",
           "astronaut": "astronaut.png"}
BACKGROUNDS = ("hubble_deep_field.jpg", "ihc.png", "retina.jpg", "china.jpg", "flower.jpg", "page.png", "coins.png")
CLUTTER = ("moon.png", "camera.png", "color.png", "horse.png", "coins.png", "page.png", "motorcycle_right.png")
SIZE = (640, 480)
REGION_SIDE = 0.45


def photos(names) -> dict[str, Image.Image]:
    found = {p.name: p for p in sample_photos(tuple(names))}
    missing = set(names) - set(found)
    if missing:
        raise SystemExit(f"sample photos missing: {', '.join(sorted(missing))} (pip install scikit-image scikit-learn)")
    return {n: Image.fromarray(read_image(found[n])) for n in names}


def compose(rng, objects, backgrounds, clutter, label: str, fraction: float, region) -> np.ndarray:
    """One scene: background, clutter, the object inside ``region`` (fractions), lighting."""
    w, h = SIZE
    bg = backgrounds[rng.choice(list(backgrounds))]
    scale = rng.uniform(0.5, 1.0)
    cw, ch = int(bg.width * scale), int(bg.height * scale)
    cw, ch = min(cw, int(ch * w / h)), min(ch, int(cw * h / w))
    x, y = rng.integers(0, bg.width - cw + 1), rng.integers(0, bg.height - ch + 1)
    scene = bg.resize(SIZE, Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch)).convert("RGB")
    for _ in range(rng.integers(3, 7)):
        patch = clutter[rng.choice(list(clutter))].convert("RGB")
        area = rng.uniform(0.04, 0.15) * w * h
        pw = int(np.sqrt(area * patch.width / patch.height))
        ph = int(area / max(pw, 1))
        patch = patch.resize((max(pw, 8), max(ph, 8)), Image.Resampling.BILINEAR)
        scene.paste(patch, (int(rng.integers(-pw // 3, w - pw // 2)), int(rng.integers(-ph // 3, h - ph // 2))))
    item = objects[label].convert("RGB")
    area = fraction * rng.uniform(0.85, 1.15) * w * h
    ow = int(np.sqrt(area * item.width / item.height))
    oh = int(area / ow)
    rx0, ry0, rx1, ry1 = (region[0] * w, region[1] * h, region[2] * w, region[3] * h)
    ow, oh = min(ow, int(rx1 - rx0)), min(oh, int(ry1 - ry0))
    item = ImageEnhance.Brightness(item.resize((ow, oh), Image.Resampling.BILINEAR)).enhance(rng.uniform(0.8, 1.2))
    ox = int(rng.uniform(rx0, max(rx0, rx1 - ow)))  # (max: an object as wide as the region, less a rounding)
    oy = int(rng.uniform(ry0, max(ry0, ry1 - oh)))
    scene.paste(item, (ox, oy))
    scene = ImageEnhance.Brightness(scene).enhance(rng.uniform(0.6, 1.3))
    noisy = np.asarray(scene, np.int16) + rng.normal(0, 4, (h, w, 3)).astype(np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def embed(embedder, preprocess, frames) -> np.ndarray:
    out = np.stack([embedder.embed(preprocess(f)) for f in frames]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def accuracy(train, train_labels, test, test_labels) -> float:
    index = KNNIndex(train, train_labels)
    config = KNNConfig()
    return float(np.mean([index.predict(q, config).nearest == t for q, t in zip(test, test_labels, strict=True)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--test", type=int, default=40, help="test scenes per class")
    parser.add_argument("--fractions", default="0.05,0.10,0.20")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    whole = Preprocessor.from_manifest(bundle.preprocessing)
    embedder = Embedder.create(bundle, "int8", num_threads=args.threads)
    objects, backgrounds, clutter = photos(OBJECTS.values()), photos(BACKGROUNDS), photos(CLUTTER)
    objects = {label: objects[name] for label, name in OBJECTS.items()}
    fractions = [float(f) for f in args.fractions.split(",")]
    results = {"machine": platform.machine(), "python": platform.python_version(), "classes": list(OBJECTS),
               "shots": args.shots, "test_per_class": args.test, "seeds": args.seeds, "accuracy": {}, "cost": {}}
    started = time.perf_counter()
    for fraction in fractions:
        rows = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(1000 * seed + int(fraction * 100))
            x0, y0 = rng.uniform(0, 1 - REGION_SIDE, 2)
            region = (float(x0), float(y0), float(x0 + REGION_SIDE), float(y0 + REGION_SIDE))
            focused = dataclasses.replace(whole, region=region)
            scenes, labels = [], []
            for label in OBJECTS:
                for _ in range(args.shots + args.test):
                    scenes.append(compose(rng, objects, backgrounds, clutter, label, fraction, region))
                    labels.append(label)
            labels = np.array(labels)
            per_class = args.shots + args.test
            train = np.concatenate([np.arange(c * per_class, c * per_class + args.shots) for c in range(len(OBJECTS))])
            test = np.setdiff1d(np.arange(len(scenes)), train)
            row = {}
            for name, preprocess in (("whole", whole), ("region", focused)):
                vectors = embed(embedder, preprocess, scenes)
                row[name] = accuracy(vectors[train], list(labels[train]), vectors[test], list(labels[test]))
            rows.append(row)
            print(f"  f={fraction:.2f} seed {seed}: whole {row['whole']:.3f}  region {row['region']:.3f}", file=sys.stderr)
        whole_err = [1 - r["whole"] for r in rows]
        region_err = [1 - r["region"] for r in rows]
        results["accuracy"][f"{fraction:.2f}"] = {
            "whole": float(np.mean([r["whole"] for r in rows])), "region": float(np.mean([r["region"] for r in rows])),
            "whole_sd": float(np.std([r["whole"] for r in rows])), "region_sd": float(np.std([r["region"] for r in rows])),
            "error_ratio": float(np.mean(region_err) / max(np.mean(whole_err), 1e-9))}

    # the cost: preprocess + invoke per frame, with and without the region, alternating rounds on the same frames
    rng = np.random.default_rng(7)
    frames = [compose(rng, objects, backgrounds, clutter, "cat", 0.1, (0.3, 0.3, 0.75, 0.75)) for _ in range(30)]
    focused = dataclasses.replace(whole, region=(0.3, 0.3, 0.75, 0.75))
    rates = {"whole": [], "region": []}
    for _ in range(5):
        for name, preprocess in (("whole", whole), ("region", focused)):
            t0 = time.perf_counter()
            for frame in frames:
                embedder.embed(preprocess(frame))
            rates[name].append(len(frames) / (time.perf_counter() - t0))
    ratios = [r / w for r, w in zip(rates["region"], rates["whole"], strict=True)]
    results["cost"] = {"whole_fps": float(np.median(rates["whole"])), "region_fps": float(np.median(rates["region"])),
                       "ratio": float(np.median(ratios))}
    results["seconds"] = round(time.perf_counter() - started, 1)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"focus region — {results['machine']}, {len(OBJECTS)} classes, {args.shots} shots, {args.test} test scenes "
          f"per class, {args.seeds} seeds, int8 embedder ({results['seconds']} s)")
    print("  object covers   whole frame        region            error region/whole")
    for fraction, a in results["accuracy"].items():
        print(f"  {float(fraction) * 100:5.0f} %         {a['whole']:.3f} ± {a['whole_sd']:.3f}    "
              f"{a['region']:.3f} ± {a['region_sd']:.3f}    {a['error_ratio']:.2f}")
    c = results["cost"]
    print(f"  preprocess+invoke: whole {c['whole_fps']:.1f} frames/s, region {c['region_fps']:.1f} frames/s "
          f"({c['ratio']:.3f}x, median of 5 alternating rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
