#!/usr/bin/env python3
"""Few-shot KNN accuracy on Fashion-MNIST (Debian's dataset-fashion-mnist) with the bundle's embedders.

For 5/10/20 shots per class (drawn from the training set, several seeds) and 1,000 test
images, compares scoring rules on the same embeddings, for the int8 and float32 embedders:
  plain-5nn   majority vote of the 5 nearest examples overall, plain cosine (the baseline)
  blend-raw   class-balanced: each class scored by its own 5 nearest, blended 50/50 with
              its prototype (class mean), plain cosine
  class-knn   the same without the prototype, after the power transform (signed sqrt)
  prototype   nearest class mean, after the power transform
  knn-blend   blend after the power transform (teachcam before the ridge was added)
  teachcam    the default KNNConfig: the blend plus the class-balanced ridge classifier
and the small greyscale images as is, or prepared as bundles built by this version say
(manifest preprocessing.small_greyscale "invert_and_border", edge.images.frame_small_greyscale:
inverted to a dark item on a light ground, like most photos; a 2-pixel border so the
centre crop keeps the whole item).
Then measures the unknown threshold: 5 classes enrolled, the other 5 never — false accepts vs false rejects per threshold.

Usage: scripts/bench/fewshot.py --bundle build/default-bundle [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import numpy as np

from teachcam.convert.idx import load_fashion_mnist
from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex


def embed_all(embedder, preprocess, images, prepared):
    preprocess = dataclasses.replace(preprocess, frame_small=prepared)
    out = np.empty((len(images), embedder.model.output.shape[-1]), np.float32)
    for i, image in enumerate(images):
        out[i] = embedder.embed(preprocess(np.repeat(image[:, :, None], 3, axis=2)))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def plain_knn(train, train_labels, test, k=5):
    sims = test @ train.T
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    votes = train_labels[top]
    return np.array([np.bincount(v, minlength=10).argmax() for v in votes])


def rule_predict(train, train_labels, test, config):
    index = KNNIndex(train, [str(x) for x in train_labels], power=config.power, ridge_alpha=config.ridge_alpha)
    return np.array([int(index.predict(q, config).nearest) for q in test])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    preprocess = Preprocessor.from_manifest(bundle.preprocessing)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    test_idx = rng.choice(len(test_x), args.test, replace=False)
    pool = {c: rng.choice(np.flatnonzero(train_y == c), 20 * args.seeds, replace=False) for c in range(10)}
    needed = np.concatenate(list(pool.values()))
    results = {"machine": platform.machine(), "python": platform.python_version(), "test_images": args.test,
               "seeds": args.seeds, "accuracy": {}, "unknown": {}}
    rules = {"plain-5nn": None, "blend-raw": KNNConfig(k=5, prototype_weight=0.5, power=1.0, ridge_weight=0),
             "class-knn": KNNConfig(k=5, prototype_weight=0.0, ridge_weight=0),
             "prototype": KNNConfig(k=5, prototype_weight=1.0, ridge_weight=0),
             "knn-blend": KNNConfig(ridge_weight=0), "teachcam": KNNConfig()}
    for precision in ("int8", "float32"):
        embedder = Embedder.create(bundle, precision)
        for prepared in (False, True):
            started = time.monotonic()
            test_e = embed_all(embedder, preprocess, test_x[test_idx], prepared)
            train_e = dict(zip(needed.tolist(), embed_all(embedder, preprocess, train_x[needed], prepared), strict=True))
            key = f"{precision}{'-prepared' if prepared else '-as-is'}"
            print(f"[{key}] embedded {len(test_idx) + len(needed)} images in {time.monotonic() - started:.1f} s",
                  file=sys.stderr)
            table = {}
            for shots in (5, 10, 20):
                for name, config in rules.items():
                    accs = []
                    for seed in range(args.seeds):
                        chosen = np.concatenate([pool[c][seed * 20 : seed * 20 + shots] for c in range(10)])
                        tr = np.stack([train_e[i] for i in chosen])
                        labels = train_y[chosen]
                        pred = (plain_knn(tr, labels, test_e) if config is None
                                else rule_predict(tr, labels, test_e, config))
                        accs.append(float((pred == test_y[test_idx]).mean()))
                    table.setdefault(name, {})[shots] = round(float(np.mean(accs)), 4)
            results["accuracy"][key] = table
            if precision == "int8":
                results["unknown"][key] = unknown_sweep(train_e, pool, train_y, test_e, test_y[test_idx])
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"Few-shot accuracy, Fashion-MNIST, {args.test} test images, mean of {args.seeds} draws "
          f"({results['machine']}, Python {results['python']})")
    for key, table in results["accuracy"].items():
        print(f"\n  embedder {key}")
        print("    rule        5-shot  10-shot  20-shot")
        for name, row in table.items():
            print(f"    {name:<10} {row[5]:7.3f} {row[10]:8.3f} {row[20]:8.3f}")
    for key, rows in results["unknown"].items():
        print(f"\n  unknown threshold ({key}, 20 shots of classes 0-4 enrolled; classes 5-9 never enrolled)")
        print("    threshold  false-accept(never enrolled)  false-reject(enrolled)  accuracy(enrolled, accepted)")
        for row in rows:
            print(f"    {row['threshold']:.2f}       {row['false_accept']:.3f}                          "
                  f"{row['false_reject']:.3f}                   {row['accepted_accuracy']:.3f}")
    return 0


def unknown_sweep(train_e, pool, train_y, test_e, test_labels):
    enrolled = range(5)
    chosen = np.concatenate([pool[c][:20] for c in enrolled])
    base = KNNConfig()
    index = KNNIndex(np.stack([train_e[i] for i in chosen]), [str(x) for x in train_y[chosen]], power=base.power)
    known = np.isin(test_labels, list(enrolled))
    rows = []
    predictions = [index.predict(q, base) for q in test_e]
    scores = np.array([p.score for p in predictions])
    nearest = np.array([int(p.nearest) for p in predictions])
    for threshold in np.arange(0.60, 0.96, 0.025):
        accepted = scores >= threshold
        correct = accepted & known & (nearest == test_labels)
        rows.append({"threshold": round(float(threshold), 2),
                     "false_accept": round(float(accepted[~known].mean()), 4),
                     "false_reject": round(float((~accepted[known]).mean()), 4),
                     "accepted_accuracy": round(float(correct.sum() / max(1, (accepted & known).sum())), 4)})
    return rows


if __name__ == "__main__":
    sys.exit(main())
