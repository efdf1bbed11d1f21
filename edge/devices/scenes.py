"""The demo camera: sample photos filmed like a hand-held camera — jitter, lighting drift and noise — in a scripted
sequence of scenes (``teachcam demo``, the ``demo`` source, benchmarks and tests)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from teachcam.edge.devices.source import Source
from teachcam.edge.errors import CameraError
from teachcam.edge.model.images import read_image
from teachcam.edge.samples import sample_photos

log = logging.getLogger(__name__)

OBJECTS = {"cat": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg"}
BACKGROUND = ("nothing", "astronaut.png")  # a scene nobody taught: should read as unknown


@dataclass(frozen=True)
class Scene:
    label: str  # the truth: a class name, or "unknown"
    photo: str
    seconds: float
    teach: bool = False


def default_schedule() -> list[Scene]:
    teach = [Scene(label, photo, 2.5, teach=True) for label, photo in OBJECTS.items()]
    order = ["cat", "nothing", "coffee", "rocket", "cat", "nothing", "coffee", "rocket"]
    photos = {**OBJECTS, BACKGROUND[0]: BACKGROUND[1]}
    show = [Scene(label if label in OBJECTS else "unknown", photos[label], 3.0) for label in order]
    return teach + show


class DemoSource(Source):
    """Frames of a scripted scene sequence; frame ``n`` shows ``scene_at(n)``. Loops forever."""

    name = "demo"

    def __init__(self, fps: float = 30.0, schedule: list[Scene] | None = None, size=(640, 480), seed: int = 0):
        self.fps = fps
        self.schedule = schedule or default_schedule()
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.index = 0
        self.photos: dict[str, Image.Image] = {}
        self._bounds = np.cumsum([round(s.seconds * fps) for s in self.schedule])

    def open(self) -> None:
        for scene in self.schedule:
            if scene.photo not in self.photos:
                found = sample_photos((scene.photo,))
                if not found:
                    raise CameraError("the demo camera films sample photos from scikit-image: "
                                      "pip install 'teachcam[demo]'")
                self.photos[scene.photo] = Image.fromarray(read_image(found[0]))
        self._noise = [self.rng.normal(0, 5, (self.size[1], self.size[0], 3)).astype(np.int16) for _ in range(4)]

    @property
    def total_frames(self) -> int:
        return int(self._bounds[-1])

    def scene_at(self, number: int) -> tuple[int, Scene, int]:
        """(scene index, scene, frames since the scene started) for frame ``number`` (1-based)."""
        position = (number - 1) % self.total_frames
        i = int(np.searchsorted(self._bounds, position, side="right"))
        start = int(self._bounds[i - 1]) if i else 0
        return i, self.schedule[i], position - start

    def hint(self) -> dict:
        """What the demo camera shows now, what comes next and in how many seconds (the page's hint: hold while
        the scene you teach is on, not across its end)."""
        i, scene, into = self.scene_at(max(self.index, 1))
        following = self.schedule[(i + 1) % len(self.schedule)]
        return {"now": scene.label, "next": following.label,
                "in_s": round(max(0.0, scene.seconds - into / self.fps), 1)}

    def read(self) -> np.ndarray:
        self.index += 1
        _, scene, _ = self.scene_at(self.index)
        photo = self.photos[scene.photo]
        t = self.index / self.fps
        keep = 0.8 + 0.08 * np.sin(t * 0.9) + self.rng.uniform(-0.02, 0.02)
        w, h = photo.width * keep, photo.height * keep
        aspect = self.size[0] / self.size[1]
        w, h = (min(w, h * aspect), min(h, w / aspect))
        cx = photo.width / 2 + photo.width * (0.05 * np.sin(t * 1.3) + self.rng.uniform(-0.01, 0.01))
        cy = photo.height / 2 + photo.height * (0.05 * np.cos(t * 1.1) + self.rng.uniform(-0.01, 0.01))
        left, top = max(0.0, min(photo.width - w, cx - w / 2)), max(0.0, min(photo.height - h, cy - h / 2))
        frame = photo.resize(self.size, Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
        frame = ImageEnhance.Brightness(frame).enhance(1.0 + 0.2 * np.sin(t * 0.7))
        noisy = np.asarray(frame, np.int16) + self._noise[self.index % len(self._noise)]
        return np.clip(noisy, 0, 255).astype(np.uint8)
