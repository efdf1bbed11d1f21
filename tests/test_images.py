"""Small greyscale framing (edge.images.frame_small_greyscale) and where the bundle applies it."""

from __future__ import annotations

import dataclasses

import numpy as np

from teachcam.edge.model.images import SMALL_SIDE, frame_small_greyscale
from teachcam.edge.model.preprocess import Preprocessor

PRE = Preprocessor(shorter_side=256, crop_width=224, crop_height=224)


def grey(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2)


def test_small_light_on_dark_greyscale_is_framed_like_a_photo():
    item = np.zeros((28, 28), np.uint8)
    item[6:22, 8:20] = 220  # a light item on black, as in MNIST
    framed = frame_small_greyscale(grey(item))
    assert framed.shape == (32, 32, 3)  # a 2-pixel border
    assert (framed[0] == 255).all() and (framed[:, -1] == 255).all()  # light ground
    assert (framed[2 + 10, 2 + 10] == 35).all()  # the item inverted


def test_photos_and_dark_on_light_small_images_are_left_alone():
    light = np.full((28, 28), 240, np.uint8)
    light[10:18, 10:18] = 10
    assert frame_small_greyscale(grey(light)) is not None
    assert frame_small_greyscale(grey(light)).shape == (28, 28, 3)
    colour = np.zeros((28, 28, 3), np.uint8)
    colour[..., 0] = 200
    assert frame_small_greyscale(colour) is colour
    big = grey(np.zeros((SMALL_SIDE + 1, 100), np.uint8))
    assert frame_small_greyscale(big) is big


def test_the_bundle_preprocessing_decides_whether_small_images_are_framed():
    section = {"color_order": "RGB", "resize": {"policy": "shorter_side", "shorter_side": 256},
               "crop": {"policy": "center", "width": 224, "height": 224}}
    assert not Preprocessor.from_manifest(section).frame_small  # bundles from before the key: as they were
    framed = Preprocessor.from_manifest({**section, "small_greyscale": {"policy": "invert_and_border"}})
    assert framed.frame_small
    item = np.zeros((28, 28), np.uint8)
    item[6:22, 8:20] = 220
    assert framed(grey(item))[0, 0].tolist() == [255, 255, 255]
    assert dataclasses.replace(framed, frame_small=False)(grey(item))[0, 0].tolist() == [0, 0, 0]


def test_greyscale_models_get_one_luma_channel_at_their_own_size():
    section = {"color_order": "L", "resize": {"policy": "shorter_side", "shorter_side": 28, "interpolation": "area"},
               "crop": {"policy": "center", "width": 28, "height": 28}}
    pre = Preprocessor.from_manifest(section)
    item = np.zeros((28, 28), np.uint8)
    item[6:22, 8:20] = 220
    out = pre(grey(item))
    assert out.shape == (28, 28, 1) and np.array_equal(out[:, :, 0], item)  # exact size: untouched
    photo = np.zeros((480, 640, 3), np.uint8)
    photo[..., 1] = 200  # pure green → luma 0.587 * 200
    out = pre(photo)
    assert out.shape == (28, 28, 1) and abs(int(out[14, 14, 0]) - 117) <= 1
