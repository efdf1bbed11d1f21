"""The bundle contract: what the manifest records, and how the device refuses a bad bundle."""

from __future__ import annotations

import json
import shutil

import pytest

from teachcam.edge.errors import BundleError, BundleIntegrityError, BundleVersionError
from teachcam.edge.model.bundle import FORMAT_VERSION, file_sha256, load_bundle
from tests.helpers import run_teachcam


def test_manifest_describes_everything_the_device_must_reproduce(bundle_path):
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["generator"].startswith("teachcam ")
    backbone = manifest["backbone"]
    assert (backbone["family"], backbone["alpha"], backbone["input_size"]) == ("mobilenet_v2", 1.0, 224)
    assert backbone["weights"]["file"] == "mobilenet_v2-b0353104.pth"
    assert len(backbone["weights"]["sha256"]) == 64
    pre = manifest["preprocessing"]
    assert pre["color_order"] == "RGB"
    assert pre["resize"] == {"policy": "shorter_side", "shorter_side": 256, "interpolation": "bilinear",
                             "antialias": True, "longer_side_rounding": "floor"}
    assert pre["crop"] == {"policy": "center", "width": 224, "height": 224, "offset_rounding": "floor"}
    assert pre["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert pre["normalization"]["std"] == [0.229, 0.224, 0.225]
    assert pre["normalization"]["folded_into_model"] is True
    assert manifest["embedding"] == {"size": 1280, "l2_normalized": False, "layer": manifest["embedding"]["layer"]}
    assert manifest["heads"]["imagenet"]["num_classes"] == 1000
    for name, digest in manifest["files"].items():
        assert file_sha256(bundle_path / name) == digest


def test_int8_embedder_takes_raw_uint8_pixels(bundle_path):
    bundle = load_bundle(bundle_path)
    int8 = bundle.find("embedder", precision="int8")
    tensor_in, tensor_out = int8.inputs[0], int8.outputs[0]
    assert tensor_in["dtype"] == "uint8" and tensor_in["shape"] == [1, 224, 224, 3]
    assert tensor_in["quantization"] == {"scale": 1.0, "zero_point": 0}
    assert tensor_out["dtype"] == "uint8" and tensor_out["shape"] == [1, 1280]
    float32 = bundle.find("embedder", precision="float32")
    assert float32.inputs[0]["dtype"] == "float32"
    assert {m.file for m in bundle.models} >= {"embedder_int8.tflite", "embedder_float32.tflite",
                                               "imagenet_head_int8.tflite", "imagenet_head_float32.tflite"}
    assert len(bundle.labels("imagenet")) == 1000


def test_int8_agrees_with_float32(bundle_path):
    evaluation = load_bundle(bundle_path).manifest["evaluation"]["float_vs_int8"]
    # measured on held-out photos (every third sample photo, never used for calibration) and their crops
    assert evaluation["held_out"] is True and evaluation["images"] >= 5 and evaluation["views"] >= 20
    assert evaluation["mean_embedding_cosine"] > 0.98 and evaluation["min_embedding_cosine"] > 0.9
    assert evaluation["top1_agreement"] >= 0.7


def test_a_changed_file_is_refused(bundle_copy):
    model = bundle_copy / "embedder_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="embedder_int8.tflite does not match the sha256"):
        load_bundle(bundle_copy)


def test_a_missing_file_is_refused(bundle_copy):
    (bundle_copy / "labels" / "imagenet.txt").unlink()
    with pytest.raises(BundleIntegrityError, match="labels/imagenet.txt"):
        load_bundle(bundle_copy)


def test_unknown_format_version_is_refused(bundle_copy):
    manifest_path = bundle_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleVersionError, match="upgrade teachcam or rebuild"):
        load_bundle(bundle_copy)


def test_damaged_manifest_and_missing_bundle(tmp_path, bundle_copy):
    (bundle_copy / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="damaged"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path / "empty")


def test_info_prints_the_manifest_and_checks_sha256(bundle_path, bundle_copy):
    result = run_teachcam("info", bundle_path)
    assert result.returncode == 0, result.stderr
    assert "mobilenet_v2 1.0 / 224" in result.stdout
    assert "shorter side → 256" in result.stdout
    assert "q(scale 1, zp 0)" in result.stdout
    assert "imagenet: 1000 labels" in result.stdout
    assert "files OK" in result.stdout
    (bundle_copy / "imagenet_head_int8.tflite").write_bytes(b"changed")
    result = run_teachcam("info", bundle_copy)
    assert result.returncode == 1
    assert "MISMATCH: imagenet_head_int8.tflite" in result.stdout
    data = json.loads(run_teachcam("info", "--json", bundle_path).stdout)
    assert data["sha256_ok"] is True and data["manifest"]["format_version"] == FORMAT_VERSION


def test_convert_refuses_to_overwrite_a_bundle_without_force(bundle_copy):
    before = (bundle_copy / "manifest.json").read_bytes()
    result = run_teachcam("convert", "--out", bundle_copy)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"teachcam: error: {bundle_copy} already holds a bundle; pass --force to replace it, or choose another --out"
    ]
    assert (bundle_copy / "manifest.json").read_bytes() == before


def test_the_bundle_writer_writes_the_manifest_once_and_only_on_success(bundle_path, tmp_path, monkeypatch):
    from teachcam.convert import bundle_writer
    from teachcam.convert.bundle_writer import BundleWriter

    writes = []
    real = bundle_writer.write_manifest
    monkeypatch.setattr(bundle_writer, "write_manifest", lambda folder, manifest: writes.append(folder) or
                        real(folder, manifest))
    source = load_bundle(bundle_path).manifest
    out = tmp_path / "bundle"
    with BundleWriter(out) as writer:
        for name in ("embedder_int8.tflite", "embedder_float32.tflite"):
            shutil.copyfile(bundle_path / name, writer.folder / name)
        writer.add_model(writer.folder / "embedder_int8.tflite", role="embedder", precision="int8")
        writer.add_model(writer.folder / "embedder_float32.tflite", role="embedder", precision="float32")
        writer.add_labels("things", ["mug", "pen"], kind="trained_dense", output="logits")
        writer.manifest.update(preprocessing=source["preprocessing"], embedding=source["embedding"])
        draft = writer.draft()  # measurable before anything is committed
        assert draft.find("embedder", precision="int8").file == "embedder_int8.tflite"
        assert not (writer.folder / "manifest.json").exists() and not out.exists()
        (writer.folder / "report").mkdir()
        (writer.folder / "report" / "metrics.json").write_text("{}")
    assert len(writes) == 1
    bundle = load_bundle(out)  # every file, the report included, has its sha256
    assert "report/metrics.json" in bundle.manifest["files"] and bundle.labels("things") == ["mug", "pen"]


def test_a_failing_bundle_writer_leaves_the_old_bundle_alone(bundle_copy, tmp_path):
    from teachcam.convert.bundle_writer import BundleWriter

    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(RuntimeError, match="converter died"):
        with BundleWriter(bundle_copy, force=True) as writer:
            (writer.folder / "half.tflite").write_bytes(b"\0" * 10)
            raise RuntimeError("converter died")
    assert (bundle_copy / "manifest.json").read_bytes() == before
    assert load_bundle(bundle_copy).manifest["files"] and not list(tmp_path.glob(".bundle.partial-*"))
    with pytest.raises(BundleError, match="already holds a bundle; pass --force"):
        BundleWriter(bundle_copy)
