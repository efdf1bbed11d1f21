#!/usr/bin/env python3
"""`teachcam train` on Fashion-MNIST (Debian's dataset-fashion-mnist): 2,000 training and 1,000 test images.

Writes the images as PNG folders (one per class), runs the real CLI end to end — embedding,
training, both exports, held-out evaluation on the device runtime, report — and prints
float32 and int8 accuracy, the drop, and the wall time.

Usage: scripts/bench/train_fashion.py [--head dense|finetune|cnn] [--train 2000] [--test 1000] [--epochs N] [--json]
(finetune, a small run: --head finetune --train 500 --epochs 2)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from teachcam.convert.idx import FASHION_MNIST_CLASSES, load_fashion_mnist
from teachcam.convert.report import safe_name


def write_folder(images, labels, indices, folder: Path) -> None:
    for i in indices:
        target = folder / safe_name(FASHION_MNIST_CLASSES[labels[i]])
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(target / f"{i}.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", default="dense")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=None, help="passed to teachcam train")
    parser.add_argument("--quantization", default="clipped", choices=("clipped", "minmax"),
                        help="the int8 recipe, passed to teachcam train")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_class = args.train // 10
        chosen = np.concatenate([rng.choice(np.flatnonzero(train_y == c), per_class, replace=False) for c in range(10)])
        write_folder(train_x, train_y, chosen, tmp / "train")
        write_folder(test_x, test_y, rng.choice(len(test_x), args.test, replace=False), tmp / "test")
        started = time.monotonic()
        # Early stopping watches a 20% validation split of the 2,000; the 1,000 test images are only scored.
        result = subprocess.run([sys.executable, "-m", "teachcam.edge.cli", "train", "--data", str(tmp / "train"), "--test",
                                 str(tmp / "test"), "--out", str(tmp / "bundle"), "--head", args.head, "--json",
                                 "--quantization", args.quantization,
                                 *(["--epochs", str(args.epochs)] if args.epochs else [])],
                                capture_output=True, text=True)
        elapsed = time.monotonic() - started
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return result.returncode
        metrics = json.loads(result.stdout)
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "head": args.head, "train": args.train,
           "test": args.test, "seconds": round(elapsed, 1), **metrics["accuracy"], "quantization": args.quantization,
           "int8_vs_float32": metrics["int8_vs_float32"]}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"teachcam train --head {args.head} --quantization {args.quantization} "
              f"on Fashion-MNIST ({args.train} train / {args.test} test, seed 0; "
              f"{out['machine']})")
        print(f"  float32 accuracy {out['float32']:.3f}   int8 accuracy {out['int8']:.3f}   "
              f"drop {out['int8_drop_points']:+.2f} points   wall time {elapsed:.0f} s (embedding, training, both "
              "exports, evaluation, report)")
        fid = out["int8_vs_float32"]
        print(f"  int8 vs float32 class scores: cosine mean {fid['mean_cosine']:.4f}, min {fid['min_cosine']:.4f}, "
              f"same top-1 {fid['argmax_agreement'] * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
