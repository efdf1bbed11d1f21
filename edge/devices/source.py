"""The camera protocol every source speaks (:mod:`.camera` has the sources, :mod:`.scenes` the demo's)."""

from __future__ import annotations

import numpy as np


class Source:
    """The camera protocol: open, read frames (RGB uint8, or None when none is ready), close."""

    name = "source"
    paced = False  # True: read() itself waits for the next frame (a real camera)
    finite = False  # True: None from read() means the end (a video or image list without --loop)

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        pass
