"""What every ``teachcam train`` head shares: the options, the data and calibration sets, the Keras
progress line, class weights, the held-out evaluation facts, the report and the int8-drop check.

:mod:`teachcam.convert.train` (dense, finetune) and :mod:`teachcam.convert.cnn` both build on this
module; neither imports the other's internals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from teachcam.convert import report
from teachcam.convert.datasets import Dataset
from teachcam.convert.quantize import output_fidelity
from teachcam.edge.errors import QuantizationDropError
from teachcam.edge.model.bundle import Bundle
from teachcam.edge.model.models import Embedder, Head
from teachcam.edge.model.preprocess import Preprocessor

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    data: Path
    out: Path
    head: str = "dense"
    head_name: str = "trained"
    val: Path | None = None
    test: Path | None = None  # the final held-out evaluation (default: the validation data)
    val_fraction: float = 0.2
    limit: int | None = None
    epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    hidden: int = 0
    dropout: float = 0.2
    patience: int = 6
    unfreeze: int = 3  # finetune: the backbone's last N blocks are trained
    input_size: int | None = None  # cnn: the model's input size (default 28)
    max_int8_drop: float | None = None
    weights: str = "offline"
    edgetpu: bool = False
    force: bool = False
    seed: int = 0
    quantization: str = "clipped"  # the int8 recipe (convert/quantize.py)


def preprocess_dataset(pre: Preprocessor, dataset: Dataset, progress) -> list[np.ndarray]:
    """Model-input pixels of every image, exactly as the device will preprocess frames."""
    pixels = []
    progress.step(f"preprocessing {len(dataset)} images", total=len(dataset))
    for i in range(len(dataset)):
        pixels.append(pre(dataset.pixels(i, min_side=pre.shorter_side)))
        progress.advance()
    return pixels


def calibration_set(pixels: list[np.ndarray], seed: int, count: int = 128) -> list[np.ndarray]:
    """The representative images for int8: up to ``count`` of the user's training images."""
    rng = np.random.default_rng(seed)
    return [pixels[i] for i in rng.permutation(len(pixels))[:count]]


class KerasProgress:
    """A keras callback that feeds the rich progress: one tick per epoch with loss and accuracy."""

    def __new__(cls, keras, progress, epochs, head="dense"):
        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                progress.step("training the dense head" if head == "dense" else "fine-tuning", total=epochs)

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                progress.advance()
                progress.note(f"epoch {epoch + 1:3d}: loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.3f}"
                              f"  val_loss {logs.get('val_loss', 0):.4f} val_acc {logs.get('val_accuracy', 0):.3f}")

        return Callback()


def evaluate(bundle: Bundle, head_name: str, pixels: list[np.ndarray], labels: np.ndarray) -> dict:
    """Held-out class probabilities on the device runtime, float32 end to end and int8 end to end."""
    out = {}
    for precision in ("float32", "int8"):
        embedder = Embedder.create(bundle, precision)
        head = Head.create(bundle, head_name, embedder)
        out[precision] = np.array([head.probabilities(embedder.embed(p)) for p in pixels])
    return out


def write_report(folder: Path, options: TrainOptions, history: dict, pixels: list[np.ndarray], labels: np.ndarray,
                 outputs: dict[str, np.ndarray], classes: list[str], facts: dict) -> dict:
    """The report folder (curves, confusion matrices, sample predictions, metrics.json); returns the metrics.
    ``outputs``: per precision, one row of class scores per held-out image."""
    predicted = {p: np.argmax(rows, axis=1) for p, rows in outputs.items()}
    folder.mkdir()
    missing = report.missing_glyphs(classes)
    if missing:
        log.warning("no installed font can draw %s in the class names: they show as boxes in the report's PNGs "
                    "(metrics.json has them right); install a font that has them, e.g. Debian's fonts-noto-cjk", missing)
    accuracy = {p: float((predicted[p] == labels).mean()) for p in predicted}
    drop = (accuracy["float32"] - accuracy["int8"]) * 100
    matrices = {p: report.confusion(labels, predicted[p], len(classes)) for p in predicted}
    report.plot_curves(history, folder / "curves.png")
    for precision, matrix in matrices.items():
        report.plot_confusion(matrix, classes, folder / f"confusion_{precision}.png",
                              f"{precision}: accuracy {accuracy[precision]:.3f}")
    report.plot_samples(pixels, [classes[i] for i in labels], [classes[i] for i in predicted["int8"]],
                        folder / "samples_int8.png")
    failed = options.max_int8_drop is not None and drop > options.max_int8_drop
    metrics = {
        **facts,
        "epochs_run": len(history.get("loss", [])),
        "accuracy": {"float32": round(accuracy["float32"], 4), "int8": round(accuracy["int8"], 4),
                     "int8_drop_points": round(drop, 2)},
        # how closely the int8 model's class scores follow float32's on the same images (the recipe's fidelity)
        "int8_vs_float32": {**output_fidelity(outputs["float32"], outputs["int8"]), "recipe": options.quantization},
        "per_class_int8": report.per_class(matrices["int8"], classes),
        "per_class_float32": report.per_class(matrices["float32"], classes),
        "max_int8_drop": options.max_int8_drop, "quantization_check": "failed" if failed else "passed",
    }
    report.write_metrics(folder / "metrics.json", metrics)
    return metrics


def check_drop(outcome: dict, options: TrainOptions, path: Path) -> None:
    if outcome["quantization_check"] == "failed":
        raise QuantizationDropError(
            f"int8 lost {outcome['accuracy']['int8_drop_points']:.2f} accuracy points (float32 "
            f"{outcome['accuracy']['float32']:.3f}, int8 {outcome['accuracy']['int8']:.3f}), more than "
            f"--max-int8-drop {options.max_int8_drop}; the bundle was written to {path} and marked")


def compile_for_logits(keras, model, learning_rate: float) -> None:
    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])


def held_out_set(pre: Preprocessor, val_set: Dataset, val_pixels: list[np.ndarray], test_set: Dataset | None,
                 progress) -> tuple[Dataset, list[np.ndarray], str]:
    """What the final float32/int8 accuracy is measured on: --test if given, else the validation split."""
    if test_set is None:
        return val_set, val_pixels, "validation"
    return test_set, preprocess_dataset(pre, test_set, progress), "test"


def report_facts(head: str, data: Dataset, train_set: Dataset, val_set: Dataset, held_out: Dataset, held_name: str,
                 trainable: int) -> dict:
    """The metrics.json entries that describe the run (the accuracies are added by write_report)."""
    return {"head": head, "classes": data.classes, "train_images": len(train_set), "validation_images": len(val_set),
            "evaluated_on": held_name, "evaluation_images": len(held_out), "trainable_parameters": trainable,
            "skipped_images": len(data.skipped)}


def summarize(model, progress) -> int:
    """Print the model summary with the trainable parameter count; returns that count."""
    summary: list[str] = []
    model.summary(print_fn=lambda line, **_: summary.append(line))
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    progress.note("\n".join(summary) + f"\ntrainable parameters: {trainable:,} of {total:,}")
    return trainable


def balanced_class_weight(labels: np.ndarray, classes: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=classes)
    return {i: float(len(labels) / (len(counts) * max(1, n))) for i, n in enumerate(counts)}
