"""Test data: "one object per class" sets made by augmenting real sample photos."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from edge.images import read_image
from edge.samples import sample_photos


def augmented_views(photo: str, count: int, seed: int) -> list[np.ndarray]:
    """``count`` camera-like views of one sample photo: random crop, mirror, brightness, noise."""
    (path,) = sample_photos((photo,))
    base = Image.fromarray(read_image(path))
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(count):
        keep = rng.uniform(0.6, 0.95)
        w, h = int(base.width * keep), int(base.height * keep)
        left, top = int(rng.integers(0, base.width - w + 1)), int(rng.integers(0, base.height - h + 1))
        view = base.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.7, 1.3))
        array = np.asarray(view, np.float32) + rng.normal(0, 6, (view.height, view.width, 3))
        views.append(np.clip(array, 0, 255).astype(np.uint8))
    return views
