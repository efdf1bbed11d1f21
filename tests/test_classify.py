"""Classification on the device runtime: reference photos, odd images, and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.images import read_image
from teachcam.edge.model.models import Embedder, Head, top_k
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.samples import REFERENCE_TOP1, sample_photos
from tests.helpers import run_teachcam


@pytest.fixture(scope="module")
def pipelines(bundle_path):
    bundle = load_bundle(bundle_path)
    pre = Preprocessor.from_manifest(bundle.preprocessing)
    out = {}
    for precision in ("int8", "float32"):
        embedder = Embedder.create(bundle, precision)
        out[precision] = (embedder, Head.create(bundle, "imagenet", embedder))
    return pre, out


def classify(pipelines, frame, precision="int8"):
    pre, runners = pipelines
    embedder, head = runners[precision]
    return top_k(head.probabilities(embedder.embed(pre(frame))), head.labels, 5)


@pytest.mark.parametrize("precision", ["int8", "float32"])
@pytest.mark.parametrize("photo", sorted(REFERENCE_TOP1))
def test_reference_photos_give_the_reference_top1(pipelines, photo, precision):
    (path,) = sample_photos((photo,))
    best = classify(pipelines, read_image(path), precision)[0]
    assert best.label == REFERENCE_TOP1[photo]
    assert best.score > 0.45


def test_float32_matches_the_published_probabilities(pipelines):
    expected = {"chelsea.png": 0.71, "coffee.png": 0.99, "motorcycle_left.png": 0.69, "china.jpg": 0.70}
    for photo, probability in expected.items():
        (path,) = sample_photos((photo,))
        assert classify(pipelines, read_image(path), "float32")[0].score == pytest.approx(probability, abs=0.05)


def test_probabilities_are_a_distribution(pipelines):
    pre, runners = pipelines
    embedder, head = runners["int8"]
    probs = head.probabilities(embedder.embed(pre(read_image(sample_photos(("coffee.png",))[0]))))
    assert probs.shape == (1000,)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)


def _write_variants(tmp_path):
    rgb = np.asarray(Image.open(sample_photos(("chelsea.png",))[0]).convert("RGB"))
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    paths = {}
    paths["rgba"] = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(paths["rgba"])
    paths["grey"] = tmp_path / "grey.png"
    Image.fromarray(grey, "L").save(paths["grey"])
    paths["grey16"] = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(paths["grey16"])
    paths["palette"] = tmp_path / "palette.png"
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(paths["palette"])
    return paths


def test_rgba_greyscale_16bit_and_palette_pngs_classify(pipelines, tmp_path):
    paths = _write_variants(tmp_path)
    for kind in ("rgba", "palette"):
        assert classify(pipelines, read_image(paths[kind]))[0].label == "Egyptian cat", kind
    grey = classify(pipelines, read_image(paths["grey"]))
    grey16 = classify(pipelines, read_image(paths["grey16"]))
    assert read_image(paths["grey16"]).dtype == np.uint8
    np.testing.assert_array_equal(read_image(paths["grey16"]), read_image(paths["grey"]))
    assert grey[0].label == grey16[0].label
    assert any("cat" in c.label for c in grey[:3])


def test_a_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.asarray(Image.open(sample_photos(("coffee.png",))[0]).convert("RGB"))).resize((6000, 4000)).save(
        big, quality=80)
    pixels = read_image(big, min_side=256)
    assert pixels.shape[0] < 4000 and min(pixels.shape[:2]) >= 256


def test_an_enormous_image_is_refused_before_decoding(tmp_path):
    # A PNG whose header claims 60000 x 60000 pixels (3.6 gigapixels): refused without decoding.
    huge = tmp_path / "huge.png"
    Image.new("L", (1, 1)).save(huge)
    data = bytearray(huge.read_bytes())
    data[16:24] = (60000).to_bytes(4, "big") * 2
    import zlib

    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    huge.write_bytes(bytes(data))
    result = run_teachcam("classify", "--bundle", "unused", huge)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("teachcam: error: bundle not found")
    from teachcam.edge.errors import ImageError

    with pytest.raises(ImageError, match="too large to decode safely"):
        read_image(huge)


def test_cli_text_and_json(bundle_path):
    photos = sample_photos(("chelsea.png", "coffee.png"))
    result = run_teachcam("classify", "--bundle", bundle_path, "-k", "3", *photos)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "Egyptian cat" in result.stdout and "espresso" in result.stdout
    data = json.loads(run_teachcam("classify", "--bundle", bundle_path, "--json", *photos).stdout)
    assert data["embedder"] == "int8"
    assert data["runtime"].startswith("ai_edge_litert")
    assert [r["top"][0]["label"] for r in data["results"]] == ["Egyptian cat", "espresso"]
    assert len(data["results"][0]["top"]) == 5


def _assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("teachcam: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_images_give_one_clear_line(bundle_path, tmp_path):
    _assert_one_line_error(run_teachcam("classify", "--bundle", bundle_path, tmp_path / "missing.jpg"),
                           "image not found")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    _assert_one_line_error(run_teachcam("classify", "--bundle", bundle_path, text), "not an image teachcam can read")
    truncated = tmp_path / "truncated.jpg"
    Image.open(sample_photos(("coffee.png",))[0]).convert("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    _assert_one_line_error(run_teachcam("classify", "--bundle", bundle_path, truncated), "damaged or truncated")


def test_bad_bundles_give_one_clear_line(bundle_copy, tmp_path):
    photo = sample_photos(("coffee.png",))[0]
    broken = tmp_path / "broken"
    shutil.copytree(bundle_copy, broken)
    (broken / "embedder_int8.tflite").write_bytes(b"\0" * 100)
    _assert_one_line_error(run_teachcam("classify", "--bundle", broken, photo), "does not match the sha256")

    # A model file that is truncated but whose manifest was updated to match: the interpreter refuses it.
    manifest_path = bundle_copy / "manifest.json"
    model = bundle_copy / "embedder_int8.tflite"
    model.write_bytes(model.read_bytes()[:5000])
    manifest = json.loads(manifest_path.read_text())
    from teachcam.edge.model.bundle import file_sha256

    manifest["files"]["embedder_int8.tflite"] = file_sha256(model)
    manifest_path.write_text(json.dumps(manifest))
    _assert_one_line_error(run_teachcam("classify", "--bundle", bundle_copy, photo), "cannot load model")

    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    _assert_one_line_error(run_teachcam("classify", "--bundle", bundle_copy, photo), "format version 99")


def test_no_command_and_help():
    assert run_teachcam().returncode == 2
    result = run_teachcam("--help")
    assert result.returncode == 0 and "classify" in result.stdout and "convert" in result.stdout
