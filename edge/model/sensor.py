"""The Raspberry Pi AI Camera (Sony IMX500) as the embedder: the network runs on the sensor, the Pi's CPU stays free.

The bundle carries ``imx500/packerOut.zip`` (``teachcam convert --imx500``); on the Pi, Raspberry Pi's
``imx500-package`` (apt ``imx500-all``) turns it into the ``network.rpk`` the camera loads — once: the rpk is cached
under the bundle's sha256 (:func:`network_rpk`). Each frame's embedding then arrives in its metadata
(:mod:`teachcam.edge.devices.aicamera`); the daemon does not invoke a model for camera frames.

The sensor embeds only what it sees. What it cannot see — a photo enrolled from a file or the page, a fleet peer's
picture, a store re-embedded after a bundle change — is embedded by the bundle's CPU int8 embedder, the sensor's
**stand-in** (cosine 0.96 to the sensor's simulated embedding of the same picture; docs/ai-camera.md). Such examples
are marked (``Example.space == "cpu"``) and counted, never mixed silently.

``python -m teachcam.edge.model.sensor BUNDLE CACHE`` packages the rpk ahead of time (scripts/install-pi does).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from teachcam.edge.errors import BundleError, TeachcamError, first_line
from teachcam.edge.model.bundle import Bundle
from teachcam.edge.model.models import Embedder

log = logging.getLogger(__name__)

PACKAGER = "imx500-package"
INSTALL = "sudo apt install imx500-all (the AI Camera's firmware and imx500-package)"


class SensorUnavailable(TeachcamError):
    """The AI Camera cannot run the bundle's network here (one line: why, and what to do)."""


def sensor_section(bundle: Bundle) -> dict:
    section = bundle.manifest.get("imx500")
    if not section:
        raise SensorUnavailable(f"the bundle at {bundle.path} has no AI Camera network: convert it with "
                                "`teachcam convert --imx500`")
    return section


def package_digest(bundle: Bundle) -> str:
    """The sha256 of the bundle's AI Camera package (the manifest's): it names the rpk and the sensor's space."""
    section = sensor_section(bundle)
    digest = str(bundle.manifest.get("files", {}).get(section["file"], ""))
    if not digest:
        raise BundleError(f"the bundle's manifest lists no sha256 for {section['file']}")
    return digest


def sensor_fingerprint(bundle: Bundle) -> str:
    """The fingerprint of the AI Camera's embeddings (a store's space): ``imx500:`` and the package's sha256."""
    return "imx500:" + package_digest(bundle)


def network_rpk(bundle: Bundle, cache: Path) -> Path:
    """The bundle's network as the camera loads it (``CACHE/<sha256>.rpk``), packaged once by ``imx500-package``.

    Raises:
        SensorUnavailable: no network in the bundle, no packager, or the packager failed.
    """
    section = sensor_section(bundle)
    target = Path(cache) / f"{package_digest(bundle)}.rpk"
    if target.is_file():
        return target
    packager = shutil.which(PACKAGER)
    if packager is None:
        raise SensorUnavailable(f"{PACKAGER} is not installed: {INSTALL}")
    Path(cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".packaging-") as tmp:
        log.info("packaging the AI Camera's network (%s → %s)…", section["file"], target.name)
        done = subprocess.run([packager, "-i", str(bundle.file(section["file"])), "-o", tmp], capture_output=True,
                              text=True, timeout=600, check=False)
        made = Path(tmp) / "network.rpk"
        if done.returncode != 0 or not made.is_file():
            said = (done.stderr or done.stdout).strip().splitlines()
            raise SensorUnavailable(f"{PACKAGER} failed: {said[-1] if said else 'no network.rpk'}")
        made.replace(target)  # atomic: a half-written rpk is never taken for a packaged one
    return target


def camera_present() -> str | None:
    """None when picamera2 sees an AI Camera, else why not (one line)."""
    try:
        from picamera2 import Picamera2
        from picamera2.devices import IMX500  # noqa: F401  (picamera2 0.3.18 and later)
    except ImportError:
        return "picamera2 with the AI Camera's support is not installed: sudo apt install python3-picamera2 imx500-all"
    except Exception as exc:
        return f"picamera2 cannot be imported ({first_line(exc)})"
    try:
        cameras = Picamera2.global_camera_info()
    except Exception as exc:
        return f"libcamera lists no camera ({first_line(exc)})"
    if not any(c.get("Model") == "imx500" for c in cameras):
        return "no AI Camera connected" + (f" (cameras: {', '.join(c.get('Model', '?') for c in cameras)})"
                                           if cameras else "")
    return None


@dataclass
class SensorEmbedder:
    """The AI Camera's network: camera frames come with its embedding; anything else is embedded by ``cpu``, the
    bundle's CPU int8 embedder (a stand-in, marked in the store)."""

    cpu: Embedder
    section: dict
    rpk: Path | None  # None: only the stand-in (a CLI on the store, no camera)
    fingerprint: str
    stand_in = True  # embed() is the CPU's stand-in, not the sensor

    @classmethod
    def create(cls, bundle: Bundle, cache: Path, make_cpu: Callable[[], Embedder]) -> SensorEmbedder:
        """The AI Camera's embedder, once its probes pass (the camera is there, the network packaged); ``make_cpu``
        loads its stand-in only then. Raises SensorUnavailable (one line) when it cannot run here."""
        sensor_section(bundle)  # no network in the bundle: nothing else to probe
        missing = camera_present()
        if missing is not None:
            raise SensorUnavailable(missing)
        rpk = network_rpk(bundle, cache)
        return cls._with(make_cpu(), rpk, bundle)

    @classmethod
    def without_camera(cls, bundle: Bundle, cpu: Embedder) -> SensorEmbedder:
        """``cpu`` as the sensor's stand-in, with no camera (a CLI on a store of the AI Camera's embeddings: what it
        embeds is marked, and the sensor's rows stay as they are instead of the store being re-embedded)."""
        return cls._with(cpu, None, bundle)

    @classmethod
    def _with(cls, cpu: Embedder, rpk: Path | None, bundle: Bundle) -> SensorEmbedder:
        section = sensor_section(bundle)
        size, cpu_size = int(section.get("output", {}).get("embedding_size", 0)), int(np.prod(cpu.model.output.shape[1:]))
        if size != cpu_size:
            raise SensorUnavailable(f"the bundle's AI Camera network gives {size} values, its CPU embedder {cpu_size}: "
                                    "rebuild it with teachcam convert --imx500")
        return cls(cpu, section, rpk, sensor_fingerprint(bundle))

    @property
    def model(self):
        return self.cpu.model  # its output shape is the sensor's (checked above)

    @property
    def variant(self) -> str:
        return self.cpu.variant

    @property
    def precision(self) -> str:
        return "imx500"

    @property
    def kernels(self) -> str:
        return "imx500"

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.section["input"]["width"]), int(self.section["input"]["height"])

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        return self.cpu.embed(pixels)


def main(argv: list[str]) -> int:
    from teachcam.edge.model.bundle import load_bundle

    if len(argv) != 2:
        print("usage: python -m teachcam.edge.model.sensor BUNDLE CACHE_DIR", file=sys.stderr)
        return 2
    try:
        print(network_rpk(load_bundle(argv[0]), Path(argv[1])))
    except TeachcamError as exc:
        print(f"teachcam: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
