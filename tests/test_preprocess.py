"""Preprocessing: the one-pass resize+crop equals the manifest's two-step policy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from teachcam.edge.model.images import read_image
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.samples import sample_photos

PRE = Preprocessor(shorter_side=256, crop_width=224, crop_height=224)


def two_step(image: Image.Image) -> np.ndarray:
    w, h = image.size
    size = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)  # torchvision's Resize(256)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (resized.width - 224) // 2, (resized.height - 224) // 2
    return np.asarray(resized.crop((left, top, left + 224, top + 224)))


@pytest.mark.parametrize("size", [(512, 512), (640, 480), (480, 640), (1024, 256)])
def test_one_pass_matches_resize_then_crop(size):
    photo = Image.open(sample_photos(("astronaut.png",))[0]).convert("RGB").resize(size)
    ours, reference = PRE(photo).astype(int), two_step(photo).astype(int)
    assert ours.shape == (224, 224, 3)
    assert np.abs(ours - reference).max() <= 1


def test_output_is_uint8_rgb_for_any_frame():
    for frame in (np.zeros((100, 80, 3), np.uint8), np.full((2000, 3000, 3), 200, np.uint8)):
        out = PRE(frame)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert PRE(np.full((50, 60, 3), 200, np.uint8)).max() == 200


def test_manifest_section_is_validated():
    from teachcam.edge.errors import BundleError

    with pytest.raises(BundleError, match="colour order"):
        Preprocessor.from_manifest({"color_order": "BGR", "resize": {}, "crop": {}})
    with pytest.raises(BundleError, match="incomplete"):
        Preprocessor.from_manifest({"color_order": "RGB"})


def test_read_image_applies_exif_orientation(tmp_path):
    rgb = read_image(sample_photos(("coffee.png",))[0])
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(rgb).save(rotated, exif=exif)
    assert read_image(rotated).shape == (rgb.shape[1], rgb.shape[0], 3)
