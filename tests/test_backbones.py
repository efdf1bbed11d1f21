"""Backbone choices: refused before any work when no weights exist; keras.applications families convert."""

from __future__ import annotations

import pytest

from tests.helpers import run_teachcam


@pytest.mark.parametrize("args, message", [
    (["--backbone", "mobilenet_v1", "--alpha", "0.35", "--input-size", "96", "--weights", "imagenet"],
     "no ImageNet weights exist for mobilenet_v1 at width 0.35 and 96 px"),
    (["--backbone", "mobilenet_v3_small", "--alpha", "0.5", "--weights", "imagenet"],
     "no ImageNet weights exist for mobilenet_v3_small at width 0.5"),
    (["--backbone", "mobilenet_v1"], "the offline weights are torchvision's MobileNetV2 1.0"),
    (["--alpha", "0.5"], "the offline weights are torchvision's MobileNetV2 1.0"),
])
def test_impossible_backbones_are_refused_before_any_work(tmp_path, args, message):
    result = run_teachcam("convert", "--out", tmp_path / "b", *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"teachcam: error: {result.stderr.strip().split('error: ')[-1]}"
    assert message in result.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_keras_applications_family_from_a_local_weights_file(tmp_path):
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    weights = tmp_path / "v1.weights.h5"
    keras.applications.MobileNet(input_shape=(128, 128, 3), alpha=0.25, weights=None).save_weights(weights)
    out = tmp_path / "v1"
    result = run_teachcam("convert", "--out", out, "--backbone", "mobilenet_v1", "--alpha", "0.25",
                          "--input-size", "128", "--weights", weights)
    assert result.returncode == 0, result.stderr[-2000:]
    from teachcam.edge.model.bundle import load_bundle

    bundle = load_bundle(out)
    assert bundle.manifest["backbone"]["family"] == "mobilenet_v1" and bundle.embedding_size == 256
    assert bundle.find("embedder", precision="int8").inputs[0]["shape"] == [1, 128, 128, 3]
    assert bundle.preprocessing["resize"]["shorter_side"] == 146 and len(bundle.labels("imagenet")) == 1000
