#!/usr/bin/env python3
"""KNN prediction time and enrollment latency, against a plain float32 matrix-vector product.

Stores of 1,000 and 10,000 examples (real int8 embeddings of Fashion-MNIST training images,
10 classes; queries from its test set) — prediction time per query for:
  matvec     a plain float32 10,000 x 1,280 matrix-vector product (the baseline the issue names)
  exact      teachcam's scoring with every example scored exactly
  teachcam   teachcam's default (two-stage above 512 examples), and how often it agrees with exact
and enrollment latency from call to durable on disk (fsync'd) with the store at those sizes.

Usage: scripts/bench/knn_speed.py [--bundle build/default-bundle] [--one-blas-thread] [--json] [--store-dir DIR]
"""

from __future__ import annotations

import os
import sys

if "--one-blas-thread" in sys.argv:  # as the daemon runs (edge/cli.py); must precede the numpy import
    os.environ["OPENBLAS_NUM_THREADS"] = "1"

import argparse
import json
import platform
import tempfile
import time

import numpy as np

from teachcam.edge.teaching import knn
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex
from teachcam.edge.teaching.store import EnrollmentStore, Snapshot
from teachcam.edge.teaching.teacher import Teacher


def real_features(bundle_path: str, n: int, queries: int):
    """int8 embeddings of Fashion-MNIST training images (and test queries), with their labels."""
    from teachcam.convert.idx import load_fashion_mnist
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.models import Embedder
    from teachcam.edge.model.preprocess import Preprocessor

    bundle = load_bundle(bundle_path)
    embedder, pre = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")

    def embed(images):
        out = np.stack([embedder.embed(pre(np.repeat(im[:, :, None], 3, axis=2))) for im in images])
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return (embed(train_x[:n]), [f"class {i}" for i in train_y[:n]], embed(test_x[:queries]),
            [f"class {i}" for i in test_y[:queries]])


def per_call(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--store-dir", default=None, help="where to write the enrollment-latency stores (a real disk)")
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--one-blas-thread", action="store_true",
                        help="numpy with one OpenBLAS thread, as `teachcam` runs it (default: numpy's default)")
    args = parser.parse_args()
    config = KNNConfig()
    started = time.monotonic()
    all_matrix, all_labels, queries, truth = real_features(args.bundle, 10_000, 300)
    print(f"embedded 10,300 Fashion-MNIST images in {time.monotonic() - started:.0f} s", file=sys.stderr)
    out = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__, "sizes": {}}
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.models import Embedder

    embedder = Embedder.create(load_bundle(args.bundle), "int8")
    blank = np.zeros((224, 224, 3), np.uint8)
    out["invoke_ms"] = per_call(lambda: embedder.embed(blank), 200)
    out["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    for n in (1_000, 5_000, 10_000):
        matrix, labels = all_matrix[:n], all_labels[:n]
        row = {"matvec_ms": per_call(lambda m=matrix, q=queries[0]: m @ q, 300)}
        limit = knn.EXACT_LIMIT
        knn.EXACT_LIMIT = 10**9
        exact = KNNIndex(matrix, labels)
        knn.EXACT_LIMIT = limit
        fast = KNNIndex(matrix, labels)
        row["exact_ms"] = per_call(lambda q=queries[0], index=exact: index.predict(q, config), 300)
        row["teachcam_ms"] = per_call(lambda q=queries[0], index=fast: index.predict(q, config), 300)
        exact_answers = [exact.predict(q, config).nearest for q in queries]
        fast_answers = [fast.predict(q, config).nearest for q in queries]
        row["agreement_with_exact"] = float(np.mean([a == b for a, b in zip(exact_answers, fast_answers, strict=True)]))
        row["accuracy_exact"] = float(np.mean([a == t for a, t in zip(exact_answers, truth, strict=True)]))
        row["accuracy_teachcam"] = float(np.mean([a == t for a, t in zip(fast_answers, truth, strict=True)]))
        row["enroll_ms"] = enroll_latency(matrix, labels, args.store_dir)
        out["sizes"][n] = row
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"KNN over 1280-d embeddings, 10 classes ({out['machine']}, Python {out['python']}, numpy {out['numpy']}, "
          f"BLAS threads {out['blas_threads']}); median ms per call; int8 embedder invoke {out['invoke_ms']:.2f} ms")
    print("  examples   matvec   exact   teachcam  (÷ matvec)  % of invoke  agrees-with-exact  accuracy exact/teachcam"
          "  enroll→durable")
    for n, r in out["sizes"].items():
        ratio = r["teachcam_ms"] / r["matvec_ms"]
        share = r["teachcam_ms"] / out["invoke_ms"] * 100
        print(f"  {n:8d}  {r['matvec_ms']:7.3f} {r['exact_ms']:7.3f}  {r['teachcam_ms']:8.3f}   ({ratio:.2f}×)   {share:6.1f}%"
              f"        {r['agreement_with_exact'] * 100:5.1f}%         {r['accuracy_exact']:.3f} / {r['accuracy_teachcam']:.3f}"
              f"        {r['enroll_ms']:7.1f} ms")
    return 0


def enroll_latency(matrix, labels, where) -> float:
    with tempfile.TemporaryDirectory(dir=where) as folder:
        store = EnrollmentStore.open(folder, fingerprint="bench", embedding_size=matrix.shape[1])
        from teachcam.edge.teaching.store import Example

        examples = [Example(label, "0" * 64, float(i)) for i, label in enumerate(labels)]
        store.commit(Snapshot("bench", matrix.shape[1], examples, matrix, sorted(set(labels))))
        teacher = Teacher(store, cap=10**6)
        pixels = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
        times = []
        for i in range(5):
            t = time.perf_counter()
            teacher.add("class 0", matrix[i], np.roll(pixels, i))
            times.append(time.perf_counter() - t)
        store.close()
        return float(np.median(times)) * 1e3


if __name__ == "__main__":
    sys.exit(main())
