"""The AI Camera's embedder on the laptop (#27, host side): `teachcam convert --imx500` with Sony's toolchain in its
own venv, or one line on what to install; the bundle's ``imx500`` section validated like every file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from teachcam.convert.bundle_writer import write_manifest
from teachcam.convert.imx500 import memory_report, output_tensor
from teachcam.edge.model.bundle import MANIFEST, load_bundle, read_manifest
from teachcam.edge.model.models import Embedder
from tests.helpers import run_teachcam

# What imxconv-tf 3.18.2 wrote for this embedder here (its memory report and dnnParams.xml, trimmed to the network).
MEMORY_REPORT = """{"Memory Report": {"Name": "q", "Runtime Memory Physical Size": "3.25MB",
 "Model Memory Physical Size": "2.25MB", "Reserved Memory": "1.00KB", "Memory Usage": "5.50MB",
 "Total Memory Available On Chip": "8.00MB", "Memory Utilization": "69%", "Fit In Chip": true,
 "Input Persistent": true}}"""
DNN_PARAMS = """<dnnParams><networks><network name="q" ordinal="0" type=""><inputTensors>
<inputTensor persistency="1" ordinal="0" name="input_1:0" l2Offset="5872640" numOfDimensions="3" bitsPerElement="8"
 shift="0" scale="1.0" format="unsigned"><dimensions><dimension size="224" serializationOrder="1" ordinal="0"
 padding="0"/><dimension size="224" serializationOrder="0" ordinal="1" padding="0"/><dimension size="3"
 serializationOrder="2" ordinal="2" padding="0"/></dimensions></inputTensor></inputTensors><outputTensors>
<outputTensor ordinal="0" name="transform-0-embedding_squeeze:0" l2Offset="2617344" numOfDimensions="1"
 bitsPerElement="8" shift="0" scale="0.015625" format="unsigned"><dimensions><dimension size="1280"
 serializationOrder="0" ordinal="0" padding="0"/></dimensions></outputTensor></outputTensors></network></networks>
</dnnParams>"""


def test_without_the_toolchain_convert_says_what_to_install_and_writes_nothing(tmp_path):
    out = tmp_path / "bundle"
    result = run_teachcam("convert", "--imx500", "-o", str(out),
                          env={"TEACHCAM_IMX500_VENV": str(tmp_path / "no-such-venv")})
    assert result.returncode != 0 and not out.exists()
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "scripts/setup --imx500" in result.stderr and "Java 17" in result.stderr


def test_the_converters_reports_are_read():
    assert memory_report(MEMORY_REPORT) == {"total": "5.50MB", "model": "2.25MB", "runtime": "3.25MB",
                                            "available": "8.00MB", "utilisation": "69%", "fits": True}
    assert output_tensor(DNN_PARAMS) == {"name": "transform-0-embedding_squeeze:0", "shape": [1280], "bits": 8,
                                         "scale": 0.015625, "format": "unsigned"}


def test_the_sensor_package_is_checked_like_every_file_and_the_cpu_models_are_untouched(bundle_copy):
    """A bundle with an ``imx500`` section (here a stand-in file for the converter's zip: the real one needs the
    2.3 GB toolchain) still runs the CPU embedder, and its package is sha256-checked like every model."""
    manifest = read_manifest(bundle_copy)
    (bundle_copy / "imx500").mkdir()
    (bundle_copy / "imx500" / "packerOut.zip").write_bytes(b"PK\x05\x06" + bytes(18))
    section = {"file": "imx500/packerOut.zip", "backend": "imx500", "input": {"width": 224, "height": 224},
               "output": {**output_tensor(DNN_PARAMS), "embedding_size": 1280},
               "memory": memory_report(MEMORY_REPORT), "fidelity": {"mean": 0.9, "min": 0.85, "photos": 12}}
    write_manifest(bundle_copy, {k: v for k, v in {**manifest, "imx500": section}.items()
                                 if k not in ("files", "format_version", "generator", "created")})
    bundle = load_bundle(bundle_copy)
    assert Embedder.create(bundle, "auto").precision == "int8"
    info = run_teachcam("info", str(bundle_copy))
    assert info.returncode == 0 and "imx500/packerOut.zip" in info.stdout and "5.50MB of the sensor's 8.00MB" in info.stdout
    (bundle_copy / "imx500" / "packerOut.zip").write_bytes(b"PK\x05\x06" + bytes(17) + b"x")
    info = run_teachcam("info", str(bundle_copy), "--json")
    assert info.returncode != 0 and json.loads(info.stdout)["files"]["imx500/packerOut.zip"] is False


IMX500_VENV = os.environ.get("TEACHCAM_IMX500_VENV", "")


@pytest.mark.slow
@pytest.mark.skipif(not IMX500_VENV or not Path(IMX500_VENV, "bin", "imxconv-tf").exists() or not shutil.which("java"),
                    reason="needs the IMX500 toolchain (scripts/setup --imx500; TEACHCAM_IMX500_VENV) and Java 17")
def test_convert_builds_the_sensors_embedder_with_the_real_toolchain(tmp_path):
    out = tmp_path / "bundle"
    result = run_teachcam("convert", "--imx500", "-o", str(out), timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    section = json.loads((out / MANIFEST).read_text())["imx500"]
    assert (out / section["file"]).stat().st_size > 1_000_000
    assert section["output"]["shape"] == [1280] and section["memory"]["fits"] is True
    assert 0.8 < section["fidelity"]["min"] <= section["fidelity"]["mean"] <= 1.0
    assert "imx500" in run_teachcam("info", str(out)).stdout
