"""The int8 recipes: how activation ranges are calibrated before full-integer quantization.

``minmax`` is TensorFlow's own post-training recipe: every activation tensor's range is the
minimum and maximum seen on the representative samples. A handful of outliers then decide
the range — in MobileNetV2's residual stream (blocks 13-16) calibration sees about -27..35
while 99 % of the values lie within +-1.2, five int8 steps.

``clipped`` (the default) calibrates the same way, then replaces each activation range
downstream of the first weighted layer with the central part of that tensor's own
histogram over the calibration samples. How much to keep (the coverage) is chosen among
a few values, including 1.0 — today's min/max — by the float-vs-int8 output cosine on
calibration samples held out from the ranges; so the clipped recipe never scores below
min/max on those samples. The graph's input and outputs keep their calibrated ranges.

This needs the converter's calibrate-only mode and its MLIR quantizer (private APIs of
the pinned TensorFlow); ``tests/test_quantization.py`` checks that, with nothing
clipped, the result is the public converter's, byte for byte in behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

RECIPES = ("clipped", "minmax")
DEFAULT_RECIPE = "clipped"
RECIPE_NOTES = {
    "clipped": "activation ranges clipped to the central part of each tensor's calibration histogram (coverage "
               "chosen on held-out calibration samples); the embedder's stem weights rounded by search "
               "against the float layer",
    "minmax": "activation ranges are the calibration minimum and maximum (TensorFlow's default)",
}
COVERAGES = (1.0, 0.99999, 0.9999, 0.9995, 0.999, 0.998)
BINS = 4096
WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


@dataclass
class QuantizationReport:
    """What the recipe did, for the manifest."""

    recipe: str
    coverage: float = 1.0
    clipped_tensors: int = 0
    calibration_samples: int = 0
    selection_samples: int = 0
    selection_cosine: dict = field(default_factory=dict)  # coverage -> mean cosine on the selection samples
    learned_rounding: list = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {"recipe": self.recipe, "calibration_samples": self.calibration_samples}
        if self.recipe == "clipped":
            out.update(coverage=self.coverage, clipped_tensors=self.clipped_tensors,
                       selection_samples=self.selection_samples,
                       selection_mean_cosine={str(k): round(v, 5) for k, v in self.selection_cosine.items()})
        if self.learned_rounding:
            out["learned_rounding"] = [r.as_dict() for r in self.learned_rounding]
        return out


def split_samples(samples: list[np.ndarray], every: int = 4) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(calibration, selection): every ``every``-th sample, after the first, chooses the coverage."""
    if len(samples) < 8:
        return samples, samples
    selection = samples[every - 1 :: every]
    calibrate = [s for i, s in enumerate(samples) if i % every != every - 1]
    return calibrate, selection


def _operator_names(model) -> list[str]:
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return [names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM") for code in model.operatorCodes]


def clippable_tensors(model) -> set[int]:
    """Tensors computed at or after the first weighted op, except the graph's inputs and outputs."""
    graph = model.subgraphs[0]
    codes = _operator_names(model)
    after: set[int] = set()
    for op in graph.operators:
        if codes[op.opcodeIndex] in WEIGHTED_OPS or any(i in after for i in op.inputs):
            after.update(int(o) for o in op.outputs)
    return after - {int(i) for i in graph.outputs} - {int(i) for i in graph.inputs}


def recorded_ranges(model) -> dict[int, tuple[float, float]]:
    """Calibrated (min, max) per tensor, as the calibrator stored them."""
    ranges = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        q = tensor.quantization
        if q is not None and q.min is not None and len(q.min) == 1:
            ranges[index] = (float(q.min[0]), float(q.max[0]))
    return ranges


def histograms(calibrated: bytes, ranges: dict, wanted: set[int], samples: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Per-tensor value histograms (``BINS`` bins over the calibrated range) over ``samples``."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors warns that it is for debugging
        interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    counts = {i: np.zeros(BINS, np.int64) for i in wanted if i in ranges and ranges[i][1] > ranges[i][0]}
    for sample in samples:
        interpreter.set_tensor(index, np.asarray(sample, np.float32)[None])
        interpreter.invoke()
        for i, hist in counts.items():
            hist += np.histogram(interpreter.get_tensor(i), BINS, ranges[i])[0]
    return counts


def _quantile(hist: np.ndarray, lo: float, hi: float, q: float) -> float:
    """The value below which a fraction ``q`` of the histogram lies (bin edges: never inside the data)."""
    cumulative = np.cumsum(hist)
    k = int(np.searchsorted(cumulative, q * cumulative[-1]))
    edges = np.linspace(lo, hi, len(hist) + 1)
    return float(edges[min(k + 1, len(hist))] if q > 0.5 else edges[k])


def clipped_range(hist: np.ndarray, lo: float, hi: float, coverage: float) -> tuple[float, float]:
    """The central ``coverage`` of the values, never wider than (lo, hi), always holding 0."""
    if coverage >= 1.0:
        return lo, hi
    tail = (1.0 - coverage) / 2
    new_lo = lo if lo >= 0 else min(0.0, _quantile(hist, lo, hi, tail))
    new_hi = max(0.0, _quantile(hist, lo, hi, 1.0 - tail))
    return max(lo, new_lo), min(hi, new_hi)


def quantize_with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """Write ``ranges`` into the calibrated model and run the MLIR quantizer (uint8 in and out)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert
    from tensorflow.lite.tools import flatbuffer_utils

    from teachcam.edge.model.stdio import captured_stderr

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    tensors = model.subgraphs[0].tensors
    for index, (lo, hi) in ranges.items():
        tensors[index].quantization.min = np.array([lo], np.float32)
        tensors[index].quantization.max = np.array([hi], np.float32)
    edited = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    with captured_stderr():  # the quantizer prints its settings on stdout/stderr
        return tf_convert.mlir_quantize(edited, False, input_data_type=tf.uint8, output_data_type=tf.uint8)


def _outputs(model: bytes, samples: list[np.ndarray], quantized: bool) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for sample in samples:
        x = np.asarray(sample, np.float32)[None]
        if quantized:
            scale, zero = inp["quantization"]
            x = np.clip(np.rint(x / scale + zero), 0, 255) if scale else x
            x = x.astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).reshape(-1).astype(np.float64)
        if quantized:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        rows.append(y)
    return np.array(rows)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosines(a, b).mean())


def output_fidelity(float_outputs: np.ndarray, int8_outputs: np.ndarray) -> dict:
    """How far the int8 model's outputs follow the float model's: cosine (mean, min) and argmax agreement."""
    if len(float_outputs) == 0:
        return {"mean_cosine": 0.0, "min_cosine": 0.0, "argmax_agreement": 0.0}
    c = cosines(float_outputs, int8_outputs)
    same = np.argmax(float_outputs, axis=1) == np.argmax(int8_outputs, axis=1)
    return {"mean_cosine": round(float(c.mean()), 5), "min_cosine": round(float(c.min()), 5),
            "argmax_agreement": round(float(same.mean()), 4)}


def clipped_quantize(calibrated: bytes, calibration: list[np.ndarray], selection: list[np.ndarray],
                     on_step: Callable[[], None] | None = None) -> tuple[bytes, QuantizationReport]:
    """The clipped recipe on a calibrated model: histograms, then the coverage that scores best."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    ranges = recorded_ranges(model)
    wanted = clippable_tensors(model) & set(ranges)
    report = QuantizationReport("clipped", calibration_samples=len(calibration), selection_samples=len(selection))
    if not wanted:  # e.g. a single dense layer: nothing between input and output to clip
        return quantize_with_ranges(calibrated, {}), report
    counts = histograms(calibrated, ranges, wanted, calibration)
    reference = _outputs(calibrated, selection, quantized=False)
    best = None
    for coverage in COVERAGES:
        edits = {i: clipped_range(h, *ranges[i], coverage) for i, h in counts.items()}
        blob = quantize_with_ranges(calibrated, edits)
        score = mean_cosine(reference, _outputs(blob, selection, quantized=True))
        report.selection_cosine[coverage] = score
        if best is None or score > best[0] + 1e-6:
            best = (score, coverage, blob)
        if on_step:
            on_step()
    report.coverage = best[1]
    report.clipped_tensors = 0 if best[1] >= 1.0 else len(counts)
    log.info("int8 ranges: coverage %s chosen (selection cosine %s)", best[1],
             {k: round(v, 4) for k, v in report.selection_cosine.items()})
    return best[2], report
