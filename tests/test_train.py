"""`teachcam train`: a real dense head on real images, and bad training data refused with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder, Head
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.teaching.teacher import Teacher
from tests.helpers import augmented_views, run_teachcam

OBJECTS = {"cat": "chelsea.png", "coffee cup": "coffee.png", "ロケット": "rocket.jpg"}


def write_folder(root, per_class=8, seed=0):
    for label, photo in OBJECTS.items():
        (root / label).mkdir(parents=True)
        for i, view in enumerate(augmented_views(photo, per_class, seed=seed)):
            Image.fromarray(view).save(root / label / f"{i}.jpg")
    return root


@pytest.mark.slow
def test_train_from_a_store_export_gives_a_working_head(bundle_path, tmp_path):
    # Examples taught on the Pi, exported, trained on the laptop: the export is training data as it is.
    bundle = load_bundle(bundle_path)
    embedder, pre = Embedder.create(bundle, "int8"), Preprocessor.from_manifest(bundle.preprocessing)
    with Teacher.open(tmp_path / "store", embedder) as teacher:
        for label, photo in OBJECTS.items():
            views = [pre(v) for v in augmented_views(photo, 8, seed=1)]
            teacher.add_many([(label, embedder.embed(p), p, "") for p in views])
        teacher.export(tmp_path / "examples.zip")
    out = tmp_path / "trained"
    result = run_teachcam("train", "--data", tmp_path / "examples.zip", "--out", out, "--epochs", "25", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["classes"] == sorted(OBJECTS)
    assert metrics["accuracy"]["float32"] >= 0.8 and metrics["accuracy"]["int8"] >= 0.8
    assert metrics["quantization_check"] == "passed"
    for name in ("curves.png", "confusion_float32.png", "confusion_int8.png", "samples_int8.png", "metrics.json"):
        assert (out / "report" / name).stat().st_size > 0, name
    trained = load_bundle(out)  # every file, the report included, matches its sha256
    assert "report/metrics.json" in trained.manifest["files"]
    assert trained.manifest["calibration"]["source"] == "the user's own training images"
    head = Head.create(trained, "trained", Embedder.create(trained, "int8"))
    assert head.labels == sorted(OBJECTS)
    for label, photo in OBJECTS.items():
        embedder = Embedder.create(trained, "int8")
        probabilities = head.probabilities(embedder.embed(pre(augmented_views(photo, 1, seed=9)[0])))
        assert head.labels[int(probabilities.argmax())] == label
    # The same head from the command line: `classify --head trained`.
    view = tmp_path / "view.png"
    Image.fromarray(augmented_views("coffee.png", 1, seed=9)[0]).save(view)
    result = run_teachcam("classify", "--bundle", out, "--head", "trained", "--json", view)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["head"] == "trained" and document["results"][0]["top"][0]["label"] == "coffee cup"


def _one_line_error(result, fragment):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("teachcam: error:") and fragment in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_bad_training_data_is_refused_with_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line_error(run_teachcam("train", "--data", tmp_path / "empty", "--out", tmp_path / "b1"), "no images found")
    one = write_folder(tmp_path / "one")
    shutil.rmtree(one / "cat")
    shutil.rmtree(one / "ロケット")
    _one_line_error(run_teachcam("train", "--data", one, "--out", tmp_path / "b2"), "only one class")
    broken = write_folder(tmp_path / "broken")
    for f in (broken / "cat").iterdir():
        f.write_bytes(b"not an image")
    _one_line_error(run_teachcam("train", "--data", broken, "--out", tmp_path / "b3"),
                    "class 'cat' has no readable images")
    _one_line_error(run_teachcam("train", "--data", tmp_path / "nothing", "--out", tmp_path / "b4"),
                    "training data not found")
    assert not any((tmp_path / f"b{i}").exists() for i in range(1, 5)), "nothing may be written half-way"


def test_csv_rows_with_missing_files_are_skipped_and_labels_may_hold_slashes(tmp_path):
    from teachcam.convert.datasets import load_dataset

    write_folder(tmp_path / "imgs", per_class=3)
    rows = ["path,label"]
    for label in OBJECTS:
        for f in sorted((tmp_path / "imgs" / label).iterdir()):
            rows.append(f"imgs/{label}/{f.name},{label.replace(' ', '/')}")
    rows.append("imgs/missing.jpg,cat")
    (tmp_path / "data.csv").write_text("\n".join(rows))
    dataset = load_dataset(tmp_path / "data.csv")
    assert dataset.classes == sorted(label.replace(" ", "/") for label in OBJECTS)
    assert len(dataset) == 9 and dataset.skipped == ["missing: imgs/missing.jpg"]


def test_train_refuses_an_existing_bundle_without_force(bundle_copy, tmp_path):
    before = (bundle_copy / "manifest.json").read_bytes()
    _one_line_error(run_teachcam("train", "--data", write_folder(tmp_path / "d", 2), "--out", bundle_copy),
                    "already holds a bundle")
    assert (bundle_copy / "manifest.json").read_bytes() == before


def test_idx_files_load_with_their_labels(tmp_path):
    import gzip
    import struct

    import numpy as np

    from teachcam.convert.datasets import load_dataset

    images = np.random.default_rng(0).integers(0, 255, (6, 28, 28), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2], np.uint8)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(b"\0\0\x08\x03" + struct.pack(">3I", 6, 28, 28) + images.tobytes())
    with gzip.open(tmp_path / "train-labels-idx1-ubyte.gz", "wb") as f:
        f.write(b"\0\0\x08\x01" + struct.pack(">I", 6) + labels.tobytes())
    dataset = load_dataset(tmp_path / "train-images-idx3-ubyte.gz")
    assert dataset.classes == ["0", "1", "2"] and len(dataset) == 6
    assert dataset.pixels(0).shape == (28, 28, 3)


@pytest.mark.slow
def test_finetune_trains_the_last_blocks_and_bundles_the_tuned_embedder(bundle_path, tmp_path):
    data = write_folder(tmp_path / "data", per_class=6, seed=4)
    out = tmp_path / "tuned"
    result = run_teachcam("train", "--data", data, "--out", out, "--head", "finetune", "--epochs", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    assert metrics["head"] == "finetune" and metrics["epochs_run"] == 2
    assert 0 < metrics["trainable_parameters"] < 2_261_827  # only the last blocks and the head
    tuned = load_bundle(out)
    assert "imagenet" not in tuned.heads, "a fine-tuned embedder no longer fits the ImageNet head"
    assert tuned.heads["trained"]["kind"] == "finetuned"
    original = load_bundle(bundle_path)
    assert tuned.find("embedder", precision="float32").sha256 != original.find("embedder", precision="float32").sha256
    assert metrics["accuracy"]["float32"] >= 2 / 3


def test_report_draws_class_names_in_any_installed_script_and_names_what_it_cannot(tmp_path, monkeypatch):
    from teachcam.convert import report

    names = ["cat", "ロケット", "猫"]
    if report.missing_glyphs(["ロケット猫"]):
        pytest.skip("no CJK font installed (.ci/run installs fonts-droid-fallback)")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing glyph would warn
        report.plot_confusion(np.eye(3, dtype=np.int64), names, tmp_path / "c.png", "title")
    assert (tmp_path / "c.png").stat().st_size > 0
    monkeypatch.setattr(report, "FALLBACK_FONTS", ())  # as on a machine with DejaVu Sans only
    assert report.missing_glyphs(names) == "ケットロ猫"
    assert report.missing_glyphs(["café", "Straße"]) == ""
