#!/usr/bin/env python3
"""What the review inbox (#26) is worth: labelling the K moments it kept against labelling K frames at random.

Per seed: 4 classes (cat, coffee, rocket, motorcycle) are taught with 3 scenes each under the conditions of the
morning — the object large (30 % of a 640x480 frame), even light — composed from sample photos as
scripts/bench/region.py makes them (background, clutter, sensor noise). Then the day drifts: a camera stream of
"visits" (an object stays 6-10 s; frames 0.5 s apart, near-identical within a visit: a fixed camera) under strong
light changes (dark 0.35-0.55x or glaring 1.5-1.9x, a colour cast), smaller and partly cut off objects, new
viewpoints (mirrored, turned ±30°), and an object never taught (astronaut, one visit in five).

The stream goes through the real collection rules and inbox (teachcam.edge.teaching.inbox, default rules, its own
clock: the frame times) over the real KNN's predictions (the bundle's int8 embedder). Then, the same run:
* before: accuracy on a held-out stream of the same drifted day (another seed; the never-taught object's right
  answer is its own name, as a person labelling it would make it — so it counts as wrong until it is taught);
* inbox: the K most useful items (the inbox's own order) labelled with their frame's ground truth, enrolled;
* random: K frames drawn at random from the same stream, labelled and enrolled (mean of 5 draws);
for K = 5, 10, 20. Target: at K = 10 the inbox's gain is at least twice the random gain.

And the inbox's CPU cost in the real daemon: frames/s (unpaced, the drifted frames at 342x256, the morning's
store) with the inbox on vs off, alternating rounds (target ≥ 0.97x).

Usage: scripts/bench/inbox.py [--bundle build/default-bundle] [--seeds 3] [--rounds 5] [--json]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `teachcam` itself does; before numpy is imported

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from region import BACKGROUNDS, CLUTTER, OBJECTS, compose, photos  # noqa: E402 (scripts/bench/region.py)

from teachcam.edge.model.bundle import load_bundle  # noqa: E402
from teachcam.edge.model.models import Embedder  # noqa: E402
from teachcam.edge.model.preprocess import Preprocessor  # noqa: E402
from teachcam.edge.teaching.inbox import Collector, Inbox, InboxRules  # noqa: E402
from teachcam.edge.teaching.knn import KNNConfig, KNNIndex  # noqa: E402

TAUGHT = ("cat", "coffee", "rocket", "motorcycle")
NEW = "astronaut"
FRAME_S = 0.5
WHOLE = (0.0, 0.0, 1.0, 1.0)


def morning(rng, scenery, label: str) -> np.ndarray:
    objects, backgrounds, clutter = scenery
    return compose(rng, objects, backgrounds, clutter, label, 0.3, (0.2, 0.15, 0.8, 0.85))


def drifted_object(rng, image: Image.Image, drift: float) -> Image.Image:
    """A new viewpoint, as far from the morning's as ``drift`` (0-1): mirrored or not, turned up to ±30°·drift,
    up to 40 %·drift of it cut off."""
    if rng.random() < 0.5 * drift:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = image.convert("RGB").rotate(float(rng.uniform(-30, 30) * drift), expand=True, fillcolor=(90, 90, 90))
    keep_w, keep_h = 1 - rng.uniform(0, 0.4) * drift, 1 - rng.uniform(0, 0.3) * drift
    x0 = rng.uniform(0, 1 - keep_w) * image.width
    y0 = rng.uniform(0, 1 - keep_h) * image.height
    return image.crop((int(x0), int(y0), int(x0 + keep_w * image.width), int(y0 + keep_h * image.height)))


def visit_frames(rng, scenery, label: str, count: int, drift: float) -> list[np.ndarray]:
    """One visit, as far from the morning as ``drift`` (0-1): a fixed scene, frames that differ by sensor noise
    and a flicker of light. At drift 1: light 0.35-0.55x or 1.5-1.9x, a colour cast of ±25 %, the object 10-20 %
    of the frame (30 % in the morning), turned, mirrored, cut off."""
    objects, backgrounds, clutter = scenery
    seed = int(rng.integers(1 << 30))
    view = {label: drifted_object(np.random.default_rng(seed), objects[label], drift)}
    light = 1 - rng.uniform(0.45, 0.65) * drift if rng.random() < 0.5 else 1 + rng.uniform(0.5, 0.9) * drift
    cast = 1 + rng.uniform(-0.25, 0.25, 3) * drift
    fraction = 0.3 - rng.uniform(0.1, 0.2) * drift
    frames = []
    for _ in range(count):
        scene = compose(np.random.default_rng(seed), view, backgrounds, clutter, label, fraction, WHOLE)
        lit = ImageEnhance.Brightness(Image.fromarray(scene)).enhance(light * rng.uniform(0.97, 1.03))
        pixels = np.asarray(lit, np.float32) * cast + rng.normal(0, 3, scene.shape)
        frames.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return frames


def drifted_day(rng, scenery, visits: int, frames_per_visit: tuple[int, int], steady: bool) -> tuple[list, list]:
    """The day: its drift grows from 0 (the morning's conditions) to 1 over the visits; ``steady``: every visit at
    drift 1 (the hardest case for the inbox: every frame is as informative as another)."""
    frames, truth = [], []
    for v in range(visits):
        label = NEW if rng.random() < 0.2 else str(rng.choice(TAUGHT))
        count = int(rng.integers(*frames_per_visit))
        frames += visit_frames(rng, scenery, label, count, 1.0 if steady else v / max(visits - 1, 1))
        truth += [label] * count
    return frames, truth


def accuracy(rows, labels, test, truth) -> float:
    index, config = KNNIndex(np.stack(rows), labels), KNNConfig()
    return float(np.mean([index.predict(q, config).label == t for q, t in zip(test, truth, strict=True)]))


def collect(stream, pixels, truth, taught_rows, taught_labels, folder: Path) -> tuple[Inbox, dict]:
    """The stream through the daemon's collector (teachcam.edge.teaching.inbox.Collector), on the stream's own clock."""
    rules = InboxRules()
    index, config = KNNIndex(np.stack(taught_rows), taught_labels), KNNConfig()
    inbox = Inbox.open(folder, rules)
    collector = Collector(inbox, rules)
    truth_of, reasons = {}, {}
    for i, (vector, picture) in enumerate(zip(stream, pixels, strict=True)):
        p = index.predict(vector, config)
        kept = collector.observe(vector, picture, p.label, p.score, p.confidences, config.threshold, "bench",
                                 1e9 + i * FRAME_S)
        if kept is not None and kept[0] == "added":
            truth_of[kept[1].id] = truth[i]
            reasons[kept[1].reason] = reasons.get(kept[1].reason, 0) + 1
    return inbox, {"truth": truth_of, "reasons": reasons}


def one_seed(seed: int, embedder, preprocess, scenery, ks, steady: bool) -> dict:
    rng = np.random.default_rng(seed)
    taught_frames = [(label, morning(rng, scenery, label)) for label in TAUGHT for _ in range(3)]
    taught_rows = [embedder.embed(preprocess(f)) for _, f in taught_frames]
    taught_labels = [label for label, _ in taught_frames]
    stream, truth = drifted_day(rng, scenery, 40, (12, 21), steady)
    test, test_truth = drifted_day(np.random.default_rng(seed + 1000), scenery, 60, (3, 5), steady)
    pixels = [preprocess(f) for f in stream]
    stream_rows = [embedder.embed(p) for p in pixels]
    test_rows = [embedder.embed(preprocess(f)) for f in test]
    with tempfile.TemporaryDirectory() as tmp:
        inbox, kept = collect(stream_rows, pixels, truth, taught_rows, taught_labels, Path(tmp) / "inbox")
        ranked = [item["id"] for item in inbox.listing()]
        items = {i: inbox.items[i] for i in ranked}
    before = accuracy(taught_rows, taught_labels, test_rows, test_truth)
    out = {"seed": seed, "stream_frames": len(stream), "inbox_items": len(ranked), "reasons": kept["reasons"],
           "kept_truth": {label: list(kept["truth"].values()).count(label) for label in (*TAUGHT, NEW)},
           "before": before, "k": {}}
    draw = np.random.default_rng(seed + 7)
    for k in ks:
        chosen = ranked[:k]
        with_inbox = accuracy(taught_rows + [items[i].embedding for i in chosen],
                              taught_labels + [kept["truth"][i] for i in chosen], test_rows, test_truth)
        randoms = []
        for _ in range(5):
            picks = draw.choice(len(stream), size=k, replace=False)
            randoms.append(accuracy(taught_rows + [stream_rows[j] for j in picks],
                                    taught_labels + [truth[j] for j in picks], test_rows, test_truth))
        out["k"][k] = {"labelled": len(chosen), "inbox": with_inbox, "random": float(np.mean(randoms)),
                       "inbox_gain": with_inbox - before, "random_gain": float(np.mean(randoms)) - before}
    return out


def cpu_cost(args, embedder, preprocess, scenery) -> dict:
    """Frames/s of the real daemon with the inbox on vs off (the drifted frames, the morning's store)."""
    from daemon import background_daemon  # scripts/bench/daemon.py

    from teachcam.edge.teaching.teacher import Teacher

    rng = np.random.default_rng(99)
    frames, _ = drifted_day(rng, scenery, 12, (8, 12), args.steady)
    frames = [np.asarray(Image.fromarray(f).resize((342, 256), Image.Resampling.BILINEAR)) for f in frames]
    tmp = Path(tempfile.mkdtemp(prefix="inbox-bench-"))
    store = tmp / "store"
    with Teacher.open(store, embedder) as teacher:
        for label in TAUGHT:
            for _ in range(3):
                pixels = preprocess(morning(rng, scenery, label))
                teacher.add(label, embedder.embed(pixels), pixels, via="bench")
    rounds = {"off": [], "on": []}
    kept = []
    for r in range(args.rounds):
        for name in ("off", "on"):
            settings = {"inbox": {"enabled": name == "on"}}
            with background_daemon(args.bundle, store, frames, 2, tmp / f"{r}{name}.sock", settings=settings) as d:
                time.sleep(1.5)
                f0, t0 = d.stats.frames, time.perf_counter()
                time.sleep(args.seconds)
                rounds[name].append((d.stats.frames - f0) / (time.perf_counter() - t0))
                if d.review is not None:
                    kept.append((d.review.kept, d.review.merged))
    off, on = float(np.median(rounds["off"])), float(np.median(rounds["on"]))
    return {"off": round(off, 1), "on": round(on, 1), "ratio": round(on / off, 3),
            "rounds": {k: [round(x, 1) for x in v] for k, v in rounds.items()},
            "kept_merged_per_round": kept}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="build/default-bundle")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of the CPU cost (0: skip it)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per round")
    parser.add_argument("--steady", action="store_true", help="every visit fully drifted (not a day that drifts)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    embedder, preprocess = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    scenery = (photos(OBJECTS.values()), photos(BACKGROUNDS), photos(CLUTTER))
    scenery = ({label: scenery[0][name] for label, name in OBJECTS.items()}, scenery[1], scenery[2])
    ks = (5, 10, 20)
    seeds = []
    for seed in range(args.seeds):
        seeds.append(one_seed(seed, embedder, preprocess, scenery, ks, args.steady))
        if not args.json:
            s = seeds[-1]
            print(f"seed {seed}: {s['stream_frames']} frames, {s['inbox_items']} kept {s['reasons']} "
                  f"(truth {s['kept_truth']}); before {s['before']:.3f}; "
                  + "; ".join(f"K={k}: inbox {v['inbox']:.3f} random {v['random']:.3f}" for k, v in s["k"].items()),
                  flush=True)
    summary = {}
    for k in ks:
        gains = np.array([[s["k"][k]["inbox_gain"], s["k"][k]["random_gain"]] for s in seeds])
        summary[k] = {"inbox_gain": [float(gains[:, 0].mean()), float(gains[:, 0].std())],
                      "random_gain": [float(gains[:, 1].mean()), float(gains[:, 1].std())],
                      "inbox": float(np.mean([s["k"][k]["inbox"] for s in seeds])),
                      "random": float(np.mean([s["k"][k]["random"] for s in seeds])),
                      "gain_ratio": float(gains[:, 0].mean() / gains[:, 1].mean()) if gains[:, 1].mean() > 0 else None}
    out = {"machine": f"{platform.machine()}, Python {platform.python_version()}", "seeds": seeds, "summary": summary,
           "before": [float(np.mean([s["before"] for s in seeds])), float(np.std([s["before"] for s in seeds]))]}
    if args.rounds:
        out["cpu"] = cpu_cost(args, embedder, preprocess, scenery)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"\naccuracy on the drifted day's held-out stream ({args.seeds} seeds; mean ± sd), before: "
          f"{out['before'][0]:.3f} ± {out['before'][1]:.3f}")
    print("   K   after inbox   after random   inbox gain        random gain       ratio")
    for k, v in summary.items():
        ratio = f"{v['gain_ratio']:.1f}×" if v["gain_ratio"] is not None else "—"
        print(f"  {k:2d}   {v['inbox']:.3f}         {v['random']:.3f}          "
              f"{v['inbox_gain'][0]:+.3f} ± {v['inbox_gain'][1]:.3f}   {v['random_gain'][0]:+.3f} ± "
              f"{v['random_gain'][1]:.3f}   {ratio}")
    if "cpu" in out:
        c = out["cpu"]
        print(f"\ndaemon frames/s, inbox on vs off: {c['on']} vs {c['off']} ({c['ratio']}×; rounds {c['rounds']}; "
              f"items kept/merged per round {c['kept_merged_per_round']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
