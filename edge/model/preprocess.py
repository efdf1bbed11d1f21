"""Frame → model input, exactly as the bundle manifest says. One implementation for all callers.

The manifest's policy is "resize the shorter side to N (bilinear, antialiased), then
centre-crop M×M". It is computed in one pass: Pillow resizes just the source box that
the crop would keep, which gives the same pixels as resizing the whole frame and then
cropping (the filter is evaluated at the same source coordinates) for a fraction of the
work. Normalization is folded into the model, so the result is uint8: RGB (``color_order``
"RGB") or one luma channel (``"L"``, Pillow's ITU-R 601-2 conversion; the small CNN).

``small_greyscale``: bundles for an ImageNet backbone frame a small light-on-dark greyscale
image (an MNIST-style item) like a photo before the resize — see
:func:`edge.images.frame_small_greyscale`; a model trained on raw greyscale pixels does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from teachcam.edge.errors import BundleError
from teachcam.edge.model.images import frame_small_greyscale

_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "nearest": Image.Resampling.NEAREST, "area": Image.Resampling.BOX}


@dataclass(frozen=True)
class Preprocessor:
    """Resize-and-crop to the model's input size; RGB uint8 in, RGB uint8 out."""

    shorter_side: int
    crop_width: int
    crop_height: int
    interpolation: str = "bilinear"
    color_order: str = "RGB"
    frame_small: bool = False
    # The focus region (x0, y0, x1, y1), fractions of the whole frame; None: the whole frame. The region is then
    # treated as the frame: its shorter side → N, centre crop (so a region of the model's shape is used whole).
    region: tuple[float, float, float, float] | None = None

    @property
    def channels(self) -> int:
        return 1 if self.color_order == "L" else 3

    @classmethod
    def from_manifest(cls, section: dict) -> Preprocessor:
        try:
            color_order = section.get("color_order", "RGB")
            if color_order not in ("RGB", "L"):
                raise BundleError(f"unsupported colour order {color_order!r} in the bundle manifest")
            small = section.get("small_greyscale", {"policy": "none"}).get("policy", "none")
            if small not in ("none", "invert_and_border"):
                raise BundleError(f"unsupported small_greyscale policy {small!r} in the bundle manifest")
            resize, crop = section["resize"], section["crop"]
            if (resize.get("policy") != "shorter_side" or crop.get("policy") != "center"
                    or crop.get("offset_rounding", "floor") != "floor"):
                raise BundleError("unsupported resize/crop policy in the bundle manifest")
            interpolation = resize.get("interpolation", "bilinear")
            if interpolation not in _FILTERS:
                raise BundleError(f"unsupported interpolation {interpolation!r} in the bundle manifest")
            return cls(int(resize["shorter_side"]), int(crop["width"]), int(crop["height"]), interpolation,
                       color_order, small == "invert_and_border")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"the bundle manifest's preprocessing section is incomplete ({exc})") from None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The frame size after "shorter side → N" (torchvision's rounding: the longer side truncates)."""
        if width <= height:
            return self.shorter_side, int(self.shorter_side * height / width)
        return int(self.shorter_side * width / height), self.shorter_side

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The source-pixel box that ends up in the crop (centre crop, offsets rounded down to whole pixels) — of
        the focus region when there is one (its box in the frame is the "frame" the policy applies to)."""
        x, y = 0.0, 0.0
        if self.region is not None:
            x0, y0, x1, y1 = self.region
            x, y, width, height = x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height
        resized_w, resized_h = self.resized_size(max(1, round(width)), max(1, round(height)))
        left = (resized_w - self.crop_width) // 2
        top = (resized_h - self.crop_height) // 2
        sx, sy = width / resized_w, height / resized_h
        return (x + left * sx, y + top * sy, x + (left + self.crop_width) * sx, y + (top + self.crop_height) * sy)

    def __call__(self, frame: np.ndarray | Image.Image) -> np.ndarray:
        """``(H, W, 3)`` RGB uint8 → ``(crop_height, crop_width, channels)`` uint8."""
        if self.frame_small and isinstance(frame, np.ndarray):
            frame = frame_small_greyscale(frame)
        if self.color_order == "L":
            return self._grey(frame)
        if isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8:
            height, width = frame.shape[:2]
            if self.region is None and self.resized_size(width, height) == (width, height):
                # The camera already delivers the resized size (an ISP-scaled stream): the resize is the
                # identity, so the crop is a slice — the same pixels, no arithmetic.
                left, top = (width - self.crop_width) // 2, (height - self.crop_height) // 2
                return np.ascontiguousarray(frame[top : top + self.crop_height, left : left + self.crop_width])
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, np.uint8))
        if image.mode != "RGB":
            image = image.convert("RGB")
        box = self.crop_box(*image.size)
        out = image.resize((self.crop_width, self.crop_height), _FILTERS[self.interpolation], box=box)
        return np.asarray(out, dtype=np.uint8)

    def _grey(self, frame: np.ndarray | Image.Image) -> np.ndarray:
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame, np.uint8).squeeze())
        if image.mode != "L":
            image = image.convert("L")
        if (self.region is not None or image.size != (self.crop_width, self.crop_height)
                or self.resized_size(*image.size) != image.size):
            image = image.resize((self.crop_width, self.crop_height), _FILTERS[self.interpolation],
                                 box=self.crop_box(*image.size))
        return np.asarray(image, dtype=np.uint8)[:, :, None]

