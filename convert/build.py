"""``teachcam convert``: the default bundle — MobileNetV2 embedder (int8 + float32) and the ImageNet head.

Steps: load the backbone → preprocess calibration images exactly as the device will →
export float32 and int8 embedders → export the ImageNet head on the embedding (float32
and int8) → optionally compile for the Edge TPU → measure float vs int8 agreement → write
the bundle atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from teachcam.convert import calibration
from teachcam.convert.bundle_writer import BundleWriter, check_destination
from teachcam.convert.quantize import DEFAULT_RECIPE, RECIPE_NOTES, cosines, output_fidelity
from teachcam.edge.errors import ConvertError, DatasetError, TeachcamError
from teachcam.edge.model.bundle import Bundle, load_bundle
from teachcam.edge.model.images import read_image
from teachcam.edge.model.models import Embedder, Head
from teachcam.edge.model.preprocess import Preprocessor

log = logging.getLogger(__name__)
LABELS_FILE = Path(__file__).with_name("data") / "imagenet_labels.txt"


class NullProgress:
    """Progress reporting that does nothing (library use, tests)."""

    def step(self, description: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, message: str) -> None:
        log.info("%s", message)


@dataclass
class ConvertOptions:
    out: Path
    weights: str = "offline"
    input_size: int = 224
    alpha: float = 1.0
    family: str = "mobilenet_v2"
    calibration: Path | None = None
    calibration_samples: int = 128
    edgetpu: bool = False
    imx500: bool = False  # also the AI Camera's embedder (convert/imx500.py), with Sony's toolchain
    force: bool = False
    quantization: str = DEFAULT_RECIPE


# The int8 embedder's first convolution and first depthwise layer have the highest gain: their weights'
# rounding is learned (convert/rounding.py); more layers measured no better on held-out photos.
STEM_ROUNDING_LAYERS = 2


def imagenet_head(backbone):
    import keras

    inputs = keras.Input((backbone.embedding_size,), name="embedding")
    dense = keras.layers.Dense(backbone.classifier_kernel.shape[1], name="imagenet_logits")
    model = keras.Model(inputs, dense(inputs), name="imagenet_head")
    dense.set_weights([backbone.classifier_kernel, backbone.classifier_bias])
    return model


def agreement(bundle: Bundle, views: list[tuple[str, np.ndarray]], *, held_out: bool) -> dict:
    """Float vs int8 on the device runtime, over model-ready ``views`` (name, pixels): ImageNet top-1
    agreement and embedding cosine (mean and minimum)."""
    runners = {}
    head_name = "imagenet" if "imagenet" in bundle.heads else next(iter(bundle.heads))
    for precision in ("float32", "int8"):
        embedder = Embedder.create(bundle, precision)
        runners[precision] = (embedder, Head.create(bundle, head_name, embedder))
    rows, embeddings = [], {"float32": [], "int8": []}
    for name, pixels in views:
        row = {"image": name}
        for precision, (embedder, head) in runners.items():
            embeddings[precision].append(embedder.embed(pixels))
            probs = head.probabilities(embeddings[precision][-1])
            best = int(np.argmax(probs))
            row[precision] = {"top1": head.labels[best], "probability": round(float(probs[best]), 4)}
        rows.append(row)
    float32, int8 = np.array(embeddings["float32"]), np.array(embeddings["int8"])
    for row, cosine in zip(rows, cosines(float32, int8) if rows else [], strict=True):
        row["cosine"] = round(float(cosine), 5)
    embedding = output_fidelity(float32, int8)
    same = sum(r["float32"]["top1"] == r["int8"]["top1"] for r in rows)
    return {
        "images": len({r["image"].split("#")[0] for r in rows}),
        "views": len(rows),
        "held_out": held_out,
        "top1_agreement": round(same / max(1, len(rows)), 4),
        "mean_embedding_cosine": embedding["mean_cosine"],
        "min_embedding_cosine": embedding["min_cosine"],
        "recipe": bundle.manifest.get("quantization", {}).get("recipe", "unknown"),
        "per_image": rows,
    }


def split_photos(photos: list[Path]) -> tuple[list[Path], list[Path]]:
    """(calibrate, held out): every third photo only measures the int8 models; with fewer than three
    photos there is nothing to hold out and every photo calibrates."""
    if len(photos) < 3:
        return photos, []
    return [p for i, p in enumerate(photos) if i % 3 != 2], photos[2::3]


def evaluation_views(photos: list[Path], pre: Preprocessor, per_image: int = 4, seed: int = 7,
                     on_skip=None) -> list[tuple[str, np.ndarray]]:
    """Each photo's centre view and ``per_image - 1`` random crops/mirrors, model-ready, named ``photo#k``."""
    rng = np.random.default_rng(seed)
    views = []
    for path in photos:
        try:
            frames = calibration.variants(read_image(path, min_side=pre.shorter_side), pre, per_image, rng)
        except TeachcamError as exc:
            if on_skip:
                on_skip(path, exc)
            continue
        views += [(f"{path.name}#{k}", frame) for k, frame in enumerate(frames)]
    return views


def calibration_images(options: ConvertOptions) -> tuple[list[Path], str]:
    """The photos that calibrate the int8 models, and where they come from (for the manifest).

    Raises:
        DatasetError: the calibration folder has no readable images, or no sample photos are installed.
    """
    if options.calibration is not None:
        photos = calibration.image_files(options.calibration)
        if not photos:
            raise DatasetError(f"no images found under {options.calibration} for calibration")
        return photos, f"user images under {options.calibration}"
    photos = calibration.sample_photos()
    if not photos:
        raise DatasetError("no sample photos found for calibration: install scikit-image, or pass --calibration DIR")
    return photos, "sample photos shipped with scikit-image and scikit-learn"


def add_backbone(writer: BundleWriter, backbone, samples: list[np.ndarray], progress, *, source: str, images: int,
                 int8_embedder: tuple[bytes, dict] | None = None, recipe: str = DEFAULT_RECIPE) -> np.ndarray:
    """The float32 and int8 embedders (int8 calibrated on ``samples``, unless ``int8_embedder`` is given,
    already quantized) and the backbone, preprocessing, embedding and calibration sections. Returns the
    float embeddings of ``samples``, which calibrate the heads."""
    progress.step("exporting float32 embedder")
    float_path = writer.export(backbone.embedder, "embedder_float32.tflite", int8=False)
    progress.advance()
    if int8_embedder is not None:  # training quantized it already, on the same calibration set
        int8_path = writer.folder / "embedder_int8.tflite"
        int8_path.write_bytes(int8_embedder[0])
        details = int8_embedder[1]
    else:
        int8_path, details = quantize_embedder(writer, backbone, samples, progress, recipe)
    writer.add_model(int8_path, role="embedder", precision="int8", quantization=details)
    writer.manifest["quantization"] = {"recipe": details["recipe"], "description": RECIPE_NOTES[details["recipe"]]}
    writer.add_model(float_path, role="embedder", precision="float32")
    writer.manifest.update({
        "backbone": backbone.manifest_backbone(),
        "preprocessing": backbone.manifest_preprocessing(),
        "embedding": {"size": backbone.embedding_size, "l2_normalized": False,
                      "layer": "global average pool of the last 1x1 convolution (after ReLU6)"},
        "calibration": {"source": source, "images": images, "samples": len(samples),
                        "note": "first sample is a 0..255 gradient so the uint8 input keeps scale 1, zero point 0"},
    })
    batch = np.stack(samples).astype(np.float32)
    return np.concatenate([backbone.embedder(batch[i : i + 32], training=False).numpy()
                           for i in range(0, len(batch), 32)])


def quantize_embedder(writer: BundleWriter, backbone, samples: list[np.ndarray], progress,
                      recipe: str) -> tuple[Path, dict]:
    """The int8 embedder in the bundle, by ``recipe``; returns its path and what the recipe did."""
    progress.step(f"quantizing the int8 embedder ({recipe} ranges"
                  + (", learned stem rounding)" if recipe == "clipped" else ")"), total=len(samples))

    def representative():
        for sample in samples:
            progress.advance()
            yield sample.astype(np.float32)

    details: dict = {}
    path = writer.export(backbone.embedder, "embedder_int8.tflite", int8=True, representative=representative,
                         recipe=recipe, rounding_layers=STEM_ROUNDING_LAYERS if recipe == "clipped" else 0,
                         details=details)
    return path, details


def add_head(writer: BundleWriter, name: str, model, labels: list[str], embeddings: np.ndarray, progress, *,
             kind: str, recipe: str = DEFAULT_RECIPE) -> None:
    """A head on the embedding (Keras: embedding -> logits), float32 and int8 (calibrated on ``embeddings``)."""
    progress.step(f"exporting head {name!r} (float32 and int8)", total=2)
    float_path = writer.export(model, f"{name}_head_float32.tflite", int8=False)
    progress.advance()
    details: dict = {}
    int8_path = writer.export(model, f"{name}_head_int8.tflite", int8=True, representative=lambda: iter(embeddings),
                              recipe=recipe, details=details)
    progress.advance()
    writer.add_model(int8_path, role="head", precision="int8", head=name, output="logits", quantization=details)
    writer.add_model(float_path, role="head", precision="float32", head=name, output="logits")
    writer.add_labels(name, labels, kind=kind, output="logits")


def add_imagenet_head(writer: BundleWriter, backbone, embeddings: np.ndarray, progress,
                      recipe: str = DEFAULT_RECIPE) -> None:
    """The backbone's own 1000-class ImageNet classifier, unless fine-tuning made it unfit."""
    if backbone.classifier_kernel is None:
        return
    labels = LABELS_FILE.read_text(encoding="utf-8").splitlines()
    add_head(writer, "imagenet", imagenet_head(backbone), labels, embeddings, progress, kind="imagenet_classifier",
             recipe=recipe)


def add_agreement(writer: BundleWriter, photos: list[Path], progress, *, held_out: bool) -> None:
    """How far int8 agrees with float32 on ``photos`` (centre views and crops), on the device runtime.
    ``held_out``: none of these photos calibrated the int8 models."""
    pre = Preprocessor.from_manifest(writer.manifest["preprocessing"])
    views = evaluation_views(photos, pre, on_skip=lambda path, exc: progress.note(f"skipped {path.name}: {exc}"))
    progress.step(f"measuring float32 vs int8 on {len(views)} views of {len(photos)} "
                  + ("held-out " if held_out else "") + "photos", total=1)
    writer.manifest["evaluation"] = {"float_vs_int8": agreement(writer.draft(), views, held_out=held_out)}
    progress.advance()


def convert_bundle(options: ConvertOptions, progress=None) -> Bundle:
    """Build the default bundle at ``options.out`` and return it, checked.

    Raises:
        BundleError: ``out`` exists (without ``force``) or the result fails its own check.
        BackboneError / CheckpointError: the weights cannot be loaded.
        DatasetError: the calibration folder has no readable images.
    """
    from teachcam.convert.backbones import check_family, load_backbone

    progress = progress or NullProgress()
    check_destination(Path(options.out), options.force)
    check_family(options.family, options.alpha, options.input_size, options.weights)
    imx500_weights = imx500_preflight(options)
    photos, source = calibration_images(options)
    photos, held_out = split_photos(photos)
    progress.step("loading the backbone weights")
    backbone = load_backbone(options.weights, options.input_size, options.alpha, options.family)
    progress.advance()
    pre = Preprocessor.from_manifest(backbone.manifest_preprocessing())
    progress.step("preparing calibration images", total=len(photos))
    samples = calibration.representative_pixels(
        photos, pre, per_image=max(1, options.calibration_samples // len(photos)), limit=options.calibration_samples,
        on_image=lambda _: progress.advance(),
        on_skip=lambda path, exc: progress.note(f"skipped calibration image {path.name}: {exc}"))
    with BundleWriter(options.out, force=options.force) as writer:
        embeddings = add_backbone(writer, backbone, samples, progress, source=source, images=len(photos),
                                  recipe=options.quantization)
        writer.manifest["calibration"]["held_out_images"] = [p.name for p in held_out]
        add_imagenet_head(writer, backbone, embeddings, progress, recipe=options.quantization)
        if options.edgetpu:
            progress.step("compiling for the Edge TPU")
            writer.compile_edgetpu(writer.folder / "embedder_int8.tflite", progress, role="embedder")
            progress.advance()
        add_agreement(writer, held_out or photos, progress, held_out=bool(held_out))
        if imx500_weights is not None:
            from teachcam.convert.imx500 import build_for_imx500

            views = evaluation_views(held_out or photos, pre)
            writer.manifest["imx500"] = build_for_imx500(writer.folder, imx500_weights, np.stack(samples),
                                                         np.stack([pixels for _, pixels in views]), progress)
    return load_bundle(options.out)


def imx500_preflight(options: ConvertOptions) -> Path | None:
    """With ``imx500``: the torchvision checkpoint the sensor's embedder is built from, once the toolchain is known to
    be there (one line saying what to install when it is not) — before any slow work."""
    if not options.imx500:
        return None
    from teachcam.convert.backbones import find_offline_weights
    from teachcam.convert.imx500 import check_toolchain

    if (options.family, options.alpha, options.input_size) != ("mobilenet_v2", 1.0, 224) or not (
            options.weights == "offline" or str(options.weights).endswith(".pth")):
        raise ConvertError("--imx500 builds torchvision's MobileNetV2 1.0 at 224 px (--weights offline or a .pth "
                           "checkpoint): the graph the AI Camera's converter was verified with")
    check_toolchain()
    return find_offline_weights() if options.weights == "offline" else Path(options.weights)
