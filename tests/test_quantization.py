"""The int8 recipes (convert/quantize.py, convert/rounding.py): real conversions, real interpreters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_teachcam

from teachcam.edge.model.bundle import load_bundle

pytest.importorskip("tensorflow")


def small_model(seed: int = 0):
    """A MobileNet-shaped toy: normalization, conv-BN-ReLU6, depthwise-BN-ReLU6, 1x1, residual add, pool."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((24, 24, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, -1.0)(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, 2, "valid", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    y = keras.layers.BatchNormalization(name="dw_bn")(y)
    y = keras.layers.ReLU(6.0, name="dw_relu")(y)
    y = keras.layers.Conv2D(8, 1, name="project")(y)
    x = keras.layers.Add()([x, y])
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:  # BatchNorm with statistics that are not the identity
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 3, n), rng.normal(0, 0.5, n), rng.normal(0, 0.3, n),
                               rng.uniform(0.2, 2, n)])
    return model


def samples(count: int = 40, seed: int = 1) -> list[np.ndarray]:
    from teachcam.convert.calibration import full_range_sample

    rng = np.random.default_rng(seed)
    return [full_range_sample(24, 24).astype(np.float32)] + [
        rng.integers(0, 256, (24, 24, 3)).astype(np.float32) for _ in range(count)]


def interpreter(blob: bytes):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob, num_threads=1)
    it.allocate_tensors()
    return it


def operators(blob: bytes) -> list[str]:
    from tensorflow.lite.tools import flatbuffer_utils

    from teachcam.convert.quantize import _operator_names

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    names = _operator_names(model)
    return [names[op.opcodeIndex] for op in model.subgraphs[0].operators]


def outputs(blob: bytes, inputs: list[np.ndarray]) -> np.ndarray:
    it = interpreter(blob)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for x in inputs:
        it.set_tensor(inp["index"], x[None].astype(np.uint8))
        it.invoke()
        rows.append(it.get_tensor(out["index"])[0].copy())
    return np.array(rows)


def test_the_calibrate_then_quantize_path_is_the_public_converter_when_nothing_is_clipped():
    """Guards the private converter APIs the clipped recipe uses (calibrate-only mode, mlir_quantize)."""
    from teachcam.convert.export import _convert, to_tflite
    from teachcam.convert.quantize import quantize_with_ranges

    model, data = small_model(), samples()
    public = to_tflite(model, int8=True, representative=lambda: iter(data), recipe="minmax")
    calibrated = _convert(model, lambda: iter(data), calibrate_only=True)
    ours = quantize_with_ranges(calibrated, {})
    assert operators(ours) == operators(public)
    probe = samples(8, seed=9)
    assert np.array_equal(outputs(ours, probe), outputs(public, probe))
    details = interpreter(ours).get_input_details()[0]
    assert details["dtype"] == np.uint8 and details["quantization"] == (1.0, 0)


def test_clipping_keeps_the_bulk_and_drops_rare_outliers():
    from teachcam.convert.quantize import BINS, clipped_range

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 200_000), [-27.0, 35.0, 30.0]])
    lo, hi = values.min(), values.max()
    hist = np.histogram(values, BINS, (lo, hi))[0]
    assert clipped_range(hist, lo, hi, 1.0) == (lo, hi)
    a, b = clipped_range(hist, lo, hi, 0.9995)
    assert -4.5 < a < -3.0 and 3.0 < b < 4.5  # +-3.5 sigma holds 99.95 %
    relu = np.histogram(np.abs(values[:-3]), BINS, (0, 6))[0]
    assert clipped_range(relu, 0.0, 6.0, 0.999)[0] == 0.0  # a ReLU output keeps 0 as its floor


def test_learned_rounding_puts_the_stem_on_the_int8_grid_and_the_converter_keeps_it():
    from tensorflow.lite.tools import flatbuffer_utils

    from teachcam.convert.export import to_tflite
    from teachcam.convert.quantize import split_samples
    from teachcam.convert.rounding import LEVELS, learn_rounding

    model, data = small_model(), samples()
    before = [w.copy() for w in model.get_weights()]
    calibrate, _ = split_samples(data)  # what to_tflite learns the rounding on (skipping the gradient)
    copy, reports = learn_rounding(model, np.stack(calibrate[1:]), count=2)
    assert [r.layer for r in reports] == ["stem", "dw"]
    assert all(r.error_learned <= r.error_nearest for r in reports)
    assert sum(r.flipped for r in reports) > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))  # the float model is untouched
    probe = np.stack(samples(6, seed=5)).astype(np.float32)
    np.testing.assert_allclose(copy(probe).numpy(), model(probe).numpy(), atol=0.05)  # the same function, rounded
    kernel = copy.get_layer("stem").get_weights()[0]
    scale = np.abs(kernel).max(axis=(0, 1, 2)) / LEVELS
    grid = kernel / scale
    np.testing.assert_allclose(grid, np.rint(grid), atol=1e-3)

    blob = to_tflite(model, int8=True, representative=lambda: iter(data), rounding_layers=2)
    flat = flatbuffer_utils.convert_bytearray_to_object(bytearray(blob))
    graph = flat.subgraphs[0]
    conv = next(op for op, name in zip(graph.operators, operators(blob), strict=True) if name == "CONV_2D")
    weights = graph.tensors[conv.inputs[1]]
    stored = np.frombuffer(bytes(flat.buffers[weights.buffer].data), np.int8).reshape(weights.shape)
    assert np.array_equal(stored.transpose(1, 2, 3, 0), np.rint(grid).astype(np.int8))  # OHWI in TFLite


def test_clipped_recipe_scores_at_least_minmax_on_its_selection_samples():
    from teachcam.convert.export import to_tflite

    model, data = small_model(), samples(60)
    details: dict = {}
    to_tflite(model, int8=True, representative=lambda: iter(data), details=details)
    assert details["recipe"] == "clipped"
    scores = details["selection_mean_cosine"]
    assert set(scores) >= {"1.0", "0.9995"}
    assert scores[str(details["coverage"])] == max(scores.values())


def test_both_recipes_give_the_same_full_integer_op_list(bundle_path, tmp_path):
    """The Edge TPU compiler sees the same graph either way: every op integer, uint8 in and out."""
    from teachcam.convert.backbones import load_backbone
    from teachcam.convert.export import to_tflite

    bundle = load_bundle(bundle_path)
    assert bundle.manifest["quantization"]["recipe"] == "clipped"
    clipped = (bundle_path / "embedder_int8.tflite").read_bytes()
    backbone = load_backbone()
    data = [np.asarray(s, np.float32) for s in np.random.default_rng(0).integers(0, 256, (12, 224, 224, 3))]
    minmax = to_tflite(backbone.embedder, int8=True, representative=lambda: iter(data), recipe="minmax")
    assert operators(clipped) == operators(minmax)
    ops = operators(clipped)
    # integer throughout: QUANTIZE only as the uint8 <-> int8 requantization at the two ends
    assert "DEQUANTIZE" not in ops and ops.count("QUANTIZE") == 2 and ops[0] == ops[-1] == "QUANTIZE"
    for blob in (clipped, minmax):
        it = interpreter(blob)
        assert it.get_input_details()[0]["dtype"] == np.uint8 and it.get_output_details()[0]["dtype"] == np.uint8
    entry = next(m for m in bundle.manifest["models"] if m["file"] == "embedder_int8.tflite")
    assert entry["quantization"]["recipe"] == "clipped"
    assert [r["layer"] for r in entry["quantization"]["learned_rounding"]] == ["features_0_0", "features_1_conv_0_0"]


def test_the_default_bundle_agrees_with_float32_on_photos_it_was_not_calibrated_on(bundle_path):
    """Held-out fidelity, re-measured here on new crops of the held-out photos (not the manifest's)."""
    from teachcam.convert.build import evaluation_views
    from teachcam.edge.model.models import Embedder
    from teachcam.edge.model.preprocess import Preprocessor
    from teachcam.edge.samples import sample_photos

    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    held = manifest["calibration"]["held_out_images"]
    assert len(held) >= 5
    evaluation = manifest["evaluation"]["float_vs_int8"]
    assert evaluation["held_out"] is True
    assert {r["image"].split("#")[0] for r in evaluation["per_image"]} == set(held)
    assert evaluation["mean_embedding_cosine"] >= 0.98
    pre = Preprocessor.from_manifest(manifest["preprocessing"])
    views = evaluation_views(sample_photos(tuple(held)), pre, per_image=5, seed=1234)
    float_model, int8_model = Embedder.create(bundle, "float32"), Embedder.create(bundle, "int8")
    a = np.array([float_model.embed(v) for _, v in views])
    b = np.array([int8_model.embed(v) for _, v in views])
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert len(views) == 5 * len(held)
    assert cosine.mean() >= 0.98, cosine.round(4)


def test_convert_minmax_recipe_is_kept_for_comparison(tmp_path):
    out = tmp_path / "minmax"
    result = run_teachcam("convert", "--out", out, "--quantization", "minmax", "--calibration-samples", "24", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["quantization"] == "minmax" and summary["held_out"] is True
    manifest = load_bundle(out).manifest
    assert manifest["quantization"]["recipe"] == "minmax"
    assert "learned_rounding" not in next(m for m in manifest["models"] if m["file"] == "embedder_int8.tflite")[
        "quantization"]
    info = run_teachcam("info", out)
    assert "int8 recipe minmax" in info.stdout and "held-out photos" in info.stdout and ", min 0." in info.stdout
