"""Read image files as RGB uint8 arrays, whatever their mode, bit depth or size.

16-bit, greyscale, palette, CMYK and RGBA images are converted (alpha composited on
white); EXIF orientation is applied. A JPEG much larger than needed is decoded at a
reduced scale (libjpeg's DCT scaling), so a huge photo costs little memory; other huge
images are refused before decoding by Pillow's decompression-bomb limit.

:func:`frame_small_greyscale` frames a small light-on-dark greyscale image (MNIST-style)
like a photo for an ImageNet backbone; the bundle's preprocessing says whether to apply it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from teachcam.edge.errors import ImageError

# The file endings teachcam reads as images (folders, datasets, calibration, exports): what Pillow decodes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

MAX_PIXELS = 64_000_000  # decoded pixels; above this a non-JPEG is refused (about 200 MB as RGB)
SMALL_SIDE = 64  # images up to this size on the shorter side count as small
DARK_GROUND = 96  # mean edge-pixel level below which the ground counts as dark


def is_small_dark_greyscale(rgb: np.ndarray) -> bool:
    """True for a small greyscale image whose edge pixels are dark (a light item on black)."""
    if rgb.ndim != 3 or min(rgb.shape[:2]) > SMALL_SIDE or min(rgb.shape[:2]) < 4:
        return False
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        return False
    grey = rgb[..., 0]
    edges = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(edges.mean()) < DARK_GROUND


def frame_small_greyscale(rgb: np.ndarray) -> np.ndarray:
    """A small light-on-dark greyscale image → dark on light with a border; anything else unchanged.

    ImageNet features describe dark-on-light items (photos) much better (Fashion-MNIST,
    20 shots, int8 KNN: 0.782 as is → 0.814 framed; scripts/bench/fewshot.py). The border
    (1/14 of the shorter side, 2 px for 28×28) is what the usual centre crop
    (224 of 256) removes, so the whole item stays in view.
    """
    if not is_small_dark_greyscale(rgb):
        return rgb
    border = max(1, round(min(rgb.shape[:2]) / 14))
    framed = np.pad(255 - rgb[..., 0], border, constant_values=255)
    return np.repeat(framed[:, :, None], 3, axis=2)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min(initial=0)), float(array.max(initial=1))
        scaled = (array - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | Path, *, min_side: int = 0) -> np.ndarray:
    """Read ``path`` as an ``(H, W, 3)`` RGB uint8 array.

    Args:
        min_side: the caller needs at least this many pixels on the shorter side; a JPEG
            is decoded at the smallest DCT scale that keeps it (0: full size).

    Raises:
        ImageError: missing, unreadable, not an image, or too large to decode safely.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image")
    return _decode(path, str(path), min_side)


def read_image_bytes(data: bytes, *, name: str = "the image", min_side: int = 0) -> np.ndarray:
    """:func:`read_image` for an image in memory (an upload): the same checks, the same errors."""
    import io

    if not data:
        raise ImageError(f"{name} is empty")
    return _decode(io.BytesIO(data), name, min_side)


def _decode(source, name: str, min_side: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                if image.format == "JPEG" and min_side:
                    w, h = image.size
                    factor = max(1, min(w, h) // max(1, min_side))
                    if factor >= 2:
                        image.draft("RGB", (w // factor, h // factor))
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{name} is too large to decode safely ({width}x{height} pixels, limit "
                        f"{MAX_PIXELS // 1_000_000} megapixels); resize it first"
                    )
                image = ImageOps.exif_transpose(image)
                return np.asarray(_to_rgb(image), dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is too large to decode safely ({exc}); resize it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image teachcam can read (PNG, JPEG, BMP, GIF, TIFF, WebP)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is damaged or truncated ({exc})") from None
    except MemoryError:
        raise ImageError(f"{name} is too large to decode in the memory available; resize it first") from None
