"""install-pi's resolution on the Raspberry Pi OS releases people flash, from prebuilt aarch64 wheels only.

Raspberry Pi OS trixie (today's image: Python 3.13, apt numpy 2.2.4) and bookworm ("Legacy": Python 3.11,
numpy 1.24.2). The venv is held to the OS's numpy (scripts/pi-constraints); every compiled package must come as a
wheel, because a source build of numpy or OpenCV on a Pi runs for half an hour and then usually fails. pip resolves
for the Pi's platform here (`--dry-run --platform ... --python-version ...`): nothing is installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AARCH64 = ["manylinux_2_36_aarch64", "manylinux_2_35_aarch64", "manylinux_2_34_aarch64", "manylinux_2_28_aarch64",
           "manylinux_2_27_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
# What install-pi may put in the venv: the device install, plus what the config can ask for.
EVERYTHING = "teachcam[pi,video,mqtt,web]"


@pytest.fixture(scope="module")
def local_wheels(tmp_path_factory) -> Path:
    """teachcam's own wheel, and sdnotify's (PyPI has only its source: pure Python, built in a second)."""
    folder = tmp_path_factory.mktemp("wheels")
    for spec in (str(ROOT), "sdnotify>=0.3.2"):
        built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(folder), spec],
                               capture_output=True, text=True, timeout=300)
        if built.returncode != 0:
            pytest.skip(f"cannot build the wheel of {spec} here: {built.stderr.strip()[-300:]}")
    return folder


def resolve(python: str, constraints: str, wheels: Path, tmp_path: Path, spec: str = EVERYTHING):
    (tmp_path / "constraints.txt").write_text(constraints)
    platforms = [arg for tag in AARCH64 for arg in ("--platform", tag)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
         "--ignore-installed", "--target", str(tmp_path / "target"), "--report", str(tmp_path / "report.json"),
         "--only-binary=:all:", "--implementation", "cp", "--python-version", python, *platforms,
         "--find-links", str(wheels), "-c", str(tmp_path / "constraints.txt"), spec],
        capture_output=True, text=True, timeout=600)
    if result.returncode != 0 and any(s in result.stderr for s in ("NewConnectionError", "Temporary failure in name")):
        pytest.skip(f"PyPI is not reachable from here: {result.stderr.strip()[-200:]}")
    installed = {}
    if result.returncode == 0:
        report = json.loads((tmp_path / "report.json").read_text())
        installed = {re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower(): item["metadata"]["version"]
                     for item in report["install"]}
    return result, installed


def pi_constraints(numpy_version: str) -> str:
    return subprocess.run([str(ROOT / "scripts" / "pi-constraints"), numpy_version], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.parametrize("python, os_numpy", [("3.13", "2.2.4"), ("3.11", "1.24.2")], ids=["trixie", "bookworm"])
def test_the_pi_install_resolves_from_aarch64_wheels_only(python, os_numpy, local_wheels, tmp_path):
    result, installed = resolve(python, pi_constraints(os_numpy), local_wheels, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert installed["numpy"] == os_numpy  # the OS's own (on the Pi it is already there, so pip installs none)
    assert installed["ai-edge-litert"].startswith("2.")
    assert {"gpiozero", "pillow", "opencv-python-headless", "paho-mqtt", "aiohttp", "luma-oled"} <= set(installed)
    assert not {"tensorflow", "tensorflow-cpu", "keras", "torch"} & set(installed)


def test_a_numpy_1_pin_cannot_install_on_trixie(local_wheels, tmp_path):
    # What install-pi did before it followed the OS's numpy (numpy<2 for apt's numpy-1-built picamera2): Python 3.13
    # has no numpy 1.x wheel, so pip would have compiled numpy 1.26.4 on the Pi.
    result, _ = resolve("3.13", "numpy<2\nopencv-python-headless<4.12\nml_dtypes<0.6\n", local_wheels, tmp_path,
                        spec="teachcam")
    assert result.returncode != 0 and "ResolutionImpossible" in result.stderr


def test_pi_constraints_follow_the_os_numpy():
    assert pi_constraints("2.2.4").split() == ["numpy==2.2.4"]
    assert pi_constraints("1.24.2").split() == ["numpy==1.24.2", "opencv-python-headless<4.12", "ml_dtypes<0.6"]
    refused = subprocess.run([str(ROOT / "scripts" / "pi-constraints"), "two"], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.startswith("usage: scripts/pi-constraints NUMPY_VERSION")
