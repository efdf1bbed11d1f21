"""What a fresh Raspberry Pi under the systemd unit would do: GPIO and XNNPACK inside the unit's sandbox,
and an Edge TPU runtime that crashes. Stand-ins: a Pi-shaped /proc/cpuinfo, lgpio (tests/fakes/lgpio),
pycoral (tests/fakes/pycoral)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from teachcam.edge.model.bundle import load_bundle
from teachcam.edge.model.models import Embedder
from teachcam.edge.model.runtime import kernels_from_log, load_interpreter, probe_edgetpu
from tests.helpers import with_edgetpu_model

ROOT = Path(__file__).resolve().parents[1]
FAKES = ROOT / "tests" / "fakes"
UNIT = ROOT / "systemd" / "teachcam.service"
PI4_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Revision\t: d03115
Serial\t\t: 10000000deadbeef
Model\t\t: Raspberry Pi 4 Model B Rev 1.5
"""

needs_namespaces = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                      reason="needs root and unshare (mount and PID namespaces)")


def doctor_in_sandbox(unit: Path, bundle: Path, tmp_path: Path) -> dict:
    """`teachcam doctor` run with the unit's /proc view, on a stand-in Pi (Pi 4 cpuinfo, lgpio, a GPIO chip)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(PI4_CPUINFO)
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    (dev / "gpiochip0").touch()
    env = {**os.environ, "PYTHONPATH": f"{FAKES}{os.pathsep}{ROOT}", "FAKE_LGPIO_DEV": str(dev),
           "GPIOZERO_PIN_FACTORY": "lgpio"}
    result = subprocess.run([str(ROOT / "scripts" / "unit-sandbox"), "--cpuinfo", str(cpuinfo), str(unit),
                             sys.executable, "-m", "teachcam.edge.cli", "doctor", "--bundle", str(bundle),
                             "--store", str(tmp_path / "store"), "--no-camera", "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout, result.stderr
    return {c["name"]: c for c in json.loads(result.stdout)}


@needs_namespaces
def test_under_the_units_sandbox_gpio_and_xnnpack_work(bundle_path, tmp_path):
    checks = doctor_in_sandbox(UNIT, bundle_path, tmp_path)
    assert checks["gpio"]["status"] == "ok", checks["gpio"]
    assert "LGPIOFactory, board revision d03115" in checks["gpio"]["detail"]
    assert checks["runtime"]["status"] == "ok" and "runs with XNNPACK" in checks["runtime"]["detail"]


@needs_namespaces
def test_procsubset_pid_blinds_gpio_and_xnnpack_and_the_doctor_says_so(bundle_path, tmp_path):
    hardened = tmp_path / "teachcam.service"
    hardened.write_text(UNIT.read_text().replace("ProtectProc=invisible\n", "ProtectProc=invisible\nProcSubset=pid\n"))
    checks = doctor_in_sandbox(hardened, bundle_path, tmp_path)
    assert checks["gpio"]["status"] == "fail"
    assert "gpiozero cannot tell which board" in checks["gpio"]["detail"] and "ProcSubset=pid" in checks["gpio"]["fix"]
    assert checks["runtime"]["status"] == "warn" and "not XNNPACK" in checks["runtime"]["detail"]


def test_the_unit_keeps_proc_cpuinfo_visible_and_runs_the_doctor_in_its_sandbox():
    lines = [line.strip() for line in UNIT.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any(line.startswith("ProcSubset=") for line in lines)
    pre = [line for line in lines if line.startswith("ExecStartPre=")]
    assert pre == ["ExecStartPre=-/opt/teachcam/venv/bin/teachcam doctor --config /etc/teachcam/teachcam.toml "
                   "--no-camera"]


def test_every_interpreter_of_a_process_reports_its_own_kernels(bundle_path):
    # LiteRT logs its XNNPACK line once per process: the second and later interpreters must not look "reference".
    for name in ("embedder_int8.tflite", "imagenet_head_int8.tflite", "embedder_int8.tflite"):
        assert load_interpreter(bundle_path / name, num_threads=1).kernels == "xnnpack", name


def test_kernels_are_read_from_what_the_runtime_says():
    assert kernels_from_log("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n") == "xnnpack"
    assert kernels_from_log("") == "reference"  # what LiteRT says on ARM when cpuinfo cannot read /proc/cpuinfo
    assert kernels_from_log("", edgetpu=True) == "edgetpu"


def test_classify_says_the_kernels(bundle_path):
    from teachcam.edge.samples import sample_photos
    from tests.helpers import run_teachcam

    result = run_teachcam("classify", "--bundle", bundle_path, "--json", sample_photos(("chelsea.png",))[0])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kernels"] == "xnnpack"


def test_an_edgetpu_runtime_that_segfaults_is_probed_in_a_child_and_the_cpu_runs(bundle_copy, monkeypatch, caplog):
    with_edgetpu_model(bundle_copy)
    monkeypatch.setenv("PYTHONPATH", f"{FAKES}{os.pathsep}{ROOT}")
    monkeypatch.setenv("FAKE_PYCORAL_SEGFAULT", "1")  # google-coral/edgetpu#812: libedgetpu 16.0 vs new TFLite
    probe_edgetpu.cache_clear()
    with caplog.at_level(logging.WARNING):
        embedder = Embedder.create(load_bundle(bundle_copy), "auto")  # would kill this process without the probe
    assert embedder.variant == "int8" and embedder.kernels == "xnnpack"
    assert "the Edge TPU runtime crashed (SIGSEGV)" in caplog.text and "running the int8 model on the CPU" in caplog.text
    probe_edgetpu.cache_clear()


def test_a_working_edgetpu_passes_the_probe_and_is_used(bundle_copy, monkeypatch):
    with_edgetpu_model(bundle_copy)
    monkeypatch.setenv("PYTHONPATH", f"{FAKES}{os.pathsep}{ROOT}")
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.delitem(sys.modules, "pycoral", raising=False)
    probe_edgetpu.cache_clear()
    embedder = Embedder.create(load_bundle(bundle_copy), "auto")
    assert embedder.variant == "edgetpu" and embedder.kernels == "edgetpu"
    probe_edgetpu.cache_clear()
