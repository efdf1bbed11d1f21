"""The distribution as a user installs it: a wheel that claims only the `teachcam` import name, and a
device install (no TensorFlow, no OpenCV) that runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from teachcam.edge.samples import sample_photos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a clean copy of the source (setuptools reuses any build/ folder it finds)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("edge", "convert"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                             str(source), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return next(out.glob("teachcam-*.whl"))


def test_the_wheel_claims_only_the_teachcam_import_name(wheel):
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    version = wheel.name.split("-")[1]
    assert {name.split("/")[0] for name in names} == {"teachcam", f"teachcam-{version}.dist-info"}
    assert "teachcam/__init__.py" not in names  # a namespace package: edge/ and convert/ are its two halves
    assert {"teachcam/edge/cli/__main__.py", "teachcam/convert/data/imagenet_labels.txt",
            "teachcam/edge/devices/yuv.py"} <= set(names)


@pytest.mark.slow
def test_the_device_install_from_the_wheel_runs_without_tensorflow_or_opencv(wheel, bundle_path, tmp_path):
    target = tmp_path / "venv"
    venv.create(target, with_pip=True)
    python = target / "bin" / "python"
    # with the network processes' extras (the page, the MQTT bridge): they must not pull TensorFlow or OpenCV either
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              f"{wheel}[web,mqtt]"], capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True).stdout.strip())
    record = next(site.glob("teachcam-*.dist-info")) / "RECORD"
    roots = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines() if line}
    assert roots <= {"teachcam", record.parent.name, "..", "__editable__"} and "teachcam" in roots, roots
    assert not (site / "edge").exists() and not (site / "convert").exists()
    photo = sample_photos(("chelsea.png",))[0]
    code = f"""
import sys, io, contextlib, pkgutil, importlib
import teachcam.edge as edge
for module in pkgutil.walk_packages(edge.__path__, "teachcam.edge."):
    if module.name != "teachcam.edge.cli.__main__":
        importlib.import_module(module.name)
from teachcam.edge.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["classify", "--bundle", {str(bundle_path)!r}, {str(photo)!r}])
assert status == 0 and "Egyptian cat" in out.getvalue(), out.getvalue()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "torch", "cv2"))
print("HEAVY", heavy)
"""
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "HEAVY []" in run.stdout
    cli = subprocess.run([str(target / "bin" / "teachcam"), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert cli.returncode == 0 and "teach a camera" in cli.stdout.lower()
