"""Keras model → TFLite flatbuffer, float32 or full-integer int8.

The int8 recipe is the one the Edge TPU compiler needs: every op integer
(``TFLITE_BUILTINS_INT8``), uint8 input and output, activation ranges calibrated on a
representative set drawn from the user's own images.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from teachcam.edge.errors import ExportError
from teachcam.edge.stdio import captured_stderr

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
) -> bytes:
    """Convert a single-input keras model to a TFLite flatbuffer.

    Args:
        model: keras model with one input; its batch dimension is exported as 1.
        int8: full-integer quantization with uint8 input/output; needs ``representative``.
        representative: returns an iterable of single input samples (no batch axis),
            float32, in the units the model takes.
    """
    tf = _quiet_tensorflow()
    shape = (1, *model.inputs[0].shape[1:])

    with tempfile.TemporaryDirectory(prefix="teachcam-savedmodel-") as saved:
        model.export(saved, format="tf_saved_model", verbose=False,
                     input_signature=[tf.TensorSpec(shape, tf.float32, name="input")])
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        _configure(tf, converter, int8, representative)
        with captured_stderr() as captured:
            try:
                return converter.convert()
            except Exception as exc:
                detail = captured.read().strip().splitlines()[-3:]
                raise ExportError(f"TFLite conversion failed: {exc}" + (f" ({' | '.join(detail)})" if detail else "")) from None


def _configure(tf, converter, int8: bool, representative) -> None:
    if int8:
        if representative is None:
            raise ValueError("int8 export needs a representative dataset")

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
