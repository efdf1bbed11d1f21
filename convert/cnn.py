"""``teachcam train --head cnn``: a small convolutional network trained from scratch, no backbone.

The classic digit recogniser — two conv/pool stages and a dense softmax — for small
greyscale tasks (MNIST, Fashion-MNIST, symbols, silhouettes). Its bundle holds one
standalone classifier on pixels (float32 and int8, uint8 greyscale input with the 1/255
scaling folded in), no embedder: the device runs it with ``--mode head`` or
``teachcam classify``; it cannot be taught by example (KNN needs an embedder).

The preprocessing the manifest records is what training used: luma (Pillow's ITU-R 601-2
conversion), shorter side → N, centre crop N×N (N = ``--input-size``, default 28); small
light-on-dark images are *not* inverted (that framing is for ImageNet backbones).
"""

from __future__ import annotations

import logging

import numpy as np

from teachcam.convert.bundle_writer import BundleWriter
from teachcam.convert.calibration import full_range_sample
from teachcam.convert.datasets import Dataset
from teachcam.convert.quantize import RECIPE_NOTES
from teachcam.convert.training import (
    KerasProgress,
    TrainOptions,
    balanced_class_weight,
    calibration_set,
    check_drop,
    compile_for_logits,
    held_out_set,
    preprocess_dataset,
    report_facts,
    summarize,
    write_report,
)
from teachcam.edge.errors import TeachcamError
from teachcam.edge.model.bundle import Bundle, load_bundle
from teachcam.edge.model.models import Classifier
from teachcam.edge.model.preprocess import Preprocessor

log = logging.getLogger(__name__)


def manifest_preprocessing(size: int) -> dict:
    return {
        "color_order": "L",
        "resize": {"policy": "shorter_side", "shorter_side": size, "interpolation": "bilinear", "antialias": True,
                   "longer_side_rounding": "floor"},
        "crop": {"policy": "center", "width": size, "height": size, "offset_rounding": "floor"},
        "normalization": {"kind": "scale", "scale": 1 / 255, "folded_into_model": True,
                          "formula": "pixel / 255, computed inside the model"},
        "small_greyscale": {"policy": "none"},
        "model_input": "greyscale uint8 pixels 0..255 (luma: 0.299 R + 0.587 G + 0.114 B, as Pillow's "
                       "convert('L')), one channel",
    }


def build_cnn(keras, size: int, classes: int, dropout: float):
    """Two conv/pool stages and a dense softmax (logits out; the device applies the softmax)."""
    inputs = keras.Input((size, size, 1), name="pixels")
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(max(dropout, 0.0), name="dropout")(x)
    logits = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, logits, name="small_cnn")


def evaluate(bundle: Bundle, pixels: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Class scores (logits) per image on the device runtime, float32 and int8."""
    out = {}
    for precision in ("float32", "int8"):
        classifier = Classifier.create(bundle, precision)
        out[precision] = np.array([classifier.embed(p) for p in pixels])
    return out


def train_cnn(options: TrainOptions, data: Dataset, train_set: Dataset, val_set: Dataset, test_set: Dataset | None,
              progress) -> Bundle:
    import keras

    size = options.input_size or 28
    if not 8 <= size <= 256:
        raise TeachcamError(f"--input-size {size}: the small CNN takes 8 to 256 pixels (default 28)")
    section = manifest_preprocessing(size)
    pre = Preprocessor.from_manifest(section)
    keras.utils.set_random_seed(options.seed)
    train_pixels = preprocess_dataset(pre, train_set, progress)
    val_pixels = preprocess_dataset(pre, val_set, progress)
    held_out, held_pixels, held_name = held_out_set(pre, val_set, val_pixels, test_set, progress)

    model = build_cnn(keras, size, len(data.classes), options.dropout)
    trainable = summarize(model, progress)
    compile_for_logits(keras, model, options.learning_rate)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=options.patience, restore_best_weights=True)
    history = model.fit(np.stack(train_pixels).astype(np.float32), train_set.labels,
                        validation_data=(np.stack(val_pixels).astype(np.float32), val_set.labels),
                        epochs=options.epochs, batch_size=options.batch_size, shuffle=True, verbose=0,
                        class_weight=balanced_class_weight(train_set.labels, len(data.classes)),
                        callbacks=[stop, KerasProgress(keras, progress, options.epochs, "cnn")]).history

    calibration = [full_range_sample(size, size, 1), *calibration_set(train_pixels, options.seed, count=256)]
    name = options.head_name
    with BundleWriter(options.out, force=options.force) as writer:
        progress.step("exporting the classifier (float32 and int8)", total=2)
        float_path = writer.export(model, f"{name}_classifier_float32.tflite", int8=False)
        progress.advance()
        details: dict = {}
        int8_path = writer.export(model, f"{name}_classifier_int8.tflite", int8=True,
                                  representative=lambda: (c.astype(np.float32) for c in calibration),
                                  recipe=options.quantization, details=details)
        progress.advance()
        writer.add_model(int8_path, role="classifier", precision="int8", head=name, output="logits",
                         quantization=details)
        writer.add_model(float_path, role="classifier", precision="float32", head=name, output="logits")
        writer.add_labels(name, list(data.classes), kind="cnn_classifier", output="logits", input="pixels")
        if options.edgetpu:
            progress.step("compiling for the Edge TPU")
            writer.compile_edgetpu(int8_path, progress, role="classifier", head=name)
            progress.advance()
        writer.manifest.update({
            "backbone": {"family": "small_cnn", "input_size": size,
                         "layers": "conv 3x3 x32 + maxpool, conv 3x3 x64 + maxpool, dropout, dense softmax",
                         "weights": {"source": "trained from scratch on the user's images"}},
            "preprocessing": section,
            "calibration": {"source": "the user's own training images", "samples": len(calibration),
                            "note": "first sample is a 0..255 gradient so the uint8 input keeps scale 1, zero point 0"},
            "quantization": {"recipe": options.quantization, "description": RECIPE_NOTES[options.quantization]},
        })
        progress.step(f"classifying {len(held_pixels)} {held_name} images on the device runtime (float32 and int8)")
        predicted = evaluate(writer.draft(), held_pixels)
        progress.advance()
        metrics = write_report(writer.folder / "report", options, history, held_pixels, held_out.labels, predicted,
                               data.classes, report_facts("cnn", data, train_set, val_set, held_out, held_name,
                                                          trainable))
        writer.manifest["training"] = metrics
    bundle = load_bundle(options.out)
    check_drop(metrics, options, bundle.path)
    return bundle
