#!/usr/bin/env python3
"""Sensor vs CPU embeddings: how far the AI Camera's (simulated) and the CPU int8 embeddings of the same pictures
agree, and what few-shot KNN accuracy costs when a store mixes them instead of keeping them apart.

Pictures: Fashion-MNIST (Debian's dataset-fashion-mnist; 10 classes, pictures teachcam never calibrates on), prepared
as the few-shot bench prepares them. CPU: the bundle's int8 embedder on the device runtime. Sensor: the same
MobileNetV2 quantised for the IMX500 by Sony's model-compression-toolkit (calibrated on the sample photos, as
`teachcam convert --imx500` calibrates) and run simulated — the firmware itself runs only on the sensor.

KNN (teachcam's rule, KNNConfig()): shots per class enrolled, then every test picture queried as the AI Camera
queries — with a sensor embedding. Stores: ``sensor`` (every example from the sensor), ``cpu`` (every example from
the CPU model: e.g. enrolled from files, or re-embedded), ``mixed`` (half of each class's shots from each).
``cpu-only`` is the CPU store queried with CPU embeddings (a Pi without the AI Camera), for reference.

Needs the IMX500 toolchain (scripts/setup --imx500 or $TEACHCAM_IMX500_VENV).
Usage: scripts/bench/imx500_mix.py [--bundle DIR] [--test 600] [--seeds 3] [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np

from teachcam.convert.idx import load_fashion_mnist
from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex

SHOTS = (5, 10, 20)


def normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def accuracy(train: np.ndarray, labels: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> float:
    config = KNNConfig()
    index = KNNIndex(train, [str(x) for x in labels], power=config.power, ridge_alpha=config.ridge_alpha)
    predicted = np.array([int(index.predict(q, config).nearest) for q in queries])
    return float((predicted == truth).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from teachcam.convert import calibration
    from teachcam.convert.backbones import find_offline_weights
    from teachcam.convert.imx500 import simulate
    from teachcam.edge.samples import sample_photos

    bundle = load_bundle(args.bundle)
    pre = Preprocessor.from_manifest(bundle.preprocessing)
    prepared = dataclasses.replace(pre, frame_small=True)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    test_idx = rng.choice(len(test_x), args.test, replace=False)
    per_class = max(SHOTS) * args.seeds
    pool = {c: rng.choice(np.flatnonzero(train_y == c), per_class, replace=False) for c in range(10)}
    chosen = np.concatenate(list(pool.values()))
    grey = np.concatenate([train_x[chosen], test_x[test_idx]])
    pictures = np.stack([prepared(np.repeat(image[:, :, None], 3, axis=2)) for image in grey])
    started = time.monotonic()
    embedder = Embedder.create(bundle, "int8")
    cpu = normalise(np.stack([embedder.embed(p) for p in pictures]))
    cpu_s = time.monotonic() - started
    samples = calibration.representative_pixels(sample_photos(), pre, per_image=8, limit=128)
    started = time.monotonic()
    sensor = normalise(simulate(find_offline_weights(), np.stack(samples), pictures))
    sensor_s = time.monotonic() - started
    print(f"embedded {len(pictures)} pictures: CPU int8 {cpu_s:.0f} s, sensor (simulated) {sensor_s:.0f} s",
          file=sys.stderr)
    agree = (cpu * sensor).sum(1)
    position = {int(i): n for n, i in enumerate(chosen)}
    test_cpu, test_sensor = cpu[len(chosen):], sensor[len(chosen):]
    truth = test_y[test_idx]
    table: dict = {}
    for shots in SHOTS:
        runs: dict = {"sensor": [], "cpu": [], "mixed": [], "cpu-only": []}
        for seed in range(args.seeds):
            picked = [pool[c][seed * max(SHOTS): seed * max(SHOTS) + shots] for c in range(10)]
            rows = np.array([position[int(i)] for ids in picked for i in ids])
            labels = np.concatenate([[c] * shots for c in range(10)])
            from_sensor = np.tile(np.arange(shots) % 2 == 0, 10)  # half of each class's shots from each model
            mixed = np.where(from_sensor[:, None], sensor[rows], cpu[rows])
            runs["sensor"].append(accuracy(sensor[rows], labels, test_sensor, truth))
            runs["cpu"].append(accuracy(cpu[rows], labels, test_sensor, truth))
            runs["mixed"].append(accuracy(mixed, labels, test_sensor, truth))
            runs["cpu-only"].append(accuracy(cpu[rows], labels, test_cpu, truth))
        table[shots] = {name: round(float(np.mean(v)), 4) for name, v in runs.items()}
    result = {"pictures": len(pictures), "test": args.test, "seeds": args.seeds,
              "agreement": {"mean": round(float(agree.mean()), 4), "min": round(float(agree.min()), 4),
                            "p5": round(float(np.percentile(agree, 5)), 4)},
              "accuracy": table}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    a = result["agreement"]
    print(f"cosine(CPU int8, sensor simulated), same picture, {len(pictures)} Fashion-MNIST pictures: "
          f"mean {a['mean']:.3f} · p5 {a['p5']:.3f} · min {a['min']:.3f}")
    print(f"KNN accuracy, queries from the sensor, {args.test} test pictures, mean of {args.seeds} draws")
    print("  shots  sensor store  cpu store  mixed store  | cpu store, cpu queries")
    for shots, row in table.items():
        print(f"  {shots:>5}  {row['sensor']:12.3f}  {row['cpu']:9.3f}  {row['mixed']:11.3f}  | {row['cpu-only']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
