"""Sample photos that ship inside installed packages (scikit-image, scikit-learn).

They need no network, so the demo, the tests and int8 calibration can use real photos
anywhere. Found by file path without importing the packages (importing scikit-image
would pull SciPy into the device process).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SKIMAGE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "retina.jpg", "ihc.png", "color.png", "hubble_deep_field.jpg",
                  "coins.png", "camera.png", "page.png", "horse.png", "moon.png")
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# The photos with a published top-1 for torchvision's MobileNetV2 (checked on its reference outputs).
REFERENCE_TOP1 = {"chelsea.png": "Egyptian cat", "coffee.png": "espresso", "motorcycle_left.png": "moped",
                  "china.jpg": "palace"}


def _package_dir(name: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / sub


def sample_photos(names: tuple[str, ...] | None = None) -> list[Path]:
    """Paths of the sample photos installed here (all of them, or just ``names``)."""
    found = []
    for package, sub, known in (("skimage", "data", SKIMAGE_PHOTOS), ("sklearn", "datasets/images", SKLEARN_PHOTOS)):
        folder = _package_dir(package, sub)
        if folder is None:
            continue
        found += [folder / n for n in known if (names is None or n in names) and (folder / n).is_file()]
    return found
