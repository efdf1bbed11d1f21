"""The daemon's side of the AI Camera: which embedder runs (the sensor when it can, else the Edge TPU or the CPU —
one line saying why), the network's long first upload under systemd, and the fall-back when the sensor refuses.

systemd's rules: until READY=1 the start must finish within TimeoutStartSec (180 s in our unit) — an upload can take
minutes, so while it **advances** the daemon sends EXTEND_TIMEOUT_USEC (and WATCHDOG=1); an upload that stops
advancing sends nothing, and systemd ends the start as it would for any hung start. Progress goes to the journal
(every 10 %), to systemd's STATUS and, as a notice, to the screen, the OLED and the terminal.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from teachcam.edge.config import DaemonConfig
from teachcam.edge.devices.aicamera import AICameraSource, SensorLoadError
from teachcam.edge.messages import NoticeShown
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.sensor import SensorEmbedder, SensorUnavailable

if TYPE_CHECKING:
    from teachcam.edge.daemon.loop import Daemon

log = logging.getLogger(__name__)

EXTEND_S = 30  # each advance of the upload gives the start this much more time


def wants_sensor(config: DaemonConfig) -> bool:
    return config.precision in ("auto", "imx500") and config.camera.source == "picamera2"


def cache_folder(config: DaemonConfig) -> Path:
    """Where packaged networks are kept (beside the store: /var/lib/teachcam/imx500 on a Pi)."""
    return Path(config.store).expanduser().parent / "imx500"


def create_embedder(d: Daemon, bundle) -> Embedder | SensorEmbedder:
    """AI Camera → Edge TPU → CPU int8, as the config's precision allows: each tried with its probe."""
    config = d.config
    if wants_sensor(config) and d.sensor_refused is None and (config.precision == "imx500" or "imx500" in bundle.manifest):
        try:
            embedder = SensorEmbedder.create(bundle, cache_folder(config),
                                             lambda: Embedder.create(bundle, "int8", num_threads=config.threads))
            log.info("AI Camera: the network runs on the sensor (%s)", embedder.rpk)
            return embedder
        except SensorUnavailable as exc:
            log.warning("AI Camera: %s; embedding on the %s instead", exc,
                        "CPU" if config.precision == "imx500" else "Edge TPU if there is one, else the CPU")
    return Embedder.create(bundle, config.precision, num_threads=config.threads)  # imx500 here: the CPU int8 model


def camera_source(d: Daemon, lores: tuple[int, int]):
    """The AI Camera's source when the sensor embeds, else None (the ordinary sources)."""
    if not isinstance(d.embedder, SensorEmbedder):
        return None
    camera = d.config.camera
    return AICameraSource(d.embedder.rpk, d.embedder.model.output.shape[-1], camera.width, camera.height, lores,
                          fps=camera.fps)


class UploadWatch:
    """Reports the network's upload while frames cannot come yet (called when the loop got no frame)."""

    def __init__(self, d: Daemon):
        self.d = d
        self.sent = -1
        self.tenth = -1

    def tick(self) -> None:
        d = self.d
        progress = getattr(d.grabber.source, "upload_progress", None) if d.grabber is not None else None
        if progress is None:
            return
        sent, size = progress()
        if not size or sent >= size:
            return
        if sent > self.sent:  # advancing: the start may take longer, the watchdog is fed
            self.sent = sent
            if not d.ready:
                d.notifier.notify(f"EXTEND_TIMEOUT_USEC={EXTEND_S * 1_000_000}")
            d.notifier.ping()
        percent = int(100 * sent / size)
        d.notifier.notify(f"STATUS=loading the network onto the AI Camera: {percent} %")
        if percent // 10 != self.tenth:
            self.tenth = percent // 10
            text = f"Loading the network onto the AI Camera: {percent} % (the first time takes minutes)"
            log.warning("%s", text)
            d.event(NoticeShown(text=text, seconds=30, via="imx500"), log_it=False)


def status(d: Daemon) -> dict:
    """The AI Camera's lines of ``teachcam status``: frames with and without the sensor's output, or why not."""
    source = d.grabber.source if d.grabber is not None else None
    if isinstance(source, AICameraSource):
        sent, size = source.upload_progress()
        return {"sensor": {"network": source.rpk.name, "frames": source.with_output, "skipped": source.skipped,
                           "uploading": source.uploading, "upload": [sent, size] if size and sent < size else None}}
    return {"sensor": {"refused": d.sensor_refused}} if d.sensor_refused else {}


def refused(d: Daemon) -> bool:
    """The AI Camera refused the network (the grabber's last error): True, and from now on the CPU embeds (the
    caller assembles the models and the camera again)."""
    error = d.grabber.last_exception if d.grabber is not None else None
    if not isinstance(error, SensorLoadError) or not isinstance(d.embedder, SensorEmbedder):
        return False
    d.sensor_refused = str(error)
    log.error("AI Camera: %s; running the CPU embedder, with the AI Camera as an ordinary camera", error)
    return True
