"""Keras model → TFLite flatbuffer, float32 or full-integer int8.

The int8 models are what the Edge TPU compiler needs: every op integer
(``TFLITE_BUILTINS_INT8``), uint8 input and output, activation ranges calibrated on a
representative set drawn from the user's own images (by the recipe in :mod:`quantize`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from teachcam.convert.quantize import DEFAULT_RECIPE, RECIPES, QuantizationReport, clipped_quantize, split_samples
from teachcam.edge.errors import ExportError
from teachcam.edge.model.stdio import captured_stderr

log = logging.getLogger(__name__)


def _quiet_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    return tf


def to_tflite(
    model,
    *,
    int8: bool,
    representative: Callable[[], Iterable[np.ndarray]] | None = None,
    recipe: str = DEFAULT_RECIPE,
    rounding_layers: int = 0,
    details: dict | None = None,
) -> bytes:
    """Convert a single-input keras model to a TFLite flatbuffer.

    Args:
        model: keras model with one input; its batch dimension is exported as 1.
        int8: full-integer quantization with uint8 input/output; needs ``representative``.
        representative: returns an iterable of single input samples (no batch axis),
            float32, in the units the model takes.
        recipe: ``clipped`` (histogram-clipped activation ranges, :mod:`quantize`) or
            ``minmax`` (TensorFlow's own calibration).
        rounding_layers: with ``clipped``, learn the int8 rounding of this many stem
            convolutions (:mod:`rounding`); 0 for none.
        details: filled with what the int8 recipe did (for the manifest).
    """
    if not int8:
        return _convert(model, None)
    if representative is None:
        raise ValueError("int8 export needs a representative dataset")
    if recipe not in RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}: use {', '.join(RECIPES)}")
    if recipe == "minmax":
        blob = _convert(model, representative)
        report = QuantizationReport("minmax")
    else:
        samples = [np.asarray(s, np.float32) for s in representative()]
        calibrate, selection = split_samples(samples)
        rounded, rounding = model, []
        if rounding_layers:
            from teachcam.convert.rounding import learn_rounding

            rounded, rounding = learn_rounding(model, np.stack(calibrate[1:65] or calibrate), rounding_layers)
        calibrated = _convert(rounded, lambda: iter(calibrate), calibrate_only=True)
        try:
            blob, report = clipped_quantize(calibrated, calibrate, selection)
        except Exception as exc:  # the private quantizer API: say which step failed
            raise ExportError(f"int8 quantization ({recipe} recipe) failed: {exc}; "
                              "--quantization minmax uses TensorFlow's own recipe") from None
        report.learned_rounding = rounding
    if details is not None:
        details.update(report.as_dict())
    return blob


def _convert(model, representative, *, calibrate_only: bool = False) -> bytes:
    tf = _quiet_tensorflow()
    shape = (1, *model.inputs[0].shape[1:])

    with tempfile.TemporaryDirectory(prefix="teachcam-savedmodel-") as saved:
        model.export(saved, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        _configure(tf, converter, representative)
        converter._experimental_calibrate_only = calibrate_only  # noqa: SLF001 - see quantize.py
        with captured_stderr() as captured:
            try:
                return converter.convert()
            except Exception as exc:
                detail = captured.read().strip().splitlines()[-3:]
                raise ExportError(f"TFLite conversion failed: {exc}" + (f" ({' | '.join(detail)})" if detail else "")) from None


def _configure(tf, converter, representative) -> None:
    if representative is not None:
        def samples():
            for sample in representative():
                yield [np.asarray(sample, np.float32)[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8


def write_tflite(model, path: Path, **kwargs) -> Path:
    path.write_bytes(to_tflite(model, **kwargs))
    log.info("wrote %s (%.1f MB)", path.name, path.stat().st_size / 1e6)
    return path
