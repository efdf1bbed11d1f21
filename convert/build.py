"""``teachcam convert``: the default bundle — MobileNetV2 embedder (int8 + float32) and the ImageNet head.

Steps: load the backbone → preprocess calibration images exactly as the device will →
export float32 and int8 embedders → export the ImageNet head on the embedding (float32
and int8) → optionally compile for the Edge TPU → measure float vs int8 agreement → write
the bundle atomically.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert import calibration
from convert.bundle_writer import check_destination, describe_model, staging_folder, write_manifest
from convert.export import write_tflite
from edge.bundle import Bundle, load_bundle
from edge.errors import DatasetError
from edge.images import read_image
from edge.models import Embedder, Head
from edge.preprocess import Preprocessor

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
    force: bool = False


def imagenet_head(backbone):
    import keras

    inputs = keras.Input((backbone.embedding_size,), name="embedding")
    dense = keras.layers.Dense(backbone.classifier_kernel.shape[1], name="imagenet_logits")
    model = keras.Model(inputs, dense(inputs), name="imagenet_head")
    dense.set_weights([backbone.classifier_kernel, backbone.classifier_bias])
    return model


def agreement(bundle: Bundle, paths: list[Path]) -> dict:
    """Float vs int8 on the device runtime: top-1 agreement and embedding cosine similarity."""
    pre = Preprocessor.from_manifest(bundle.preprocessing)
    runners = {}
    head_name = "imagenet" if "imagenet" in bundle.heads else next(iter(bundle.heads))
    for precision in ("float32", "int8"):
        embedder = Embedder.create(bundle, precision)
        runners[precision] = (embedder, Head.create(bundle, head_name, embedder))
    rows = []
    for path in paths:
        pixels = pre(read_image(path, min_side=pre.shorter_side))
        row = {"image": path.name}
        embeddings = {}
        for precision, (embedder, head) in runners.items():
            embeddings[precision] = embedder.embed(pixels)
            probs = head.probabilities(embeddings[precision])
            best = int(np.argmax(probs))
            row[precision] = {"top1": head.labels[best], "probability": round(float(probs[best]), 4)}
        a, b = embeddings["float32"], embeddings["int8"]
        row["cosine"] = round(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)), 5)
        rows.append(row)
    same = sum(r["float32"]["top1"] == r["int8"]["top1"] for r in rows)
    return {
        "images": len(rows),
        "top1_agreement": round(same / max(1, len(rows)), 4),
        "mean_embedding_cosine": round(float(np.mean([r["cosine"] for r in rows])) if rows else 0.0, 5),
        "per_image": rows,
    }


@dataclass
class ExtraHead:
    """A head trained on the embedding, exported next to the ImageNet head."""

    name: str
    model: object  # keras: embedding -> logits
    labels: list[str]
    kind: str = "trained_dense"


def convert_bundle(options: ConvertOptions, progress=None, *, calibration_pixels: list[np.ndarray] | None = None,
                   heads: tuple[ExtraHead, ...] = (), finish=None, backbone=None,
                   int8_embedder: bytes | None = None) -> Bundle:
    """Build the default bundle at ``options.out`` and return it, checked.

    Raises:
        BundleError: ``out`` exists (without ``force``) or the result fails its own check.
        BackboneError / CheckpointError: the weights cannot be loaded.
        DatasetError: the calibration folder has no readable images.
    """
    from convert.backbones import load_backbone

    progress = progress or NullProgress()
    out = Path(options.out)
    check_destination(out, options.force)
    if backbone is None:
        from convert.backbones import check_family

        check_family(options.family, options.alpha, options.input_size, options.weights)
    if calibration_pixels is not None:
        photos, source = [], "the user's own training images"
    elif options.calibration is not None:
        photos = calibration.image_files(options.calibration)
        if not photos:
            raise DatasetError(f"no images found under {options.calibration} for calibration")
        source = f"user images under {options.calibration}"
    else:
        photos = calibration.sample_photos()
        if not photos:
            raise DatasetError("no sample photos found for calibration: install scikit-image, or pass --calibration DIR")
        source = "sample photos shipped with scikit-image and scikit-learn"

    if backbone is None:
        progress.step("loading the backbone weights")
        backbone = load_backbone(options.weights, options.input_size, options.alpha, options.family)
        progress.advance()
    preprocessing = backbone.manifest_preprocessing()
    pre = Preprocessor.from_manifest(preprocessing)

    if calibration_pixels is not None:
        samples = [calibration.full_range_sample(pre.crop_height, pre.crop_width), *calibration_pixels]
        samples = samples[: options.calibration_samples + 1]
    else:
        progress.step("preparing calibration images", total=len(photos))
        samples = calibration.representative_pixels(
            photos, pre, per_image=max(1, options.calibration_samples // len(photos)),
            limit=options.calibration_samples, on_image=lambda _: progress.advance(),
            on_skip=lambda path, exc: progress.note(f"skipped calibration image {path.name}: {exc}"))

    with staging_folder(out, options.force) as folder:
        progress.step("exporting float32 embedder")
        float_path = write_tflite(backbone.embedder, folder / "embedder_float32.tflite", int8=False)
        progress.advance()

        int8_path = folder / "embedder_int8.tflite"
        if int8_embedder is not None:  # already quantized (training did it, on the same calibration set)
            int8_path.write_bytes(int8_embedder)
        else:
            progress.step("quantizing int8 embedder", total=len(samples))

            def representative():
                for sample in samples:
                    progress.advance()
                    yield sample.astype(np.float32)

            write_tflite(backbone.embedder, int8_path, int8=True, representative=representative)

        batch = np.stack(samples).astype(np.float32)
        embeddings = np.concatenate([backbone.embedder(batch[i : i + 32], training=False).numpy()
                                     for i in range(0, len(batch), 32)])
        (folder / "labels").mkdir()
        head_models, head_sections = [], {}
        if backbone.classifier_kernel is not None:  # a fine-tuned backbone no longer fits the ImageNet head
            progress.step("exporting the ImageNet head", total=2)
            head = imagenet_head(backbone)
            head_float = write_tflite(head, folder / "imagenet_head_float32.tflite", int8=False)
            progress.advance()
            head_int8 = write_tflite(head, folder / "imagenet_head_int8.tflite", int8=True,
                                     representative=lambda: iter(embeddings))
            progress.advance()
            shutil.copyfile(LABELS_FILE, folder / "labels" / "imagenet.txt")
            head_models += [
                describe_model(head_int8, role="head", precision="int8", head="imagenet", output="logits"),
                describe_model(head_float, role="head", precision="float32", head="imagenet", output="logits"),
            ]
            head_sections["imagenet"] = {"labels": "labels/imagenet.txt", "num_classes": 1000,
                                         "kind": "imagenet_classifier", "output": "logits"}
        for extra in heads:
            progress.step(f"exporting head {extra.name!r} (float32 and int8)", total=2)
            head_float_path = write_tflite(extra.model, folder / f"{extra.name}_head_float32.tflite", int8=False)
            progress.advance()
            head_int8_path = write_tflite(extra.model, folder / f"{extra.name}_head_int8.tflite", int8=True,
                                          representative=lambda: iter(embeddings))
            progress.advance()
            (folder / "labels" / f"{extra.name}.txt").write_text("\n".join(extra.labels) + "\n", encoding="utf-8")
            head_models += [
                describe_model(head_int8_path, role="head", precision="int8", head=extra.name, output="logits"),
                describe_model(head_float_path, role="head", precision="float32", head=extra.name, output="logits"),
            ]
            head_sections[extra.name] = {"labels": f"labels/{extra.name}.txt", "num_classes": len(extra.labels),
                                         "kind": extra.kind, "output": "logits"}

        models = [
            describe_model(int8_path, role="embedder", precision="int8"),
            describe_model(float_path, role="embedder", precision="float32"),
            *head_models,
        ]
        if options.edgetpu:
            progress.step("compiling for the Edge TPU")
            models += _compile_edgetpu(folder, int8_path, progress)
            progress.advance()

        manifest = {
            "backbone": backbone.manifest_backbone(),
            "preprocessing": preprocessing,
            "embedding": {"size": backbone.embedding_size, "l2_normalized": False,
                          "layer": "global average pool of the last 1x1 convolution (after ReLU6)"},
            "models": models,
            "heads": head_sections,
            "calibration": {"source": source, "images": len(photos), "samples": len(samples),
                            "note": "first sample is a 0..255 gradient so the uint8 input keeps scale 1, zero point 0"},
        }
        write_manifest(folder, manifest)

        progress.step("measuring float32 vs int8 agreement", total=1)
        evaluation = agreement(load_bundle(folder), photos or calibration.sample_photos())
        manifest["evaluation"] = {"float_vs_int8": evaluation}
        progress.advance()
        if finish is not None:  # e.g. training: held-out accuracy on the device runtime, the report folder
            manifest.update(finish(load_bundle(folder, verify=False), folder))
        write_manifest(folder, manifest)
    return load_bundle(out)


def _compile_edgetpu(folder: Path, int8_path: Path, progress) -> list[dict]:
    return compile_edgetpu_entry(folder, int8_path, progress, role="embedder")


def compile_edgetpu_entry(folder: Path, int8_path: Path, progress, *, role: str, head: str | None = None) -> list[dict]:
    """Compile one int8 model; its manifest entry (role, head) marked ``edgetpu``, or nothing if it cannot be."""
    from convert.edgetpu import compile_for_edgetpu

    result = compile_for_edgetpu(int8_path, folder)
    progress.note(result.message)
    if result.compiled is None:
        return []
    # The compiled model holds an Edge TPU custom op that a CPU interpreter cannot allocate:
    # its tensors are the int8 model's, so the entry is derived from that one.
    from edge.bundle import file_sha256

    entry = describe_model(int8_path, role=role, precision="int8", head=head)
    entry.update(file=result.compiled.name, sha256=file_sha256(result.compiled), bytes=result.compiled.stat().st_size,
                 edgetpu=True, compiled_from=int8_path.name, ops_on_tpu=result.ops_on_tpu, ops_on_cpu=result.ops_on_cpu,
                 cpu_ops=result.cpu_ops, off_chip_parameters=result.off_chip)
    return [entry]
