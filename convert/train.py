"""``teachcam train``: a head trained on the user's images, quantized, measured, bundled.

``dense``: the backbone frozen and quantized to int8 first (calibrated on the user's own
images); one embedding per image from that int8 embedder — what the device will compute —
and a softmax dense head (optionally a hidden layer with dropout) trained on them with
class-balanced weights, a validation split and early stopping. ``finetune``: the backbone's
last blocks trained with the head on class-balanced batches (float), then the tuned embedder
quantized and the head refitted on its int8 outputs. ``cnn``: see :mod:`convert.cnn`. The bundle holds
the embedders (int8 calibrated on the user's own training images, and float32), the
ImageNet head and the trained head (float32 and int8); the held-out set is then classified
on the device runtime with float32 and with int8 end to end, and the report folder shows
curves, confusion matrices, sample predictions and per-class precision/recall.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert import report
from convert.build import ConvertOptions, ExtraHead, NullProgress, convert_bundle
from convert.datasets import Dataset, limit_per_class, load_dataset, stratified_split
from edge.bundle import Bundle
from edge.errors import TeachcamError
from edge.models import Embedder, Head
from edge.preprocess import Preprocessor

log = logging.getLogger(__name__)


class QuantizationDropError(TeachcamError):
    """int8 cost more accuracy than --max-int8-drop allows (the bundle is written and marked)."""

    exit_code = 3


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


def quantize_embedder(backbone, calibration: list[np.ndarray], progress) -> bytes:
    from convert.calibration import full_range_sample
    from convert.export import to_tflite

    samples = [full_range_sample(*calibration[0].shape[:2]), *calibration]
    progress.step("quantizing the int8 embedder on your images", total=len(samples))

    def representative():
        for sample in samples:
            progress.advance()
            yield sample.astype(np.float32)

    return to_tflite(backbone.embedder, int8=True, representative=representative)


def embed_int8(blob: bytes, pixels: list[np.ndarray], progress, what: str) -> np.ndarray:
    """Embeddings from the int8 TFLite embedder (on the device runtime), dequantized."""
    import tempfile

    from edge.models import TFLiteModel

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embedder_int8.tflite"
        path.write_bytes(blob)
        model = TFLiteModel(path)
        progress.step(f"embedding {len(pixels)} {what} images with the int8 embedder", total=len(pixels))
        out = []
        for p in pixels:
            out.append(model.run(p))
            progress.advance()
    return np.stack(out)


def build_dense_head(keras, size: int, classes: int, hidden: int, dropout: float):
    inputs = keras.Input((size,), name="embedding")
    x = inputs
    if hidden:
        x = keras.layers.Dense(hidden, activation="relu", name="hidden")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, logits, name="dense_head")


class _KerasProgress:
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


def build_finetune_model(keras, backbone, classes: int, options: TrainOptions):
    """The backbone with its last ``options.unfreeze`` blocks trainable (BatchNorm kept frozen) and a head.

    Returns (model for training, head model on the embedding for export, backbone for the bundle).
    """
    import dataclasses
    import re

    embedder = backbone.embedder
    last_block = max(int(m.group(1)) for layer in embedder.layers if (m := re.match(r"features_(\d+)_", layer.name)))
    first = last_block + 1 - options.unfreeze
    for layer in embedder.layers:
        match = re.match(r"features_(\d+)_", layer.name)
        layer.trainable = bool(match and int(match.group(1)) >= first) and not isinstance(
            layer, keras.layers.BatchNormalization)
    inputs = keras.Input(embedder.inputs[0].shape[1:], name="pixels")
    features = embedder(inputs, training=False)  # BatchNorm statistics stay as trained on ImageNet
    dropout = keras.layers.Dropout(options.dropout, name="dropout")
    dense = keras.layers.Dense(classes, name="logits")
    model = keras.Model(inputs, dense(dropout(features)), name="finetune")
    head_input = keras.Input((features.shape[-1],), name="embedding")
    head = keras.Model(head_input, dense(head_input), name="finetuned_head")
    tuned = dataclasses.replace(backbone, classifier_kernel=None, classifier_bias=None,
                                weights={**backbone.weights, "fine_tuned": f"last {options.unfreeze} blocks on "
                                                                           "the user's images"})
    return model, head, tuned


class BalancedBatches:
    """Batches with the same number of examples of every class (sampled with replacement)."""

    def __new__(cls, keras, pixels, labels, batch_size, seed):
        class Batches(keras.utils.PyDataset):
            def __init__(self):
                super().__init__()
                self.rng = np.random.default_rng(seed)
                self.by_class = [np.flatnonzero(labels == c) for c in range(int(labels.max()) + 1)]
                self.per_class = max(1, batch_size // len(self.by_class))

            def __len__(self):
                return max(1, len(labels) // (self.per_class * len(self.by_class)))

            def __getitem__(self, index):
                chosen = np.concatenate([self.rng.choice(m, self.per_class) for m in self.by_class])
                self.rng.shuffle(chosen)
                return np.stack([pixels[i] for i in chosen]).astype(np.float32), labels[chosen]

        return Batches()


def evaluate(bundle: Bundle, head_name: str, pixels: list[np.ndarray], labels: np.ndarray) -> dict:
    """Held-out accuracy on the device runtime, float32 end to end and int8 end to end."""
    out = {}
    for precision in ("float32", "int8"):
        embedder = Embedder.create(bundle, precision)
        head = Head.create(bundle, head_name, embedder)
        predicted = np.array([int(np.argmax(head.probabilities(embedder.embed(p)))) for p in pixels])
        out[precision] = predicted
    return out


def write_report(folder: Path, options: TrainOptions, history: dict, pixels: list[np.ndarray], labels: np.ndarray,
                 predicted: dict[str, np.ndarray], classes: list[str], facts: dict) -> dict:
    """The report folder (curves, confusion matrices, sample predictions, metrics.json); returns the metrics."""
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


def load_data(options: TrainOptions, progress) -> tuple[Dataset, Dataset, Dataset, Dataset | None]:
    """(all data, training split, validation split, test set or None) as the options say."""
    data = load_dataset(options.data)
    if options.limit:
        data = limit_per_class(data, options.limit, options.seed)
    if options.val is not None:
        train_set, val_set = data, load_dataset(options.val)
        if val_set.classes != train_set.classes:
            raise TeachcamError(f"--val has classes {val_set.classes}, the training data {train_set.classes}")
    else:
        train_set, val_set = stratified_split(data, options.val_fraction, options.seed)
    test_set = load_dataset(options.test) if options.test is not None else None
    if test_set is not None and test_set.classes != data.classes:
        raise TeachcamError(f"--test has classes {test_set.classes}, the training data {data.classes}")
    progress.note(f"{len(train_set)} training and {len(val_set)} validation images in {len(data.classes)} classes: "
                  + ", ".join(f"{k} {v}" for k, v in train_set.counts().items()))
    return data, train_set, val_set, test_set


def int8_features(backbone, calibration: list[np.ndarray], train_pixels: list[np.ndarray],
                  val_pixels: list[np.ndarray], progress) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Quantize the embedder once on the user's images; its int8 outputs — what the device computes —
    for the training and validation images. Returns (int8 model, training features, validation features)."""
    blob = quantize_embedder(backbone, calibration, progress)
    return blob, embed_int8(blob, train_pixels, progress, "training"), embed_int8(blob, val_pixels, progress, "validation")


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


def train(options: TrainOptions, progress=None) -> Bundle:
    """Train, export, evaluate and write the bundle. Returns it.

    Raises:
        DatasetError: bad training data. QuantizationDropError: int8 lost more than allowed.
    """
    import keras

    from convert.backbones import load_backbone

    progress = progress or NullProgress()
    if options.head not in ("dense", "finetune", "cnn"):
        raise TeachcamError(f"unknown --head {options.head}: use dense, finetune or cnn")
    data, train_set, val_set, test_set = load_data(options, progress)
    if options.head == "cnn":
        from convert.cnn import train_cnn

        return train_cnn(options, data, train_set, val_set, test_set, progress)

    progress.step("loading the backbone weights")
    backbone = load_backbone(options.weights)
    pre = Preprocessor.from_manifest(backbone.manifest_preprocessing())
    keras.utils.set_random_seed(options.seed)
    int8_blob = None
    train_pixels = preprocess_dataset(pre, train_set, progress)
    val_pixels = preprocess_dataset(pre, val_set, progress)
    calibration = calibration_set(train_pixels, options.seed)  # the user's own images, for every int8 model
    if options.head == "dense":
        # The head learns from the embeddings the device will compute: those of the int8 embedder,
        # quantized here once (calibrated on the user's own images) and bundled as it is.
        int8_blob, train_x, val_x = int8_features(backbone, calibration, train_pixels, val_pixels, progress)
        model = build_dense_head(keras, train_x.shape[1], len(data.classes), options.hidden, options.dropout)
        head_model, fit_data, fit_val = model, (train_x, train_set.labels), (val_x, val_set.labels)
    else:
        model, head_model, backbone = build_finetune_model(keras, backbone, len(data.classes), options)
        fit_data = (BalancedBatches(keras, train_pixels, train_set.labels, options.batch_size, options.seed),)
        fit_val = (np.stack(val_pixels).astype(np.float32), val_set.labels)
    trainable = summarize(model, progress)
    class_weight = balanced_class_weight(train_set.labels, len(data.classes))
    compile_for_logits(keras, model, options.learning_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience, restore_best_weights=True)
    history = model.fit(*fit_data, validation_data=fit_val, epochs=options.epochs, batch_size=None if
                        options.head == "finetune" else options.batch_size,
                        class_weight=class_weight if options.head == "dense" else None, verbose=0,
                        callbacks=[stop, _KerasProgress(keras, progress, options.epochs, options.head)]).history
    model = head_model
    if options.head == "finetune":
        # As for dense: the tuned embedder is quantized once on the user's images and bundled as is, and the
        # head is refitted (from its fine-tuned weights) on that int8 embedder's outputs — what the device
        # computes. Without this step the head met int8 features it was never trained on.
        int8_blob, train_x, val_x = int8_features(backbone, calibration, train_pixels, val_pixels, progress)
        compile_for_logits(keras, head_model, 1e-3)
        refit = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
        progress.step("refitting the head on the int8 embedder's outputs")
        head_model.fit(train_x, train_set.labels, validation_data=(val_x, val_set.labels), epochs=30,
                       batch_size=options.batch_size, verbose=0, callbacks=[refit], class_weight=class_weight)
        progress.advance()

    outcome: dict = {}
    held_out, held_pixels, held_name = held_out_set(pre, val_set, val_pixels, test_set, progress)

    def finish(bundle: Bundle, folder: Path) -> dict:
        progress.step(f"classifying {len(held_pixels)} {held_name} images on the device runtime (float32 and int8)")
        predicted = evaluate(bundle, options.head_name, held_pixels, held_out.labels)
        progress.advance()
        metrics = write_report(folder / "report", options, history, held_pixels, held_out.labels, predicted,
                               data.classes, report_facts(options.head, data, train_set, val_set, held_out,
                                                          held_name, trainable))
        outcome.update(metrics)
        return {"training": metrics}

    bundle = convert_bundle(
        ConvertOptions(out=options.out, weights=options.weights, edgetpu=options.edgetpu, force=options.force),
        progress, calibration_pixels=calibration, backbone=backbone, int8_embedder=int8_blob,
        heads=(ExtraHead(options.head_name, model, list(data.classes),
                         kind="trained_dense" if options.head == "dense" else "finetuned"),), finish=finish)
    check_drop(outcome, options, bundle.path)
    return bundle
