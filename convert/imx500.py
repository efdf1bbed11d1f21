"""The embedder for the Raspberry Pi AI Camera (Sony IMX500), built with Sony's toolchain when it is installed.

The toolchain lives in a venv of its own (``scripts/setup --imx500``, or ``$TEACHCAM_IMX500_VENV``): Sony's
``model-compression-toolkit`` (Apache-2.0) quantises for the sensor and ``imxconv-tf`` from ``imx500-converter``
(Sony's proprietary licence: called as an external tool, like ``edgetpu_compiler``, never vendored) makes the
firmware package. They need TensorFlow 2.14-2.15, numpy < 2 and Java 17 — not what ``teachcam[host]`` has — so
this module, in the host venv, prepares the pictures and runs the two in theirs:

1. ``teachcam.convert.imx500_worker`` (in the toolchain's Python): the same MobileNetV2 embedder, normalisation
   folded in, post-training quantisation on the bundle's representative set, the simulated quantised embedder vs
   the float one on the held-out photos (cosine), the quantised model exported;
2. ``imxconv-tf``: ``packerOut.zip`` and the memory report. On the Pi, ``imx500-package`` (Raspberry Pi's
   ``imx500-tools``) turns the zip into the ``network.rpk`` the camera loads.

The bundle gets ``imx500/packerOut.zip`` and a manifest section ``imx500`` that says how the sensor must be fed and
what it answers (input size and format, the normalisation it holds, the output tensor and its scale), the memory
report and the simulated fidelity.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from teachcam.edge.errors import ConvertError

PIN = "edge-mdt[tf]==1.3.0"  # Sony's meta-package: a consistent model-compression-toolkit + imx500-converter set
CONVERTER = "imxconv-tf"
WORKER_TIMEOUT = 1800  # s
# Calibration values more than this many standard deviations out are ignored when the ranges are chosen (MCT's
# z_threshold). Simulated vs float cosine on 12 held-out views (64 calibration views, other photos): none 0.894 mean /
# 0.848 min; z 2: 0.682 / 0.559; 3: 0.936 / 0.884; 4: 0.968 / 0.945; 6: 0.986 / 0.964; 10: 0.985 / 0.966.
OUTLIERS_Z = 10.0
MISSING = ("the IMX500 toolchain is not installed: run `scripts/setup --imx500` (its own venv, ~2.3 GB: Sony's "
           f"{PIN} needs TensorFlow 2.15, numpy < 2, Python 3.9-3.11) with Java 17 on PATH "
           "(apt-get install openjdk-17-jre-headless), or point $TEACHCAM_IMX500_VENV at such a venv")


def toolchain_venv() -> Path:
    """The toolchain's venv: ``$TEACHCAM_IMX500_VENV``, else ``.venv-imx500`` beside teachcam's own venv."""
    configured = os.environ.get("TEACHCAM_IMX500_VENV")
    if configured:
        return Path(configured)
    return Path(sys.prefix).parent / ".venv-imx500"


def check_toolchain() -> Path:
    """The toolchain's venv, or ConvertError(MISSING) — before any slow work."""
    venv = toolchain_venv()
    if not (venv / "bin" / "python").exists() or not (venv / "bin" / CONVERTER).exists():
        raise ConvertError(MISSING)
    if shutil.which("java") is None:
        raise ConvertError("the IMX500 converter needs Java 17 on PATH: apt-get install openjdk-17-jre-headless")
    return venv


def _package_root(folder: Path) -> Path:
    """A folder holding ``teachcam/convert`` and ``teachcam/edge`` links: the worker imports them from there, and
    nothing else of this venv (its numpy 2 would break the toolchain's TensorFlow)."""
    here = Path(__file__).parent  # not resolved: in an editable install, the link tree's teachcam/convert
    edge = here.parent / "edge"
    root = folder / "pkg" / "teachcam"
    root.mkdir(parents=True)
    (root / "convert").symlink_to(here.resolve(), target_is_directory=True)
    (root / "edge").symlink_to(edge.resolve(), target_is_directory=True)
    return root.parent


def memory_report(text: str) -> dict:
    """The converter's ``*_MemoryReport.json`` → the figures a person wants (sizes as the converter prints them)."""
    report = json.loads(text).get("Memory Report", {})
    keys = {"Memory Usage": "total", "Model Memory Physical Size": "model", "Runtime Memory Physical Size": "runtime",
            "Total Memory Available On Chip": "available", "Memory Utilization": "utilisation",
            "Fit In Chip": "fits"}
    return {short: report[key] for key, short in keys.items() if key in report}


def output_tensor(dnn_params: str) -> dict:
    """The network's output tensor from ``dnnParams.xml``: name, size, bits and scale (what the sensor sends)."""
    match = re.search(r'<outputTensor [^>]*name="([^"]+)"[^>]*bitsPerElement="(\d+)"[^>]*scale="([^"]+)"'
                      r'[^>]*format="(\w+)"', dnn_params)
    sizes = re.findall(r'<dimension size="(\d+)"', dnn_params.split("<outputTensors>", 1)[-1].split("</outputTensors>")[0])
    if not match:
        raise ConvertError("imxconv-tf wrote no output tensor in dnnParams.xml: the conversion did not finish")
    return {"name": match.group(1), "shape": [int(s) for s in sizes], "bits": int(match.group(2)),
            "scale": float(match.group(3)), "format": match.group(4)}


def _worker_env(work: Path) -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")},
            "PYTHONPATH": str(_package_root(work)), "TF_CPP_MIN_LOG_LEVEL": "2"}


def simulate(weights: Path, calibration: np.ndarray, pictures: np.ndarray, *, outliers: float = OUTLIERS_Z) -> np.ndarray:
    """What the sensor's quantised embedder gives for ``pictures`` (model-input uint8), simulated by the quantiser
    (the same build and quantisation as :func:`build_for_imx500`, nothing converted): float32, one row each."""
    venv = check_toolchain()
    with tempfile.TemporaryDirectory(prefix="teachcam-imx500-") as tmp:
        work = Path(tmp)
        for name, array in (("calibration", calibration), ("held_out", calibration[:4]), ("pictures", pictures)):
            np.save(work / f"{name}.npy", np.ascontiguousarray(array, np.uint8))
        worker = subprocess.run([str(venv / "bin" / "python"), "-m", "teachcam.convert.imx500_worker",
                                 "--weights", str(weights), "--calibration", str(work / "calibration.npy"),
                                 "--held-out", str(work / "held_out.npy"), "--outliers", str(outliers),
                                 "--embed", str(work / "pictures.npy"), "--embed-out", str(work / "embedded.npy")],
                                capture_output=True, text=True, env=_worker_env(work), timeout=WORKER_TIMEOUT,
                                check=False)
        if worker.returncode != 0:
            raise ConvertError(f"IMX500 simulation failed: {_last_line(worker.stderr)}")
        return np.load(work / "embedded.npy")


def build_for_imx500(bundle_folder: Path, weights: Path, calibration: np.ndarray, held_out: np.ndarray, progress,
                     *, outliers: float = OUTLIERS_Z) -> dict:
    """Quantise and convert the embedder for the IMX500 into ``bundle_folder/imx500``; the manifest section."""
    venv = check_toolchain()
    with tempfile.TemporaryDirectory(prefix="teachcam-imx500-") as tmp:
        work = Path(tmp)
        np.save(work / "calibration.npy", np.ascontiguousarray(calibration, np.uint8))
        np.save(work / "held_out.npy", np.ascontiguousarray(held_out, np.uint8))
        env = _worker_env(work)
        progress.step("quantising for the IMX500 (model-compression-toolkit, its own venv)")
        worker = subprocess.run([str(venv / "bin" / "python"), "-m", "teachcam.convert.imx500_worker",
                                 "--weights", str(weights), "--calibration", str(work / "calibration.npy"),
                                 "--held-out", str(work / "held_out.npy"), "--out", str(work / "embedder.keras"),
                                 "--outliers", str(outliers)],
                                capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT, check=False)
        if worker.returncode != 0:
            raise ConvertError(f"IMX500 quantisation failed: {_last_line(worker.stderr)}")
        result = json.loads(worker.stdout.strip().splitlines()[-1])
        progress.advance()
        progress.step("converting for the IMX500 (imxconv-tf)")
        out = work / "converted"
        converter = subprocess.run([str(venv / "bin" / CONVERTER), "-i", str(work / "embedder.keras"), "-o", str(out),
                                    "--overwrite-output"], capture_output=True, text=True, env=env,
                                   timeout=WORKER_TIMEOUT, check=False)
        package = out / "packerOut.zip"
        if converter.returncode != 0 or not package.is_file():
            raise ConvertError(f"{CONVERTER} failed: {_last_line(converter.stdout + converter.stderr)}")
        version = re.search(r"Running version (\S+)", converter.stdout + converter.stderr)
        target = bundle_folder / "imx500"
        target.mkdir()
        shutil.copy2(package, target / "packerOut.zip")
        reports = sorted(out.glob("*_MemoryReport.json"))
        memory = memory_report(reports[0].read_text()) if reports else {}
        tensor = output_tensor((out / "dnnParams.xml").read_text())
        progress.advance()
    side = int(calibration.shape[1])
    return {"file": "imx500/packerOut.zip", "backend": "imx500",
            "input": {"width": side, "height": side, "format": "RGB uint8 0..255 (the sensor's own crop, resized)",
                      "normalization": "folded into the network (a 1x1 depthwise convolution: ImageNet mean/std)"},
            "output": {**tensor, "embedding_size": int(np.prod(tensor["shape"])),
                       "note": "picamera2's IMX500.get_outputs() gives it dequantised (float32)"},
            "memory": memory, "fidelity": {**result["fidelity"], "vs": "the float embedder, simulated quantisation"},
            "toolchain": {"model_compression_toolkit": result["mct"], "imx500_converter": version.group(1)
                          if version else "?", "tpc": result["tpc"], "outliers_z": result["outliers"]},
            "quantise_s": result["quantise_s"], "calibration_samples": result["calibration_samples"],
            "packaging": "on the Pi: imx500-package (apt imx500-tools) turns packerOut.zip into network.rpk"}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and "WARNING" not in line]
    return lines[-1][:300] if lines else "no output"
