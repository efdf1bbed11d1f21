"""Test double for picamera2's ``IMX500`` (``picamera2/devices/imx500/imx500.py``; the AI Camera's sensor runs the
network): written from picamera2's source, strict where teachcam could go wrong.

* ``IMX500(network_file, camera_id="")`` looks for an AI Camera (``picamera2.CAMERAS``, Model ``imx500``; else
  ``RuntimeError('IMX500: Requested camera dev-node not found')``), takes its camera number from
  ``Picamera2.global_camera_info()`` (``camera_num``), and hands the network to the sensor's driver — which must
  happen before the camera is opened: a ``Picamera2`` already open on it makes the driver's ioctl fail (EBUSY →
  ``RuntimeError('IMX500: Unable to set network firmware …')``). A missing file: ``RuntimeError('Firmware file …
  does not exist.')``. The ``.rpk`` is parsed as picamera2 parses it: blocks (``9464`` header with a big-endian size,
  60 bytes in all, the payload, a ``3695`` footer) then a cpio archive holding ``network_info.txt`` (every line
  ``key=value``) and, optionally, ``network_intrinsics`` (JSON).
* The network is uploaded when the camera starts streaming: the first upload of a network takes ``UPLOAD_SECONDS``
  (the real one "can take several minutes"); a network the sensor already holds (the last one uploaded, by content)
  loads at once. ``get_fw_upload_progress(FW_NETWORK_STAGE)`` gives (bytes sent, size) meanwhile, as the debugfs
  files do; frames come meanwhile, without output.
* Each frame's metadata then holds ``CnnOutputTensor`` (a sequence of float32, dequantised from the output tensor's
  8 bits with its scale, in the tensor's Fortran order) and ``CnnOutputTensorInfo`` (a sequence of byte values: the
  ``CnnOutputTensorInfoExported`` struct, 64-byte name, u32 count, 16 × {u32, u32, u16[16]}, exactly its size);
  ``get_outputs`` reads them as picamera2 does (None without output). Frames where the network fell behind
  (``DROP``: a callable frame number → bool) carry no output.
* The sensor's input is its own crop: the inference ROI (the full 4056×3040 sensor by default, squeezed to the input
  size; ``set_auto_aspect_ratio`` crops the centre to the input's aspect) of the scene (``picamera2.SCENE``, which
  spans the full sensor), resized to the input size, run through ``NETWORK`` (a callable RGB uint8 → float vector;
  by default a fixed random projection). The output tensor's shape, bits and scale come from the package's
  ``dnnParams.xml`` (the converter's, inside ``packerOut.zip``, which the fake ``imx500-package`` puts in the rpk).
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import os
import re
import struct
import sys
import time
import zipfile

import numpy as np

import picamera2

NETWORK_NAME_LEN = 64
MAX_NUM_TENSORS = 16
MAX_NUM_DIMENSIONS = 16
FW_LOADER_STAGE, FW_MAIN_STAGE, FW_NETWORK_STAGE = 0, 1, 2
FULL_SENSOR = (0, 0, 4056, 3040)

UPLOAD_SECONDS = 0.0  # the first upload of a network the sensor does not hold
NETWORK = None  # RGB uint8 (input size) → float vector; None: a fixed random projection
DROP = None  # frame number → True: the network fell behind, no output for that frame
FLASHED: set = set()  # the networks (sha256 of the rpk) the sensor holds: they load at once
INSTANCES: list = []


class OutputTensorInfo(ctypes.LittleEndianStructure):
    _fields_ = [("tensor_data_num", ctypes.c_uint32), ("num_dimensions", ctypes.c_uint32),
                ("size", ctypes.c_uint16 * MAX_NUM_DIMENSIONS)]


class CnnOutputTensorInfoExported(ctypes.LittleEndianStructure):
    _fields_ = [("network_name", ctypes.c_char * NETWORK_NAME_LEN), ("num_tensors", ctypes.c_uint32),
                ("info", OutputTensorInfo * MAX_NUM_TENSORS)]


def write_rpk(path, payload: bytes, network_info: str, intrinsics: dict | None = None) -> None:
    """The rpk layout picamera2 reads (what the fake imx500-package writes)."""
    files = [("network_info.txt", network_info.encode("ascii"))]
    if intrinsics is not None:
        files.append(("network_intrinsics", json.dumps(intrinsics).encode()))
    block = b"9464" + struct.pack(">I", len(payload)) + bytes(52) + payload + b"3695"
    with open(path, "wb") as out:
        out.write(block + _cpio(files))


def _cpio(files) -> bytes:
    out = bytearray()
    for number, (name, data) in enumerate([*files, ("TRAILER!!!", b"")]):
        fields = [number + 1, 0o100644 if data else 0, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        out += b"070701" + "".join(f"{v:08x}" for v in fields).encode() + name.encode() + b"\0"
        out += bytes(-len(out) % 4)
        out += data
        out += bytes(-len(out) % 4)
    return bytes(out)


def _read_cpio(data: bytes) -> dict:
    files, offset = {}, 0
    if data and not data.startswith(b"070701"):
        raise RuntimeError("Unrecognized archive format")  # what libarchive says of a non-cpio
    while offset + 110 <= len(data):
        if data[offset:offset + 6] != b"070701":
            raise RuntimeError("Unrecognized archive format")  # what libarchive says of a non-cpio
        fields = [int(data[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        size, name_size = fields[6], fields[11]
        name = data[offset + 110: offset + 110 + name_size - 1].decode()
        offset += 110 + name_size
        offset += -offset % 4
        if name == "TRAILER!!!":
            break
        files[name] = data[offset:offset + size]
        offset += size + (-size % 4)
    return files


class IMX500:
    def __init__(self, network_file: str, camera_id: str = ""):
        found = [c for c in picamera2.Picamera2.global_camera_info()
                 if c["Model"] == "imx500" and (camera_id == "" or camera_id in c["Id"])]
        if not found:
            raise RuntimeError("IMX500: Requested camera dev-node not found")
        self.__camera_num = found[0]["Num"]
        self.__cfg = {"network_file": network_file, "input_tensor": {}}
        self.roi = FULL_SENSOR
        self.output = None  # (name, shape, bits, scale) from the package
        self.digest = ""
        self.upload_started: float | None = None
        self.size = 0
        if network_file != "":
            path = os.path.abspath(network_file)
            if not os.path.isfile(path):
                raise RuntimeError(f"Firmware file {path} does not exist.")
            busy = [c for c in picamera2.INSTANCES if c.camera_num == self.__camera_num and not c.closed]
            if busy:  # the driver takes a network only while the sensor is not streaming / held
                raise RuntimeError(f"IMX500: Unable to set network firmware {path}: [Errno 16] Device or resource busy")
            print("\nNOTE: Loading network firmware onto the IMX500 can take several minutes, please do not close "
                  "down the application.\n", file=sys.stderr)
            self.__read_network(path)
            picamera2.SENSORS[self.__camera_num] = self
        self.__cfg["input_tensor"].setdefault("norm_val", [-2048, -2048, -2048])
        INSTANCES.append(self)

    @property
    def camera_num(self) -> int:
        return self.__camera_num

    @property
    def config(self) -> dict:
        return self.__cfg

    @property
    def network_intrinsics(self):
        return self.__cfg.get("intrinsics")

    def __read_network(self, path: str) -> None:
        data = open(path, "rb").read()
        self.digest, self.size = hashlib.sha256(data).hexdigest(), len(data)
        view, offset, payloads = memoryview(data), 0, []
        while True:
            magic, size = struct.unpack(">4sI", view[offset:offset + 8])
            if magic != b"9464":
                break
            payloads.append(bytes(view[offset + 60: offset + 60 + size]))
            if bytes(view[offset + 60 + size: offset + 64 + size]) != b"3695":
                raise RuntimeError(f"No matching footer found in firmware file {path}")
            offset += size + 64
        files = _read_cpio(data[offset:])
        if "network_intrinsics" in files:
            self.__cfg["intrinsics"] = json.loads(files["network_intrinsics"])
        info = files.get("network_info.txt")
        if info is None:
            return
        networks = info.decode("ascii").split("networkOrdinal=")[1:]
        for line in info.decode("ascii").splitlines():
            key, value = line.strip().split("=")  # a line without exactly one '=' fails, as in picamera2
        properties = dict(line.strip().split("=") for line in networks[0].splitlines()[1:])
        width, height = int(properties["inputTensorWidth"]), int(properties["inputTensorHeight"])
        self.__cfg["input_tensor"].update(width=width, height=height, input_format=properties["inputTensorFormat"])
        self.__cfg["input_tensor_size"] = (width, height)
        self.output = _output_tensor(payloads[0] if payloads else b"")

    # -- what picamera2's IMX500 offers ---------------------------------------------------------------
    def get_input_size(self) -> tuple:
        return self.__cfg["input_tensor_size"]

    def set_inference_roi_abs(self, roi: tuple) -> None:
        x, y, w, h = (int(v) for v in roi)
        fx, fy, fw, fh = FULL_SENSOR
        x, y = min(max(x, fx), fx + fw), min(max(y, fy), fy + fh)
        self.roi = (x, y, min(w, fx + fw - x), min(h, fy + fh - y))

    def set_inference_aspect_ratio(self, aspect_ratio: tuple) -> None:
        _, _, fw, fh = FULL_SENSOR
        aw, ah = aspect_ratio
        w, h = (fw, fw * ah // aw) if fw * ah // aw <= fh else (fh * aw // ah, fh)
        self.set_inference_roi_abs(((fw - w) // 2, (fh - h) // 2, w, h))

    def set_auto_aspect_ratio(self) -> None:
        self.set_inference_aspect_ratio(self.__cfg["input_tensor_size"])

    def get_fw_upload_progress(self, stage_req) -> tuple:
        if stage_req != FW_NETWORK_STAGE or self.upload_started is None:
            return (0, 0)
        if self.digest in FLASHED:
            return (self.size, self.size)
        done = (time.monotonic() - self.upload_started) / UPLOAD_SECONDS if UPLOAD_SECONDS > 0 else 1.0
        return (min(self.size, int(self.size * done)), self.size)

    def show_network_fw_progress_bar(self) -> None:
        pass  # a tqdm bar on the terminal, from another process, in picamera2

    def get_outputs(self, metadata: dict, add_batch=False):
        output_tensor = metadata.get("CnnOutputTensor")
        if not output_tensor:
            return None
        np_output = np.fromiter(output_tensor, dtype=np.float32)
        offset, outputs = 0, []
        for shape in self.get_output_shapes(metadata):
            size = int(np.prod(shape))
            tensor = np_output[offset:offset + size].reshape(shape, order="F")
            outputs.append(np.expand_dims(tensor, 0) if add_batch else tensor)
            offset += size
        return outputs

    def get_output_shapes(self, metadata: dict) -> list:
        info = metadata.get("CnnOutputTensorInfo")
        if not info:
            return []
        info = bytes(info) if type(info) not in (bytes, bytearray) else info
        size = ctypes.sizeof(CnnOutputTensorInfoExported)
        if len(info) != size:
            raise ValueError(f"tensor info length {len(info)} does not match expected size {size}")
        parsed = CnnOutputTensorInfoExported()
        ctypes.memmove(ctypes.addressof(parsed), info, size)
        return [list(t.size)[: t.num_dimensions] for t in parsed.info[: parsed.num_tensors]]

    @staticmethod
    def get_kpi_info(metadata: dict):
        kpi = metadata.get("CnnKpiInfo")
        return None if kpi is None else (kpi[0] / 1000, kpi[1] / 1000)

    # -- the sensor, as the Picamera2 double asks it for each frame ------------------------------------
    def frame_metadata(self, scene: np.ndarray, number: int) -> dict:
        if self.output is None:
            return {}
        if self.upload_started is None:
            self.upload_started = time.monotonic()  # the camera started streaming: the upload begins
        current, total = self.get_fw_upload_progress(FW_NETWORK_STAGE)
        if current < total:
            return {}
        FLASHED.clear()  # the sensor's flash holds one network: this one
        FLASHED.add(self.digest)
        if DROP is not None and DROP(number):
            return {}
        name, shape, bits, scale = self.output
        values = np.asarray(_run(self.sensor_input(scene)), np.float32).reshape(-1)
        levels = np.clip(np.rint(values / scale), 0, 2 ** bits - 1)  # the unsigned 8-bit tensor the sensor sends
        tensor = (levels * scale).astype(np.float32).reshape(shape)
        info = CnnOutputTensorInfoExported(network_name=name.encode()[:NETWORK_NAME_LEN - 1], num_tensors=1)
        info.info[0].tensor_data_num = tensor.size
        info.info[0].num_dimensions = len(shape)
        for i, dim in enumerate(shape):
            info.info[0].size[i] = dim
        return {"CnnOutputTensor": tuple(tensor.reshape(-1, order="F").tolist()),
                "CnnOutputTensorInfo": tuple(bytes(info)), "CnnKpiInfo": (8100, 1200)}

    def sensor_input(self, scene: np.ndarray) -> np.ndarray:
        """The sensor's own crop of the scene (its inference ROI), at the network's input size."""
        from PIL import Image

        x, y, w, h = self.roi
        sx, sy = scene.shape[1] / FULL_SENSOR[2], scene.shape[0] / FULL_SENSOR[3]
        box = (x * sx, y * sy, (x + w) * sx, (y + h) * sy)
        width, height = self.__cfg["input_tensor_size"]
        return np.asarray(Image.fromarray(np.ascontiguousarray(scene)).resize((width, height),
                                                                              Image.Resampling.BILINEAR, box=box))


def _run(rgb: np.ndarray) -> np.ndarray:
    if NETWORK is not None:
        return NETWORK(rgb)
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).resize((16, 16)), np.float32).reshape(-1) / 255.0
    weights = np.random.default_rng(500).standard_normal((small.size, 1280)).astype(np.float32) / 16
    return np.maximum(small @ weights, 0)


def _output_tensor(payload: bytes) -> tuple:
    """(name, shape, bits, scale) of the network's output, from the converter's dnnParams.xml in the package."""
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as package:
            params = package.read("dnnParams.xml").decode()
    except (zipfile.BadZipFile, KeyError) as exc:
        raise RuntimeError(f"IMX500: the network firmware holds no network ({exc})") from None
    tensor = params.split("<outputTensors>", 1)[1].split("</outputTensors>")[0]
    head = re.search(r'<outputTensor [^>]*name="([^"]+)"[^>]*bitsPerElement="(\d+)"[^>]*scale="([^"]+)"', tensor)
    shape = [int(s) for s in re.findall(r'<dimension size="(\d+)"', tensor)]
    return head.group(1), shape, int(head.group(2)), float(head.group(3))
