"""The Raspberry Pi AI Camera (Sony IMX500): the Pi camera source whose frames come with the sensor's embedding.

picamera2's rules (``picamera2/devices/imx500/imx500.py``): ``IMX500(rpk)`` hands the network to the sensor's driver
and must come **before** ``Picamera2()`` opens the camera (``camera_num`` says which one); the first upload of a
network takes minutes (then the sensor keeps it), and frames arrive meanwhile without output; afterwards each
frame's metadata carries the output tensor, which ``get_outputs`` dequantises to float32 — except on frames where
the network fell behind. The sensor looks at its own crop of the scene: the centre of the full sensor at the
network's aspect (``set_auto_aspect_ratio``), the same square the CPU's preprocessing cuts from the Pi's picture —
so the thumbnail kept with an example shows what the sensor embedded. A focus region is asked of the sensor too.

:meth:`read` returns a frame only when it has an embedding (``embedding``); the others are counted: ``uploading``
while the network is being uploaded (``upload_progress`` says how far), ``skipped`` afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from teachcam.edge.devices.camera import Picamera2Source
from teachcam.edge.errors import CameraError, first_line

FW_NETWORK_STAGE = 2  # picamera2's stage of the network's upload (get_fw_upload_progress)
FULL_SENSOR = (4056, 3040)  # the IMX500's pixels: what the inference region is given in


class SensorLoadError(CameraError):
    """The AI Camera did not take the network (the daemon falls back to the CPU)."""


class AICameraSource(Picamera2Source):
    name = "picamera2 (AI Camera)"

    def __init__(self, rpk: Path, embedding_size: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.rpk, self.embedding_size = Path(rpk), int(embedding_size)
        self.imx500 = None
        self.embedding: np.ndarray | None = None  # the sensor's embedding of the frame read() returned
        self.uploading = 0  # frames without output while the network was uploaded
        self.skipped = 0  # frames without output afterwards (the network fell behind)
        self.with_output = 0

    def open(self) -> None:
        try:
            from picamera2.devices import IMX500
        except ImportError:
            raise SensorLoadError("picamera2 has no AI Camera support: sudo apt install python3-picamera2 "
                                  "imx500-all") from None
        try:
            self.imx500 = IMX500(str(self.rpk))  # before Picamera2(): the driver takes a network only then
            self.camera_num = self.imx500.camera_num
            self._aim()  # a package without network_info.txt has no input size: KeyError
        except Exception as exc:  # RuntimeError from picamera2, OSError from the driver, KeyError (see above)
            self.imx500 = None
            raise SensorLoadError(f"the AI Camera did not take the network {self.rpk.name} "
                                  f"({type(exc).__name__}: {first_line(exc)})") from None
        super().open()

    def set_region(self, region) -> bool:
        looked = super().set_region(region)
        if self.imx500 is not None:
            self._aim()
        return looked

    def _aim(self) -> None:
        """The sensor's inference region: the centre square (the network's aspect) of the picture or the region."""
        width, height = FULL_SENSOR
        x0, y0, x1, y1 = self.region or (0.0, 0.0, 1.0, 1.0)
        left, top, w, h = x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height
        in_w, in_h = self.imx500.get_input_size()
        scale = min(w / in_w, h / in_h)
        cw, ch = in_w * scale, in_h * scale
        self.imx500.set_inference_roi_abs((round(left + (w - cw) / 2), round(top + (h - ch) / 2), round(cw),
                                           round(ch)))

    def upload_progress(self) -> tuple[int, int]:
        """(bytes sent, size) of the network's upload; (0, 0) when none is under way or it is unknown."""
        if self.imx500 is None:
            return (0, 0)
        try:
            return tuple(self.imx500.get_fw_upload_progress(FW_NETWORK_STAGE))
        except (OSError, ValueError, IndexError):
            return (0, 0)

    def read(self) -> np.ndarray | None:
        image = super().read()
        outputs = self.imx500.get_outputs(self.metadata) if image is not None else None
        if not outputs:
            sent, size = self.upload_progress()
            if size and sent < size:
                self.uploading += 1
            else:
                self.skipped += 1
            self.embedding = None
            return None
        embedding = np.asarray(outputs[0], np.float32).reshape(-1)
        if embedding.size != self.embedding_size:
            raise SensorLoadError(f"the AI Camera's network gives {embedding.size} values, the bundle's "
                                  f"{self.embedding_size}: the sensor runs another network")
        self.embedding, self.with_output = embedding, self.with_output + 1
        return image

    def close(self) -> None:
        super().close()
        self.imx500 = None
