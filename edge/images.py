"""Read image files as RGB uint8 arrays, whatever their mode, bit depth or size.

16-bit, greyscale, palette, CMYK and RGBA images are converted (alpha composited on
white); EXIF orientation is applied. A JPEG much larger than needed is decoded at a
reduced scale (libjpeg's DCT scaling), so a huge photo costs little memory; other huge
images are refused before decoding by Pillow's decompression-bomb limit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edge.errors import ImageError

MAX_PIXELS = 64_000_000  # decoded pixels; above this a non-JPEG is refused (about 200 MB as RGB)


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
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.format == "JPEG" and min_side:
                    w, h = image.size
                    factor = max(1, min(w, h) // max(1, min_side))
                    if factor >= 2:
                        image.draft("RGB", (w // factor, h // factor))
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{path} is too large to decode safely ({width}x{height} pixels, limit "
                        f"{MAX_PIXELS // 1_000_000} megapixels); resize it first"
                    )
                image = ImageOps.exif_transpose(image)
                return np.asarray(_to_rgb(image), dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path} is too large to decode safely ({exc}); resize it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path} is not an image teachcam can read (PNG, JPEG, BMP, GIF, TIFF, WebP)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} is damaged or truncated ({exc})") from None
    except MemoryError:
        raise ImageError(f"{path} is too large to decode in the memory available; resize it first") from None
