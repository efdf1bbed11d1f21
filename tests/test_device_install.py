"""The device package never imports TensorFlow or Keras."""

from __future__ import annotations

import subprocess
import sys

from teachcam.edge.samples import sample_photos


def test_edge_classifies_without_importing_tensorflow(bundle_path):
    photo = sample_photos(("chelsea.png",))[0]
    code = f"""
import sys, io, contextlib, pkgutil, importlib
import teachcam.edge as edge
for module in pkgutil.walk_packages(edge.__path__, "teachcam.edge."):
    if module.name != "teachcam.edge.cli.__main__":  # that one runs the CLI
        importlib.import_module(module.name)
from teachcam.edge.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(["classify", "--bundle", {str(bundle_path)!r}, {str(photo)!r}])
assert status == 0 and "Egyptian cat" in out.getvalue(), out.getvalue()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "torch"))
print("HEAVY", heavy)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
