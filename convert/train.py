"""``teachcam train``: a head trained on the user's images, quantized, measured, bundled.

``dense``: the backbone frozen and quantized to int8 first (calibrated on the user's own
images); one embedding per image from that int8 embedder — what the device will compute —
and a softmax dense head (optionally a hidden layer with dropout) trained on them with
class-balanced weights, a validation split and early stopping. ``finetune``: the backbone's
last blocks trained with the head on class-balanced batches (float), then the tuned embedder
quantized and the head refitted on its int8 outputs. ``cnn``: see :mod:`teachcam.convert.cnn`. The bundle holds
the embedders (int8 calibrated on the user's own training images, and float32), the
ImageNet head and the trained head (float32 and int8); the held-out set is then classified
on the device runtime with float32 and with int8 end to end, and the report folder shows
curves, confusion matrices, sample predictions and per-class precision/recall.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from teachcam.convert.build import ConvertOptions, NullProgress, add_agreement, add_backbone, add_head, add_imagenet_head
from teachcam.convert.bundle_writer import BundleWriter
from teachcam.convert.calibration import full_range_sample
from teachcam.convert.datasets import Dataset, limit_per_class, load_dataset, stratified_split
from teachcam.convert.training import (
    KerasProgress,
    TrainOptions,
    balanced_class_weight,
    calibration_set,
    check_drop,
    compile_for_logits,
    evaluate,
    held_out_set,
    preprocess_dataset,
    report_facts,
    summarize,
    write_report,
)
from teachcam.edge.errors import TeachcamError
from teachcam.edge.model.bundle import Bundle, load_bundle
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.samples import sample_photos

log = logging.getLogger(__name__)


def quantize_embedder(backbone, calibration: list[np.ndarray], progress, recipe: str) -> tuple[bytes, dict]:
    """The int8 embedder calibrated on the user's images: (flatbuffer, what the recipe did)."""
    from teachcam.convert.build import STEM_ROUNDING_LAYERS
    from teachcam.convert.calibration import full_range_sample
    from teachcam.convert.export import to_tflite

    samples = [full_range_sample(*calibration[0].shape[:2]), *calibration]
    progress.step(f"quantizing the int8 embedder on your images ({recipe} ranges)", total=len(samples))

    def representative():
        for sample in samples:
            progress.advance()
            yield sample.astype(np.float32)

    details: dict = {}
    blob = to_tflite(backbone.embedder, int8=True, representative=representative, recipe=recipe,
                     rounding_layers=STEM_ROUNDING_LAYERS if recipe == "clipped" else 0, details=details)
    return blob, details


def embed_int8(blob: bytes, pixels: list[np.ndarray], progress, what: str) -> np.ndarray:
    """Embeddings from the int8 TFLite embedder (on the device runtime), dequantized."""
    import tempfile

    from teachcam.edge.model.models import TFLiteModel

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
                  val_pixels: list[np.ndarray], progress, recipe: str) -> tuple[tuple[bytes, dict], np.ndarray, np.ndarray]:
    """Quantize the embedder once on the user's images; its int8 outputs — what the device computes —
    for the training and validation images. Returns ((int8 model, recipe details), training features,
    validation features)."""
    blob, details = quantize_embedder(backbone, calibration, progress, recipe)
    return ((blob, details), embed_int8(blob, train_pixels, progress, "training"),
            embed_int8(blob, val_pixels, progress, "validation"))


def train(options: TrainOptions, progress=None) -> Bundle:
    """Train, export, evaluate and write the bundle. Returns it.

    Raises:
        DatasetError: bad training data. QuantizationDropError: int8 lost more than allowed.
    """
    import keras

    from teachcam.convert.backbones import load_backbone

    progress = progress or NullProgress()
    if options.head not in ("dense", "finetune", "cnn"):
        raise TeachcamError(f"unknown --head {options.head}: use dense, finetune or cnn")
    data, train_set, val_set, test_set = load_data(options, progress)
    if options.head == "cnn":
        from teachcam.convert.cnn import train_cnn

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
        int8_blob, train_x, val_x = int8_features(backbone, calibration, train_pixels, val_pixels, progress,
                                                      options.quantization)
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
                        callbacks=[stop, KerasProgress(keras, progress, options.epochs, options.head)]).history
    model = head_model
    if options.head == "finetune":
        # As for dense: the tuned embedder is quantized once on the user's images and bundled as is, and the
        # head is refitted (from its fine-tuned weights) on that int8 embedder's outputs — what the device
        # computes. Without this step the head met int8 features it was never trained on.
        int8_blob, train_x, val_x = int8_features(backbone, calibration, train_pixels, val_pixels, progress,
                                                      options.quantization)
        compile_for_logits(keras, head_model, 1e-3)
        refit = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
        progress.step("refitting the head on the int8 embedder's outputs")
        head_model.fit(train_x, train_set.labels, validation_data=(val_x, val_set.labels), epochs=30,
                       batch_size=options.batch_size, verbose=0, callbacks=[refit], class_weight=class_weight)
        progress.advance()

    held_out, held_pixels, held_name = held_out_set(pre, val_set, val_pixels, test_set, progress)
    samples = [full_range_sample(pre.crop_height, pre.crop_width), *calibration][: ConvertOptions.calibration_samples + 1]
    with BundleWriter(options.out, force=options.force) as writer:
        embeddings = add_backbone(writer, backbone, samples, progress, source="the user's own training images",
                                  images=0, int8_embedder=int8_blob, recipe=options.quantization)
        add_imagenet_head(writer, backbone, embeddings, progress, recipe=options.quantization)
        add_head(writer, options.head_name, model, list(data.classes), embeddings, progress,
                 kind="trained_dense" if options.head == "dense" else "finetuned", recipe=options.quantization)
        if options.edgetpu:
            progress.step("compiling for the Edge TPU")
            writer.compile_edgetpu(writer.folder / "embedder_int8.tflite", progress, role="embedder")
            progress.advance()
        add_agreement(writer, sample_photos(), progress, held_out=True)  # the embedder calibrated on the user's images
        progress.step(f"classifying {len(held_pixels)} {held_name} images on the device runtime (float32 and int8)")
        predicted = evaluate(writer.draft(), options.head_name, held_pixels, held_out.labels)
        progress.advance()
        metrics = write_report(writer.folder / "report", options, history, held_pixels, held_out.labels, predicted,
                               data.classes, report_facts(options.head, data, train_set, val_set, held_out, held_name,
                                                          trainable))
        writer.manifest["training"] = metrics
    bundle = load_bundle(options.out)
    check_drop(metrics, options, bundle.path)
    return bundle
