"""The focus region: the part of the picture the model looks at — its rules, in one place for every entry point
(the config, the control socket, the page, MQTT, the CLI) and for the preprocessing that applies it.

A region is ``(x0, y0, x1, y1)``, fractions of the whole frame (0-1, left/top to right/bottom); None is the whole
frame. :class:`teachcam.edge.model.preprocess.Preprocessor` treats the region as the frame (its shorter side → N,
centre crop), so a region of the model's own shape is used whole.
"""

from __future__ import annotations

import math

MIN_REGION = 0.05  # a region's side, as a fraction of the frame's: smaller is a few pixels of a camera's picture


def check_region(value) -> tuple[float, float, float, float] | None:
    """A focus region as given (a list/tuple of four numbers, or "x0,y0,x1,y1"; None, [] or "" for none) →
    ``(x0, y0, x1, y1)`` fractions of the frame, or None. Raises ValueError with the one line to show."""
    if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise ValueError("a focus region is four numbers x0,y0,x1,y1 (fractions of the picture, 0-1; e.g. "
                         "0.25,0.25,0.75,0.75 for the middle)")
    try:
        x0, y0, x1, y1 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"a focus region is four numbers, not {list(value)!r}") from None
    if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise ValueError(f"a focus region's numbers are fractions of the picture, 0 to 1 (got {x0}, {y0}, {x1}, {y1})")
    if x1 - x0 < MIN_REGION or y1 - y0 < MIN_REGION:
        raise ValueError(f"a focus region needs x0 < x1 and y0 < y1, each side at least {MIN_REGION:.0%} of the "
                         f"picture (got {x0}, {y0}, {x1}, {y1})")
    return (round(x0, 4), round(y0, 4), round(x1, 4), round(y1, 4))



def region_key(region: tuple[float, float, float, float] | None) -> str:
    """How an example records the region its frame was taken with: "whole", or "x0,y0,x1,y1"."""
    return "whole" if region is None else ",".join(f"{v:g}" for v in region)
