"""Representative images for int8 calibration, preprocessed exactly as the device will.

The default set is the colour sample photos that scikit-image and scikit-learn ship
(no network needed); ``teachcam convert --calibration DIR`` uses the user's own images.
Each photo contributes a few variants (centre, random crops at other scales, mirror) so
the activation ranges see something like camera framing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from teachcam.edge.errors import TeachcamError
from teachcam.edge.model.images import IMAGE_SUFFIXES, read_image
from teachcam.edge.model.preprocess import Preprocessor
from teachcam.edge.samples import sample_photos  # noqa: F401  (re-exported for callers)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def full_range_sample(height: int, width: int, channels: int = 3) -> np.ndarray:
    """A gradient that spans 0..255 in every channel, so uint8 input calibrates to scale 1, zero point 0."""
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    return np.broadcast_to(np.rint(ramp)[None, :, None], (height, width, channels)).astype(np.uint8)


def variants(frame: np.ndarray, preprocess: Preprocessor, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The centre view plus ``count - 1`` random crops/mirrors of one frame, model-ready."""
    out = [preprocess(frame)]
    height, width = frame.shape[:2]
    image = Image.fromarray(frame)
    for _ in range(count - 1):
        keep = rng.uniform(0.55, 1.0)
        h, w = max(8, int(height * keep)), max(8, int(width * keep))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = image.crop((int(left), int(top), int(left + w), int(top + h)))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(preprocess(crop))
    return out


def representative_pixels(paths: Iterable[Path], preprocess: Preprocessor, *, per_image: int = 4,
                          limit: int = 200, seed: int = 0, on_image=None, on_skip=None) -> list[np.ndarray]:
    """Model-ready uint8 samples for calibration: the full-range gradient first, then the photos.

    An unreadable image is skipped (``on_skip(path, error)``), not fatal.
    """
    rng = np.random.default_rng(seed)
    samples = [full_range_sample(preprocess.crop_height, preprocess.crop_width)]
    for path in paths:
        try:
            samples += variants(read_image(path, min_side=preprocess.shorter_side), preprocess, per_image, rng)
        except TeachcamError as exc:
            if on_skip:
                on_skip(path, exc)
        if on_image:
            on_image(path)
        if len(samples) > limit:
            break
    return samples[: limit + 1]
