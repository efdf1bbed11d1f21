"""`teachcam train --head cnn`: a small CNN from scratch on real greyscale images, run on the device runtime."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Classifier
from teachcam.edge.model.preprocess import Preprocessor
from tests.helpers import run_teachcam

SHAPES = ("circle", "square", "cross")


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    """A light shape on black, 28x28, at a random place and size (MNIST-like)."""
    image = Image.new("L", (28, 28), 0)
    pen = ImageDraw.Draw(image)
    r = int(rng.integers(5, 10))
    cx, cy = (int(v) for v in rng.integers(r + 1, 27 - r, size=2))
    box = (cx - r, cy - r, cx + r, cy + r)
    level = int(rng.integers(160, 256))
    if shape == "circle":
        pen.ellipse(box, outline=level, width=2)
    elif shape == "square":
        pen.rectangle(box, outline=level, width=2)
    else:
        pen.line(box, fill=level, width=2)
        pen.line((cx - r, cy + r, cx + r, cy - r), fill=level, width=2)
    return image


def write_shapes(root, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        (root / shape).mkdir(parents=True)
        for i in range(per_class):
            draw(shape, rng).save(root / shape / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cnn_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnn")
    out = root / "bundle"
    result = run_teachcam("train", "--head", "cnn", "--data", write_shapes(root / "train", 60, 0),
                          "--test", write_shapes(root / "test", 20, 1), "--out", out, "--epochs", "15", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads(result.stdout), root


@pytest.mark.slow
def test_cnn_trains_from_scratch_and_both_precisions_classify_held_out_images(cnn_bundle):
    out, metrics, _ = cnn_bundle
    assert metrics["head"] == "cnn" and metrics["classes"] == sorted(SHAPES)
    assert metrics["evaluated_on"] == "test" and metrics["evaluation_images"] == 60
    assert metrics["trainable_parameters"] < 100_000
    assert metrics["accuracy"]["float32"] >= 0.9 and metrics["accuracy"]["int8"] >= 0.9
    for name in ("curves.png", "confusion_float32.png", "confusion_int8.png", "samples_int8.png", "metrics.json"):
        assert (out / "report" / name).stat().st_size > 0, name
    bundle = load_bundle(out)
    assert bundle.standalone and bundle.find("embedder", edgetpu=None) is None
    assert bundle.preprocessing["color_order"] == "L"
    assert bundle.preprocessing["small_greyscale"]["policy"] == "none"
    int8 = bundle.find("classifier", precision="int8")
    assert int8.inputs[0]["dtype"] == "uint8" and int8.inputs[0]["shape"] == [1, 28, 28, 1]
    assert int8.inputs[0]["quantization"] == {"scale": 1.0, "zero_point": 0}  # 1/255 folded into the model


@pytest.mark.slow
def test_cnn_bundle_classifies_on_the_command_line_and_in_the_daemon(cnn_bundle, tmp_path):
    out, _, root = cnn_bundle
    images = sorted((root / "test" / "cross").glob("*.png"))[:3]
    result = run_teachcam("classify", "--bundle", out, "--json", "-k", "2", *images)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["head"] == "trained"
    assert [r["top"][0]["label"] for r in document["results"]] == ["cross"] * 3
    # The daemon runs it in head mode on the same files, JSON lines out.
    result = run_teachcam("run", "--bundle", out, "--store", tmp_path / "store", "--source",
                          f"images:{root / 'test' / 'square'}", "--mode", "head", "--frames", "10", "--no-gpio",
                          "--smoothing", "1", "--fps", "1000")
    assert result.returncode == 0, result.stderr
    assert "standalone classifier 'trained'" in result.stderr
    # A prediction line is written when the label changes: one line, "square", means every frame said square.
    labels = [json.loads(line)["label"] for line in result.stdout.splitlines() if '"prediction"' in line]
    assert labels == ["square"]


@pytest.mark.slow
def test_cnn_bundle_cannot_be_taught_and_says_so_without_touching_the_store(cnn_bundle, bundle_path, tmp_path):
    out, _, root = cnn_bundle
    image = next((root / "test" / "circle").glob("*.png"))
    store = tmp_path / "store"
    assert run_teachcam("enroll", "--bundle", bundle_path, "--store", store, "--label", "circle", image).returncode == 0
    before = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    result = run_teachcam("enroll", "--bundle", out, "--store", store, "--label", "circle", image)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "standalone classifier" in lines[0] and "cannot be taught" in lines[0]
    result = run_teachcam("run", "--bundle", out, "--store", store, "--source", "demo", "--frames", "1", "--no-gpio")
    assert result.returncode != 0 and "--mode head" in result.stderr
    after = {p.relative_to(store): p.read_bytes() for p in store.rglob("*") if p.is_file()}
    assert after == before


def test_classifier_preprocessing_matches_training_for_photos_and_small_images(tmp_path):
    section = {"color_order": "L", "resize": {"policy": "shorter_side", "shorter_side": 28},
               "crop": {"policy": "center", "width": 28, "height": 28}, "small_greyscale": {"policy": "none"}}
    pre = Preprocessor.from_manifest(section)
    shape = np.asarray(draw("circle", np.random.default_rng(0)))
    assert np.array_equal(pre(np.repeat(shape[:, :, None], 3, axis=2))[:, :, 0], shape)  # not inverted, not framed
    assert Classifier is not None


FAKES = Path(__file__).parent / "fakes"


@pytest.mark.slow
def test_edgetpu_compile_is_recorded_and_the_device_prefers_the_compiled_model(tmp_path):
    # Test doubles: edgetpu_compiler (x86-64 only, Coral's apt repo) and pycoral (no Edge TPU here).
    data = write_shapes(tmp_path / "data", 20, 2)
    env = {"PATH": f"{FAKES / 'bin'}{os.pathsep}{os.environ['PATH']}", "FAKE_EDGETPU_CPU_OPS": "MEAN:1"}
    out = tmp_path / "bundle"
    result = run_teachcam("train", "--head", "cnn", "--data", data, "--out", out, "--epochs", "2", "--edgetpu",
                          env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # the progress display wraps long lines
    assert "compiled trained_classifier_int8.tflite: 60 ops on the Edge TPU, 1 on the CPU (left on the CPU: MEAN×1)" in said
    bundle = load_bundle(out)
    compiled = bundle.find("classifier", edgetpu=True)
    assert compiled.file == "trained_classifier_int8_edgetpu.tflite" and compiled.head == "trained"
    assert compiled.raw["compiled_from"] == "trained_classifier_int8.tflite"
    assert compiled.raw["ops_on_cpu"] == 1 and compiled.raw["cpu_ops"] == {"MEAN": 1}
    assert compiled.raw["off_chip_parameters"] == "0.00B"
    assert not (out / "trained_classifier_int8_edgetpu.log").exists()

    image = next((data / "cross").glob("*.png"))
    calls = tmp_path / "pycoral.log"
    with_tpu = run_teachcam("classify", "--bundle", out, "--json", image,
                            env={"PYTHONPATH": str(FAKES), "FAKE_PYCORAL_LOG": str(calls)})
    assert with_tpu.returncode == 0, with_tpu.stderr
    assert json.loads(with_tpu.stdout)["embedder"] == "edgetpu"
    assert "trained_classifier_int8_edgetpu.tflite device=None" in calls.read_text()
    without = run_teachcam("classify", "--bundle", out, "--json", image)  # no pycoral, no libedgetpu here
    assert without.returncode == 0
    assert json.loads(without.stdout)["embedder"] == "int8"
    assert "Edge TPU" in without.stderr  # the fallback is said, on one line
    assert json.loads(with_tpu.stdout)["results"] == json.loads(without.stdout)["results"]


@pytest.mark.slow
def test_edgetpu_without_the_compiler_prints_the_command_and_a_failing_compiler_keeps_the_int8_model(tmp_path):
    data = write_shapes(tmp_path / "data", 10, 3)
    bare_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "edgetpu_compiler").exists())
    result = run_teachcam("train", "--head", "cnn", "--data", data, "--out", tmp_path / "a", "--epochs", "1",
                          "--edgetpu", env={"PATH": bare_path})
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())  # the progress display wraps long lines
    assert "edgetpu_compiler --show_operations --out_dir . trained_classifier_int8.tflite" in said
    assert load_bundle(tmp_path / "a").find("classifier", edgetpu=True) is None
    result = run_teachcam("train", "--head", "cnn", "--data", data, "--out", tmp_path / "b", "--epochs", "1",
                          "--edgetpu", env={"PATH": f"{FAKES / 'bin'}{os.pathsep}{bare_path}", "FAKE_EDGETPU_FAIL": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    said = " ".join(result.stderr.split())
    assert "edgetpu_compiler failed on trained_classifier_int8.tflite: Internal compiler error. Aborting!" in said
    assert load_bundle(tmp_path / "b").find("classifier", edgetpu=True) is None


@pytest.mark.slow
def test_reloading_between_an_embedder_bundle_and_a_cnn_bundle_keeps_the_store(cnn_bundle, bundle_path, tmp_path,
                                                                              caplog):
    # SIGHUP with a new config: the KNN daemon becomes a cnn classifier and back; what was taught survives.
    import dataclasses
    import io

    from teachcam.edge.config import load_config
    from teachcam.edge.daemon.loop import Daemon
    from teachcam.edge.devices.camera import ArraySource
    from teachcam.edge.messages import Enroll
    from tests.helpers import augmented_views

    out, _, root = cnn_bundle
    cat = augmented_views("chelsea.png", 2, seed=11)
    knn = load_config(None, {"bundle": str(bundle_path), "store": str(tmp_path / "store"), "classes": ["cat"],
                             "smoothing": 1, "buttons": {"enabled": False}, "leds": {"enabled": False},
                             "output": {"terminal": "off", "json": "off"}})
    daemon = Daemon(knn, source=ArraySource(cat, loop=True), keyboard=False, stdout=io.StringIO()).start()
    try:
        daemon.post(Enroll(index=0))
        daemon.step(cat[0])
        assert daemon.teacher.counts() == {"cat": 1}
        daemon.config = dataclasses.replace(knn, bundle=str(out))  # mode knn: refused, the running bundle kept
        daemon.reload()
        assert "standalone classifier" in caplog.text and daemon.teacher.counts() == {"cat": 1}
        daemon.config = dataclasses.replace(knn, bundle=str(out), mode="head")
        daemon.reload()
        assert daemon.teacher is None and daemon.preprocess.color_order == "L"
        shape = np.asarray(Image.open(next((root / "test" / "square").glob("*.png"))).convert("RGB"))
        view = daemon.step(shape)
        assert view.label in SHAPES and view.counts == {}
        daemon.post(Enroll(index=0))  # a button press: one error line, nothing written
        daemon.step(shape)
        assert "cannot be taught by example" in caplog.text
        daemon.config = knn
        daemon.reload()
        assert daemon.teacher.counts() == {"cat": 1} and daemon.step(cat[1]).label == "cat"
    finally:
        daemon.close()
